"""GliomaClassifier logic on MRML nodes (Qt-free): MR sequence nodes in, MGMT probability and Grad-CAM out.

Three steps (the GUI may run :func:`compute` in a worker; batch and console call
:meth:`GliomaClassifierLogic.process`):

1. read the scene: :func:`MedDLLib.nodes.volume_from_node` for each sequence node (copies; inputs never modified);
2. :func:`compute` on arrays only: preprocessing as the model's input spec says
   (:func:`GliomaClassifierLib.preprocess.prepare`), the probability of MGMT promoter methylation, the Grad-CAM
   map of the methylated output (the evidence for methylation; all zero where the network finds none) mapped
   back into the reference (first) sequence's geometry, and the 64-slice
   window that was used (slice indices and its box in RAS);
3. :meth:`GliomaClassifierLogic.write_outputs`: new nodes only: a table (probability, window, model card),
   ``MedDL.*`` attributes (``MedDL.probability``, ``MedDL.model_card``...) on the table and heatmap nodes, the
   heatmap volume, and a markups ROI node showing the window.

With a tumour model (``GliomaOptions.tumour_model``, an imported ``brats_mri_segmentation`` bundle; the study
needs T1wCE, T1w, T2w and FLAIR) the tumour regions (whole tumour, tumour core, enhancing tumour: they overlap)
are a segmentation output (``tumour.seg.nrrd``, a DICOM SEG of the three whole regions for a DICOM input) and the
classifier's window is centred on the segmented tumour (:func:`GliomaClassifierLib.tumour.window_centre_slice`).

Every result carries the model card (:func:`GliomaClassifierLib.card.model_card`): the task is research-grade
and near chance on real external data.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from MedDLLib import models, nodes
from MedDLLib.errors import InputError
from MedDLLib.geometry import LPS_TO_RAS, Volume
from MedDLLib.results import OutputFile
from MedDLLib.terminology import segment_spec

from . import options as gliomaoptions

HEATMAP_NRRD = "heatmap.nrrd"
TUMOUR_SEG = "tumour.seg.nrrd"
#: Segments of the tumour segmentation, outermost first (a voxel of the .seg.nrrd labelmap takes the innermost
#: region it lies in; the DICOM SEG holds each region whole). Colours from the SNOMED terms of
#: :mod:`MedDLLib.terminology`.
TUMOUR_SEGMENTS = segment_spec(("whole tumour", "tumour core", "enhancing tumour"),
                               colours={"enhancing tumour": (230, 60, 60)})  # the NCIt term has no colour
#: The outputs of ``meddl infer glioma`` (besides ``overlay.png`` and ``result.json``); the result table and the
#: window ROI are built from ``result.json`` (:meth:`GliomaClassifierLogic.write_outputs`).
OUTPUTS = (OutputFile("heatmap", HEATMAP_NRRD, "heatmap", "Grad-CAM MGMT", result_key="heatmap"),
           OutputFile("tumour", TUMOUR_SEG, "segmentation", "tumour regions", required=False,
                      segments=TUMOUR_SEGMENTS, result_key="tumour"))



@dataclasses.dataclass
class GliomaOptions:
    """Options of one run (defaults from :mod:`GliomaClassifierLib.options`).

    Attributes:
        gradcam: compute the Grad-CAM heatmap (of the methylated output, whatever the call).
        threshold: probability at or above which the result reads "methylated".
        tumour_model: an imported brats_mri_segmentation bundle's name ("": no tumour segmentation).
        device: torch device for the network.
    """

    gradcam: bool = True
    threshold: float = gliomaoptions.THRESHOLD.default
    tumour_model: str = gliomaoptions.TUMOUR_MODEL.default
    device: str = "cpu"
    #: sequence -> a DICOM file whose VOI LUT applies to that sequence's volume (volume-file input, ``--voi-dicom``)
    voi_dicom: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.threshold = gliomaoptions.THRESHOLD.check(self.threshold)


@dataclasses.dataclass
class GliomaResult:
    """What :func:`compute` produces (numbers and arrays) and, after :meth:`write_outputs`, the new nodes."""

    probability: float
    threshold: float
    model_name: str
    recipe: str
    sequences: list[str]
    model_card: str
    window: dict[str, Any]  # first, last, centre, depth, n_slices (oriented stack) + the box of window_box()
    heatmap: Volume | None  # [k, j, i] in [0, 1], reference input geometry
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: the tumour regions on the reference input's grid, when a tumour model segmented them
    tumour: Any = None  # GliomaClassifierLib.tumour.TumourRegions
    nodes: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def methylated(self) -> bool:
        return self.probability >= self.threshold

    @property
    def summary(self) -> str:
        call = "methylated" if self.methylated else "unmethylated"
        return (f"MGMT promoter {call} (probability {self.probability:.2f}, threshold {self.threshold:g}) from "
                f"{', '.join(self.sequences)}; research use only: near chance on real external data")

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready result (the ``result.json`` of ``meddl infer glioma``)."""
        return {"probability": round(float(self.probability), 6), "methylated": bool(self.methylated),
                "threshold": self.threshold, "model": self.model_name, "recipe": self.recipe,
                "sequences": list(self.sequences), "window_first_slice": int(self.window["first"]),
                "window_last_slice": int(self.window["last"]), "window_centre_slice": int(self.window["centre"]),
                "window_depth": int(self.window["depth"]), "n_slices_oriented": int(self.window["n_slices"]),
                **{f"window_{key}": np.round(np.asarray(self.window[key], dtype=float), 6).tolist()
                   for key in WINDOW_BOX_KEYS},
                **self.tumour_summary(),
                "summary": self.summary, "model_card": self.model_card, "warnings": list(self.warnings)}

    def tumour_summary(self) -> dict[str, Any]:
        """With a tumour model: ``window_centred_on`` ("segmented tumour", or "brain" when it found none: the
        largest-brain-area slice), ``tumour_volumes_ml`` (region -> mL) and ``tumour_centre_lps_mm``; else nothing
        (the window is then always centred on the largest brain area)."""
        if self.tumour is None:
            return {}
        centre = self.tumour.centre_lps_mm
        return {"window_centred_on": self.window.get("centred_on", "brain"),
                "tumour_volumes_ml": {k: round(v, 3) for k, v in self.tumour.volumes_ml.items()},
                "tumour_centre_lps_mm": None if centre is None else [round(c, 3) for c in centre]}

    def tumour_masks(self) -> np.ndarray | None:
        """The regions as stacked 0/1 masks ``[k, j, i, 3]`` in :data:`TUMOUR_SEGMENTS` order, or None."""
        if self.tumour is None:
            return None
        return np.stack([self.tumour.masks[name] for name, _ in TUMOUR_SEGMENTS.values()], axis=-1).astype(np.uint8)


#: Keys of the oriented box of the slice window (in :attr:`GliomaResult.window`; ``window_<key>`` in result.json).
WINDOW_BOX_KEYS = ("centre_ras_mm", "size_mm", "axes_ras")


def window_box(prepared: Any) -> dict[str, list]:
    """The block the network saw (its input grid, voxel edges included) as an oriented box in RAS.

    Returns:
        ``centre_ras_mm`` (3), ``size_mm`` (3: extent along the grid's i, j, k axes, mm) and ``axes_ras``
        (3 x 3, rows = unit vectors of the i, j, k axes in RAS; the k axis flipped when needed so that the
        axes are right-handed, which leaves the box unchanged). On an oblique input the box is oblique too.
    """
    grid = prepared.grid
    shape_ijk = np.array(prepared.array.shape[1:][::-1], dtype=float)  # (C, K, J, I) -> (I, J, K)
    axes = (LPS_TO_RAS[:3, :3] @ np.asarray(grid.direction_lps, dtype=float)).T
    if np.linalg.det(axes) < 0:
        axes[2] = -axes[2]
    centre = grid.ijk_to_ras_points((shape_ijk - 1.0) / 2.0)[0]
    return {"centre_ras_mm": centre.tolist(), "size_mm": (shape_ijk * np.asarray(grid.spacing_mm)).tolist(),
            "axes_ras": axes.tolist()}


def compute(volumes: Mapping[str, Volume] | Volume, model: Any, options: GliomaOptions | None = None,
            progress: Callable[[float, str], None] | None = None,
            cancel: Callable[[], bool] | None = None) -> GliomaResult:
    """Run the model on one study (arrays only; safe in a worker thread).

    Args:
        volumes: sequence name -> volume (any plane), or one volume (taken as the model's first sequence).
        model: a glioma model package (folder, cached name, or a loaded :class:`MedDLLib.models.ModelPackage`).
        options: :class:`GliomaOptions`.
        progress: ``(fraction 0..1, message)`` callback.
        cancel: returns True to stop (raises :class:`MedDLLib.errors.Cancelled`).
    Raises:
        InputError: a sequence the model needs is missing, or a volume is not a usable MR series.
    """
    from MedDLLib.gradcam import heatmap_to_reference
    from MedDLLib.pipeline import checkpoints, ensure_loaded

    from .card import model_card
    from .evidence import EVIDENCE_NETWORK, evidence_agree, predict_with_evidence, sharpness_of
    from .preprocess import InputSpec, prepare, voi_source

    options = options or GliomaOptions()
    checkpoint = checkpoints(progress, cancel)
    checkpoint(0.02, "loading the model")
    loaded = ensure_loaded(model, options.device, _load_network)
    package = loaded.package
    spec = InputSpec.from_metadata(package.metadata["input"])
    if isinstance(volumes, Volume):
        volumes = {spec.sequences[0]: volumes}
    warnings = []
    headerless = [name for name in spec.sequences if name in volumes and voi_source(volumes[name]) is None]
    if spec.voi and headerless:
        warnings.append(f"VOI LUT not applied to {', '.join(headerless)}: no DICOM header known (values used as "
                        "stored; load the series through Slicer's DICOM module or name its DICOM file)")
    if spec.slice_order == "filename":
        warnings.append("seed recipe: slices taken in file-name order when read from DICOM files, not reoriented")
    regions, centre = None, None
    if options.tumour_model:
        from .tumour import segment_tumour, window_centre_slice

        checkpoint(0.05, f"segmenting the tumour ({options.tumour_model})")
        regions = on_reference(segment_tumour(volumes, options.tumour_model, device=options.device),
                               volumes[spec.sequences[0]])
        centre = ("segmented tumour", lambda grid, n: window_centre_slice(regions, grid, n))
        warnings += [f"tumour model: {note}" for note in regions.notes]
    checkpoint(0.1, "preprocessing")
    prepared = prepare(volumes, spec, centre)
    checkpoint(0.4, "classifying")
    layer = package.metadata["output"].get("gradcam_layer") or "layer2"
    maps = None
    if package.metadata["network"]["name"] == EVIDENCE_NETWORK and layer == "evidence":
        # one forward: probability and Grad-CAM (on a recorded runtime export: no torch, no network built)
        sharpness = sharpness_of(package.metadata)
        run = loaded.runner("evidence_map", agree=evidence_agree(sharpness))
        probabilities, maps = predict_with_evidence(run, prepared.array[None], sharpness=sharpness,
                                                    maps=options.gradcam)
        probability = float(probabilities[0])
    elif options.gradcam:
        import torch

        from MedDLLib.gradcam import compute_gradcam
        from MedDLLib.runtime import sigmoid

        # Grad-CAM's pass (its trunk on the runtime chosen for it) gives the logit too, in fp32 from the target
        # layer on (within 1e-3 of torch fp32): one pass for the probability and the map
        x = torch.from_numpy(prepared.array[None]).to(options.device)
        maps, logits = compute_gradcam(loaded.network, x, layer, class_index=0, bf16=False, return_logits=True)
        probability = float(sigmoid(logits)[0, 0])
    else:
        from .model import predict_arrays

        probability = float(predict_arrays(loaded.network, prepared.array[None], options.device)[0])
    heat = None
    if options.gradcam:
        checkpoint(0.55, "mapping the heatmap onto the MRI")
        heat = heatmap_to_reference(maps[0], prepared.grid, prepared.reference)
    window = {"first": prepared.first, "last": prepared.last, "centre": prepared.centre,
              "depth": spec.depth, "n_slices": prepared.n_slices, "centred_on": prepared.centred_on,
              **window_box(prepared)}
    checkpoint(1.0, "done")
    return GliomaResult(probability, options.threshold, package.name, str(package.metadata.get("recipe", "")),
                        list(spec.sequences), model_card(package.metadata), window, heat, warnings, regions)


def _load_network(model: Any, device: Any) -> tuple[Any, Any]:
    """``(network, package)`` of a glioma model given as a folder, cached name or package."""
    from .model import TASK

    return models.load_task_model(model, TASK, device)


def on_reference(regions: Any, reference: Volume) -> Any:
    """``regions`` (:class:`~GliomaClassifierLib.tumour.TumourRegions`, on the T1wCE grid) on the grid of
    ``reference`` (the classifier's first sequence): the same object when the grids agree, else each mask
    resampled (nearest) in patient space and the volumes counted again."""
    from MedDLLib.resample import resample_to_reference

    if regions.geometry.allclose(reference.geometry, 1e-3) and \
            next(iter(regions.masks.values())).shape == reference.array.shape:
        return regions
    masks = {name: resample_to_reference(Volume(mask, regions.geometry), reference, is_label=True).array
             .astype(np.uint8) for name, mask in regions.masks.items()}
    voxel_ml = reference.geometry.voxel_volume_ml()
    return dataclasses.replace(regions, masks=masks, geometry=reference.geometry,
                               volumes_ml={name: float(m.sum() * voxel_ml) for name, m in masks.items()})


class GliomaClassifierLogic:
    """Runs the MGMT classifier on sequence volume nodes and adds the result nodes to the same scene."""

    def process(self, sequence_nodes: Mapping[str, Any] | Any, model: Any, options: GliomaOptions | None = None,
                progress: Callable[[float, str], None] | None = None,
                cancel: Callable[[], bool] | None = None,
                file_for_instance: Callable[[str], str | None] | None = None) -> GliomaResult:
        """Read the nodes (``{sequence: node}`` or one node for the model's first sequence), :func:`compute`,
        then :meth:`write_outputs`. The first node given is the reference (heatmap geometry).

        ``file_for_instance`` (SOP Instance UID -> DICOM file; in Slicer ``slicer.dicomDatabase.fileForInstance``)
        finds the DICOM header of nodes loaded through Slicer's DICOM module, so their VOI LUT is applied as
        when reading the files (:func:`MedDLLib.nodes.dicom_source_file`)."""
        if not isinstance(sequence_nodes, Mapping):
            from .model import TASK
            from .preprocess import InputSpec

            _, model = models.load_task_model(model, TASK)  # read once: compute() takes the loaded package
            sequence_nodes = {InputSpec.from_metadata(model.metadata["input"]).sequences[0]: sequence_nodes}
        if not sequence_nodes:
            raise InputError("no input sequence node given")
        from .preprocess import with_voi_sources

        read = {name: nodes.volume_from_node(node, labelmap=False) for name, node in sequence_nodes.items()}
        volumes = with_voi_sources(read, nodes.dicom_source_files(sequence_nodes, file_for_instance))
        result = compute(volumes, model, options, progress, cancel)
        return self.write_outputs(sequence_nodes[result.sequences[0]], result)

    def write_outputs(self, reference_node: Any, result: GliomaResult) -> GliomaResult:
        """New nodes: the declared :data:`OUTPUTS` (the heatmap, when the result has one) through
        :func:`MedDLLib.results.add_output_nodes`, plus the result table and the markups ROI of the slice window
        (built from the result's values, as the widget does after its child); all carry the result as ``MedDL.*``
        attributes."""
        from MedDLLib.results import add_output_nodes, attribute_values, place_beside

        scene = reference_node.GetScene()
        base = reference_node.GetName()
        computed = to_computed(result)
        with nodes.removed_on_error(scene):
            data = dict(computed.data)
            if result.tumour is not None:  # a segmentation node holds one label per voxel (innermost region)
                data["tumour"] = result.tumour.labelmap()
            added = add_output_nodes(reference_node, OUTPUTS, data, computed.result)
            rows = [("probability", f"{result.probability:.6f}"),
                    ("call", "methylated" if result.methylated else "unmethylated"),
                    ("threshold", f"{result.threshold:g}"), ("sequences", ", ".join(result.sequences)),
                    ("window first slice", str(result.window["first"])),
                    ("window last slice", str(result.window["last"])),
                    ("window centre slice", str(result.window["centre"])),
                    ("slices (oriented stack)", str(result.window["n_slices"])),
                    ("model", result.model_name), ("recipe", result.recipe), ("model card", result.model_card)]
            table = nodes.add_table(scene, {"quantity": [r[0] for r in rows], "value": [r[1] for r in rows]},
                                    f"{base} MGMT result")
            roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName(f"{base} MGMT window"))
            box_to_ras = np.eye(4)
            box_to_ras[:3, :3] = np.asarray(result.window["axes_ras"], dtype=float).T
            box_to_ras[:3, 3] = result.window["centre_ras_mm"]
            roi.SetAndObserveObjectToNodeMatrix(nodes.vtk_matrix(box_to_ras))
            roi.SetSize(*map(float, result.window["size_mm"]))
            for node in (table, roi):
                for key, text in attribute_values(computed.result).items():
                    node.SetAttribute(nodes.ATTRIBUTE_PREFIX + key, text)
                node.SetAttribute(nodes.ATTRIBUTE_PREFIX + "input", reference_node.GetID())
            place_beside(reference_node, [table, roi])
        result.nodes = {**added, "table": table, "window": roi}
        return result


def to_computed(result: GliomaResult, study_path: Any = None) -> Any:
    """The pipeline's view of a result: ``result.json`` values, the heatmap, and the overlay slice (the slice of
    the reference sequence through the heatmap's centre of mass; the middle slice for an empty heatmap)."""
    from MedDLLib.pipeline import Computed, Overlay

    values = result.as_dict()
    if study_path is not None:
        values["input"] = str(study_path)
    heat = result.heatmap
    k = 0
    if heat is not None:
        weights = heat.array.sum(axis=(1, 2))
        k = int(round(float((np.arange(len(weights)) * weights).sum() / weights.sum()))) if weights.sum() > 0 \
            else heat.array.shape[0] // 2
    data = {"heatmap": heat, "tumour": result.tumour_masks()}  # tumour: stacked masks [k, j, i, 3] or None
    return Computed(values, data, Overlay(k, heatmap="heatmap"), result)
