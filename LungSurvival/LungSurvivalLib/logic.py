"""LungSurvival logic on MRML nodes (Qt-free): chest CT node in; lungs, volumes, risk and Grad-CAM out.

``process`` = read the node (:func:`MedDLLib.nodes.volume_from_node`) -> :func:`compute` on arrays only ->
:meth:`LungSurvivalLogic.write_outputs` (new nodes only; the input node is never modified). Outputs:

* a segmentation node with the segments "Right lung" and "Left lung" (reference geometry = the input) and the
  same as a labelmap node (1 = right, 2 = left);
* with a lobe model (``LungOptions.lobe_model``, an imported ``wholeBody_ct_segmentation`` bundle): the lungs come
  from the bundle's five lobes (:func:`LungSurvivalLib.lobes.segment_lobes`) and a second segmentation holds the
  lobes (:data:`LOBE_SEGMENTS`, ``lobes.seg.nrrd``; DICOM SEG too for a DICOM input);
* a table node of the lung volumes in mL (right, left, total; each lobe with a lobe model);
* the risk score and risk group (low/high against the training cohort's median) with the model card's caveat,
  as attributes ``MedDL.risk_score``, ``MedDL.risk_group``, ``MedDL.caveat`` of the segmentation and table nodes
  (and columns of the table);
* a Grad-CAM heatmap volume on the input's voxel grid (the network grid mapped back through the crop).

Refused with an :class:`~MedDLLib.errors.InputError` naming the reason: a volume whose modality is not CT, values
that are not HU, and anything that is not a chest CT (no lungs, or a lung volume no chest has).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from MedDLLib.errors import InputError
from MedDLLib.geometry import Volume
from MedDLLib.pipeline import TaskOptions
from MedDLLib.results import OutputFile
from MedDLLib.terminology import segment_spec

from . import options as lungoptions
from .lobes import LOBES, LobeSegmentation
from .preprocess import LEFT_LUNG, LUNG_SEGMENTS, RIGHT_LUNG, InputSpec, LungSegmentation, network_input, segment_lungs

#: A chest CT holds at least this much lung (mL) in view; less means no chest (or a scan of the abdomen).
MIN_TOTAL_LUNG_ML = 150.0
MAX_TOTAL_LUNG_ML = 12000.0
#: Segments of the lobe segmentation (label value = :data:`LungSurvivalLib.lobes.LOBES`' key; colours from the
#: SNOMED terms of :mod:`MedDLLib.terminology`).
LOBE_SEGMENTS = segment_spec([name for _, name, _ in LOBES.values()])


#: The outputs of ``meddl infer lung`` (besides ``overlay.png`` and ``result.json``) and the nodes they become.
OUTPUTS = (
    OutputFile("segmentation", "lungs.seg.nrrd", "segmentation", "lungs", segments=LUNG_SEGMENTS,
               result_key="segmentation"),
    OutputFile("labelmap", "lungs_label.nrrd", "labelmap", "lungs label", segments=LUNG_SEGMENTS,
               result_key="labelmap"),
    OutputFile("heatmap", "heatmap.nrrd", "heatmap", "lung Grad-CAM", result_key="heatmap"),
    OutputFile("lobes", "lobes.seg.nrrd", "segmentation", "lung lobes", required=False, segments=LOBE_SEGMENTS,
               result_key="lobes"),
    OutputFile("table", "lung_volumes.csv", "table", "lung volumes and risk", units={"volume_ml": "mL"},
               result_key="volumes"),
)


@dataclasses.dataclass
class LungOptions(TaskOptions):
    """Options of one run (defaults from :mod:`LungSurvivalLib.options`): Grad-CAM heatmap, the lobe model (an
    imported ``wholeBody_ct_segmentation`` bundle's name, "" for MedDL's own lungs), and the device
    (:class:`MedDLLib.pipeline.TaskOptions`)."""

    gradcam: bool = True
    lobe_model: str = lungoptions.LOBE_MODEL.default


@dataclasses.dataclass
class LungResult:
    """What :func:`compute` returns (arrays on the input grid)."""

    segmentation: LungSegmentation
    geometry: Any
    risk_score: float
    risk_group: str
    recipe: str
    caveat: str
    centre: str
    heatmap: Volume | None = None
    #: the lobes, when a lobe model segmented the lungs
    lobes: LobeSegmentation | None = None
    #: seconds spent per step: ``segmentation`` (checks + lungs), ``network`` (input, risk, Grad-CAM)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        s = self.segmentation
        return {"right_lung_ml": round(s.right_ml, 3), "left_lung_ml": round(s.left_ml, 3),
                "total_lung_ml": round(s.total_ml, 3), "risk_score": round(self.risk_score, 6),
                "risk_group": self.risk_group, "recipe": self.recipe, "input_centred_on": self.centre,
                "caveat": self.caveat, **self.lobe_summary()}

    def lobe_summary(self) -> dict[str, Any]:
        """``lobe_volumes_ml`` (lobe name -> mL, :data:`LungSurvivalLib.lobes.LOBES` order) and the lobe model's
        name, or nothing without a lobe model."""
        if self.lobes is None:
            return {}
        return {"lung_segmentation": "lobe model",
                "lobe_volumes_ml": {name: round(ml, 3) for name, ml in self.lobes.lobe_ml.items()}}


@dataclasses.dataclass
class LungOutputs:
    """The nodes :meth:`LungSurvivalLogic.write_outputs` added, and the computed result."""

    segmentation: Any
    labelmap: Any
    table: Any
    heatmap: Any
    result: LungResult


def check_chest_ct(volume: Volume) -> None:
    """Refuse a volume that is not a CT in HU (modality attribute, value range).

    Raises:
        InputError: modality other than CT; values without air near -1000 HU.
    """
    modality = str(volume.metadata.get("modality") or volume.metadata.get("DICOM.Modality") or "").upper()
    if modality and modality != "CT":
        raise InputError(f"lung survival needs a chest CT; this volume's modality is {modality!r}, not 'CT'")
    array = np.asarray(volume.array)
    if array.size == 0 or min(array.shape[1:]) < 16 or array.shape[0] < 2:
        raise InputError(f"the volume of shape {array.shape} is too small for a chest CT")
    low, high = float(array.min()), float(array.max())
    if low > -500 or high > 5000:
        raise InputError(f"the volume's values ({low:g}..{high:g}) are not Hounsfield units of a CT (expected air "
                         "near -1000 HU): give a CT in HU")


def segment_chest(volume: Volume) -> LungSegmentation:
    """:func:`~LungSurvivalLib.preprocess.segment_lungs` after :func:`check_chest_ct`, refusing non-chest input."""
    check_chest_ct(volume)
    seg = segment_lungs(volume)
    check_lung_volume(seg)
    return seg


def segment_chest_lobes(volume: Volume, lobe_model: Any, device: Any = "cpu",
                        progress: Callable[[float, str], None] | None = None) -> LobeSegmentation:
    """:func:`~LungSurvivalLib.lobes.segment_lobes` (the wholeBody bundle ``lobe_model``) after
    :func:`check_chest_ct`, refusing non-chest input like :func:`segment_chest`."""
    from .lobes import segment_lobes

    check_chest_ct(volume)
    lobes = segment_lobes(volume, lobe_model, device=device, progress=progress)
    check_lung_volume(lobes.lungs)
    return lobes


def check_lung_volume(seg: LungSegmentation) -> None:
    """Refuse lungs whose total volume no chest CT has (:data:`MIN_TOTAL_LUNG_ML`-:data:`MAX_TOTAL_LUNG_ML`)."""
    if not (MIN_TOTAL_LUNG_ML <= seg.total_ml <= MAX_TOTAL_LUNG_ML):
        raise InputError(f"this does not look like a chest CT: the lungs found hold {seg.total_ml:.0f} mL "
                         f"(expected {MIN_TOTAL_LUNG_ML:.0f}-{MAX_TOTAL_LUNG_ML:.0f} mL in view)")


def compute(volume: Volume, network: Any, metadata: dict[str, Any], options: LungOptions | None = None,
            progress: Callable[[float, str], None] | None = None, cancel: Callable[[], bool] | None = None,
            device: Any = "cpu") -> LungResult:
    """Segment the lungs, predict the risk and (optionally) its Grad-CAM map, on arrays only.

    ``progress(fraction 0..1, message)`` is called between the steps; ``cancel()`` is polled there too and, when
    it returns True, :class:`MedDLLib.errors.Cancelled` is raised.
    """
    import time

    import torch

    from MedDLLib.pipeline import checkpoints

    from . import model as lungmodel  # torch: imported by the run, not by finding the task

    options = options or LungOptions()
    start = time.perf_counter()

    step = checkpoints(progress, cancel)

    lobes = None
    if options.lobe_model:
        step(0.0, f"segmenting the lungs and lobes ({options.lobe_model})")
        lobes = segment_chest_lobes(volume, options.lobe_model, device,
                                    lambda f, m="": step(0.35 * float(f), f"lobes: {m}"))
        seg = lobes.lungs
    else:
        step(0.0, "segmenting the lungs")
        seg = segment_chest(volume)
    seconds = {"segmentation": time.perf_counter() - start}
    step(0.4, "predicting the risk and its Grad-CAM map" if options.gradcam else "predicting the risk")
    spec = InputSpec.from_metadata(metadata["input"])
    x, grid, info = network_input(volume, seg.labels, spec)
    recipe = str(metadata.get("recipe", "improved"))
    heat = None
    if options.gradcam:
        from MedDLLib.gradcam import compute_gradcam, heatmap_to_reference

        # Grad-CAM runs a torch fp32 forward anyway: the risk comes from it (torch's outputs on every machine), so
        # a study runs one forward and opens no runtime session
        layer = metadata["output"].get("gradcam_layer", lungmodel.GRADCAM_LAYER)
        maps, outputs = compute_gradcam(network, torch.from_numpy(x[None]).to(device), layer,
                                        class_index=1 if recipe == "seed" else 0, bf16=False, return_logits=True)
    else:
        outputs = lungmodel.predict_inputs(network, x[None], device=device)
    risk = float(lungmodel.risk_scores(outputs, recipe)[0])
    threshold = metadata["output"].get("risk_threshold")
    if threshold is None:
        raise InputError("the model has no risk_threshold in its metadata (train it with `meddl train lung`)")
    group = "high" if risk > float(threshold) else "low"
    if options.gradcam:
        step(0.7, "mapping the heatmap onto the CT")
        heat = heatmap_to_reference(maps[0], grid, volume)
    seconds["network"] = time.perf_counter() - start - seconds["segmentation"]
    step(1.0, "done")
    caveat = str(metadata["output"].get("caveat", lungmodel.CAVEAT))
    return LungResult(seg, volume.geometry, risk, group, recipe, caveat, info["centre"], heat, lobes, seconds)


def volumes_table(seg: LungSegmentation, lobes: LobeSegmentation | None = None) -> dict[str, list[Any]]:
    """Table columns: one row per lung, then (with ``lobes``) one per lobe, then the total; volume in mL."""
    names = ["Right lung", "Left lung"]
    ml = [seg.right_ml, seg.left_ml]
    if lobes is not None:
        names += list(lobes.lobe_ml)
        ml += list(lobes.lobe_ml.values())
    return {"lung": names + ["Both lungs"], "volume_ml": [round(v, 3) for v in ml + [seg.total_ml]]}


class LungSurvivalLogic:
    """Runs a LungSurvival model package on a chest CT node and writes the result as new nodes."""

    def process(self, volume_node: Any, model: Any, options: LungOptions | None = None,
                progress: Callable[[float, str], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> LungOutputs:
        """Lungs, volumes, risk and Grad-CAM for ``volume_node`` with ``model`` (package, folder or cached name)."""
        from MedDLLib.device import select_device
        from MedDLLib.models import load_task_model
        from MedDLLib.nodes import volume_from_node

        from . import model as lungmodel

        options = options or LungOptions()
        device = select_device(options.device)
        network, package = load_task_model(model, lungmodel.TASK, device)
        volume = volume_from_node(volume_node, labelmap=False)
        result = compute(volume, network, package.metadata, options, progress, cancel, device)
        return self.write_outputs(volume_node, result)

    def write_outputs(self, reference_node: Any, result: LungResult) -> LungOutputs:
        """New nodes of the declared :data:`OUTPUTS` (:func:`MedDLLib.results.add_output_nodes`: segmentation,
        labelmap, volumes table, heatmap; the summary as ``MedDL.*`` attributes). The input is not modified."""
        from MedDLLib.results import add_output_nodes

        computed = to_computed(result, "")
        values = {k: v for k, v in computed.result.items() if k not in ("model", "seconds")}
        added = add_output_nodes(reference_node, OUTPUTS, computed.data, values)
        return LungOutputs(added["segmentation"], added["labelmap"], added["table"], added.get("heatmap"), result)


def to_computed(result: LungResult, model_name: str) -> Any:
    """The pipeline's view of a result: ``result.json`` values, the arrays of :data:`OUTPUTS` (segmentation and
    labelmap 1 = right, 2 = left lung; heatmap; volumes table) and the overlay (the slice of largest lung area)."""
    from MedDLLib.pipeline import Computed, Overlay

    labels = result.segmentation.labels.astype(np.uint8, copy=False)  # uint8 already: no full-volume copy
    columns = volumes_table(result.segmentation, result.lobes)
    columns["risk_score"] = [round(result.risk_score, 6)] * len(columns["lung"])
    columns["risk_group"] = [result.risk_group] * len(columns["lung"])
    values = {**result.summary(), "model": model_name,
              "seconds": {k: round(v, 3) for k, v in result.seconds.items()}}
    # lung voxels per slice, a slice at a time (count_nonzero along an axis makes a bool copy of the whole volume)
    k = int(np.argmax([np.count_nonzero(labels_k) for labels_k in labels]))
    data = {"segmentation": labels, "labelmap": labels, "heatmap": result.heatmap, "table": columns,
            "lobes": None if result.lobes is None else result.lobes.lobes.astype(np.uint8)}
    return Computed(values, data, Overlay(k, heatmap="heatmap", labels="labelmap"), result)


__all__ = ["OUTPUTS", "to_computed",
           "LungOptions", "LungResult", "LungOutputs", "LungSurvivalLogic", "check_chest_ct", "segment_chest",
           "compute", "volumes_table", "RIGHT_LUNG", "LEFT_LUNG", "LOBE_SEGMENTS", "segment_chest_lobes"]
