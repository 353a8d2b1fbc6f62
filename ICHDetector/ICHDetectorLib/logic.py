"""ICHDetector logic on MRML nodes (Qt-free): a head CT volume node in, probabilities and overlays out.

Three steps (the GUI may run :func:`compute` in a worker; batch and console call :meth:`ICHDetectorLogic.process`):

1. read the scene: :func:`MedDLLib.nodes.volume_from_node` (a copy; the input node is never modified);
2. :func:`compute` on arrays only: refuse what is not a head CT in HU, per-slice probabilities of the 6 labels,
   study-level result (max over slices), Grad-CAM heatmap of one label in the input geometry, the "suspected
   hemorrhage" mask (blood density 45-100 HU, inside the brain, where the heatmap is high) and its volume in mL;
3. :meth:`ICHDetectorLogic.write_outputs`: new nodes only: a table (one row per slice), a plot chart, a heatmap
   volume, a segmentation, and the study-level result as ``MedDL.*`` attributes on the table node.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from MedDLLib import nodes
from MedDLLib.errors import InputError
from MedDLLib.geometry import Volume
from MedDLLib.results import OutputFile

from . import options as declared
from .dataset import LABELS
from .preprocess import HeadCTCheck, InputSpec, check_head_ct, intracranial_mask, volume_input

#: Name (after the input node's name) of the plot chart of the per-slice probabilities.
PLOT_NAME = "ICH probabilities plot"

#: Blood density range (HU) of the suspected-hemorrhage mask.
BLOOD_HU = (45.0, 100.0)
SUSPECTED_SEGMENTS = {1: ("suspected hemorrhage", (1.0, 0.2, 0.2))}
#: Brain window (centre, width in HU) of the input volume and of ``overlay.png``.
BRAIN_WINDOW = (40.0, 80.0)

PROBABILITIES_CSV = "probabilities.csv"
HEATMAP_NRRD = "heatmap.nrrd"
SUSPECTED_SEG = "suspected.seg.nrrd"
#: The outputs of ``meddl infer ich`` (besides ``overlay.png`` and ``result.json``) and the nodes they become.
OUTPUTS = (
    OutputFile("heatmap", HEATMAP_NRRD, "heatmap", "ICH Grad-CAM", result_key="heatmap"),
    OutputFile("segmentation", SUSPECTED_SEG, "segmentation", "suspected hemorrhage", segments=SUSPECTED_SEGMENTS,
               result_key="segmentation"),
    OutputFile("table", PROBABILITIES_CSV, "table", "ICH probabilities", result_key="probabilities",
               descriptions={label: f"probability of {label}" for label in LABELS}),
)


@dataclasses.dataclass
class ICHOptions:
    """Options of one run.

    Attributes:
        heatmap_label: label explained by Grad-CAM (one of LABELS; "any" by default); None: no heatmap.
        threshold: study-level decision threshold on the 'any' probability.
        heatmap_threshold: heatmap value (0..1) above which blood-density voxels count as suspected.
        device: torch device for the network.
        accept_non_head: run on a CT whose anatomy is not a head's (chest, no skull) instead of refusing it; the
            result records it (``accepted_non_head``). The user's explicit choice (``--accept-non-head``).
    """

    heatmap_label: str | None = declared.HEATMAP_LABEL.default
    threshold: float = declared.THRESHOLD.default
    heatmap_threshold: float = 0.4
    device: str = "cpu"
    accept_non_head: bool = declared.ACCEPT_NON_HEAD.default

    def __post_init__(self) -> None:
        if self.heatmap_label is not None and self.heatmap_label not in LABELS:
            raise InputError(f"heatmap label {self.heatmap_label!r} is not one of {', '.join(LABELS)}")
        if not 0.0 < self.threshold < 1.0 or not 0.0 <= self.heatmap_threshold <= 1.0:
            raise InputError(f"thresholds must be in (0, 1): got {self.threshold}, {self.heatmap_threshold}")


@dataclasses.dataclass
class ICHResult:
    """What :func:`compute` produces (arrays and numbers) and, after :meth:`write_outputs`, the new nodes."""

    probabilities: np.ndarray  # (K, 6) in LABELS order, slice order of the input volume
    study: dict[str, float]  # "<label>_probability": max over slices
    positive: bool
    threshold: float
    heatmap: Volume | None  # [k, j, i] in [0, 1], input geometry
    suspected: np.ndarray | None  # uint8 [k, j, i], input grid
    suspected_volume_ml: float
    model_name: str
    heatmap_label: str | None = "any"
    nodes: dict[str, Any] = dataclasses.field(default_factory=dict)
    non_head_note: str | None = None  # why the input is not a head CT, when the user ran it anyway

    @property
    def summary(self) -> str:
        """One line for people, e.g. ``ICH suspected (any 0.97): subdural 0.91 ...; suspected region 3.2 mL``."""
        any_p = self.study["any_probability"]
        head = f"ICH suspected (any {any_p:.2f})" if self.positive else f"no ICH detected (any {any_p:.2f})"
        subs = ", ".join(f"{label} {self.study[f'{label}_probability']:.2f}" for label in LABELS[1:]
                         if self.study[f"{label}_probability"] >= self.threshold)
        region = f"; suspected region {self.suspected_volume_ml:.1f} mL" if self.suspected is not None else ""
        return head + (f": {subs}" if subs else "") + region + f" [threshold {self.threshold:g}; research use only]"

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready result: the study probabilities, decision, volume and summary."""
        out: dict[str, Any] = {f"{label}_probability": round(float(self.study[f"{label}_probability"]), 6)
                               for label in LABELS}
        out.update(positive=bool(self.positive), threshold=self.threshold, n_slices=int(len(self.probabilities)),
                   max_any_slice=int(np.argmax(self.probabilities[:, 0])),
                   suspected_volume_ml=round(float(self.suspected_volume_ml), 3), model=self.model_name,
                   heatmap_label=self.heatmap_label or "",
                   summary=self.summary)
        if self.non_head_note:  # the user's override (--accept-non-head), recorded with the result
            out["accepted_non_head"] = self.non_head_note
        return out


def compute(volume: Volume, model: Any, options: ICHOptions | None = None,
            progress: Callable[[float, str], None] | None = None,
            cancel: Callable[[], bool] | None = None, checked: HeadCTCheck | None = None) -> ICHResult:
    """Run the model on a HU head CT (arrays only; safe in a worker thread).

    Args:
        volume: ``[k, j, i]`` HU with its geometry (axial slices along k).
        model: an ICH model package (folder, cached name, a :class:`MedDLLib.models.ModelPackage` or a
            :class:`MedDLLib.pipeline.LoadedModel`).
        options: :class:`ICHOptions`.
        progress: ``(fraction 0..1, message)`` callback.
        cancel: returns True to stop (raises :class:`MedDLLib.errors.Cancelled`).
        checked: what :func:`~ICHDetectorLib.preprocess.check_head_ct` returned for this volume when it was read
            (see :class:`~ICHDetectorLib.preprocess.HeadCTCheck`); with the options' ``accept_non_head`` it is not
            run again. None: it runs here.
    Raises:
        InputError: not a head CT in HU (see :func:`~ICHDetectorLib.preprocess.check_head_ct`), bad options.
    """
    import torch

    from MedDLLib.gradcam import compute_gradcam, heatmap_to_reference
    from MedDLLib.pipeline import checkpoints, ensure_loaded

    from .model import load_model, predict_inputs, probabilities

    options = options or ICHOptions()
    checkpoint = checkpoints(progress, cancel)

    if checked is not None and checked.accept_non_head == options.accept_non_head:
        override = checked.note
    else:
        override = check_head_ct(volume, accept_non_head=options.accept_non_head)
    checkpoint(0.05, "loading the model")
    loaded = ensure_loaded(model, options.device, load_model)
    network, package = loaded.network, loaded.package
    spec = InputSpec.from_metadata(package.metadata["input"])
    output = package.metadata["output"].get("activation", "sigmoid")
    checkpoint(0.15, "preprocessing")
    inputs, grid = volume_input(volume, spec)
    layer = package.metadata["output"].get("gradcam_layer") or "layer3"
    if options.heatmap_label is not None:
        checkpoint(0.3, f"classifying the slices, Grad-CAM for '{options.heatmap_label}'")
        # Grad-CAM runs a torch forward anyway: the prediction comes from it, in fp32 (torch's probabilities on
        # every machine), so a study runs one forward and opens no runtime session (against ONNX Runtime's forward
        # besides Grad-CAM's: the same time cold, 27 MiB less peak).
        # One pass over the whole study (its maps share one normalisation either way; 40 slices at 64 px are small).
        maps, logits = compute_gradcam(network, torch.from_numpy(inputs).to(options.device), layer,
                                       class_index=LABELS.index(options.heatmap_label), bf16=False,
                                       return_logits=True)
        probs = probabilities(logits, output)
    else:
        checkpoint(0.3, "classifying the slices")
        probs = predict_inputs(network, inputs, output, device=options.device)
    study = {f"{label}_probability": float(probs[:, j].max()) for j, label in enumerate(LABELS)}
    positive = study["any_probability"] >= options.threshold
    heat_volume = suspected = None
    volume_ml = 0.0
    if options.heatmap_label is not None:
        checkpoint(0.5, "mapping the heatmap onto the CT")
        # a slice the model finds negative for the label carries no evidence to show
        maps = maps * (probs[:, LABELS.index(options.heatmap_label)] >= options.threshold)[:, None, None]
        heat_volume = heatmap_to_reference(maps.astype(np.float32), grid, volume)
        checkpoint(0.85, "suspected hemorrhage region")
        suspected = suspected_region(volume.array, heat_volume.array, options.heatmap_threshold)
        volume_ml = float(suspected.sum()) * volume.geometry.voxel_volume_ml()
    checkpoint(1.0, "done")
    return ICHResult(probs, study, bool(positive), options.threshold, heat_volume, suspected, volume_ml,
                     package.name, options.heatmap_label, non_head_note=override)


def suspected_region(hu: np.ndarray, heat: np.ndarray, heat_threshold: float) -> np.ndarray:
    """The "suspected hemorrhage" mask ``[k, j, i]`` uint8: blood density (:data:`BLOOD_HU`), heatmap at or above
    ``heat_threshold`` and intracranial (:func:`~.preprocess.intracranial_mask`).

    8 slices at a time (no full-volume float32 HU copy); the skull's inside is found only on the slices with
    hot blood-density voxels (the heatmap is zero on the slices the model finds negative): the same mask.
    """
    raw = np.asarray(hu)
    suspected = np.zeros(raw.shape, dtype=np.uint8)
    for k in range(0, len(raw), 8):
        part = np.asarray(raw[k:k + 8], dtype=np.float32)
        candidate = (part >= BLOOD_HU[0]) & (part <= BLOOD_HU[1]) & (heat[k:k + 8] >= heat_threshold)
        for n in np.flatnonzero(candidate.reshape(len(candidate), -1).any(axis=1)):
            suspected[k + n] = candidate[n] & intracranial_mask(part[n:n + 1])[0]
    return suspected


class ICHDetectorLogic:
    """Runs ICH detection on volume nodes and adds the result nodes to the same scene."""

    def process(self, volume_node: Any, model: Any, options: ICHOptions | None = None,
                progress: Callable[[float, str], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> ICHResult:
        """Read ``volume_node`` (HU head CT), :func:`compute`, then :meth:`write_outputs`."""
        volume = nodes.volume_from_node(volume_node, labelmap=False)
        result = compute(volume, model, options, progress, cancel)
        return self.write_outputs(volume_node, result)

    def write_outputs(self, volume_node: Any, result: ICHResult) -> ICHResult:
        """New nodes of the declared :data:`OUTPUTS` (:func:`MedDLLib.results.add_output_nodes`: table, heatmap,
        segmentation, the ``result.json`` values as ``MedDL.*`` attributes) plus the per-slice plot chart."""
        from MedDLLib.results import add_output_nodes

        computed = to_computed(result)
        with nodes.removed_on_error(volume_node.GetScene()):
            added = add_output_nodes(volume_node, OUTPUTS, computed.data, computed.result)
            added["plot"] = probability_plot(volume_node, added["table"])
        result.nodes = added
        return result


def probability_plot(reference_node: Any, table_node: Any) -> Any:
    """The plot chart of the six probabilities of ``table_node`` against the slice index (a new node)."""
    return nodes.add_plot(reference_node.GetScene(), table_node, "slice", list(LABELS),
                          f"{reference_node.GetName()} {PLOT_NAME}", x_title="slice index (k)", y_title="probability")


def to_computed(result: ICHResult, study_path: Any = None) -> Any:
    """The pipeline's view of a result (:class:`MedDLLib.pipeline.Computed`): ``result.json`` values, the arrays of
    :data:`OUTPUTS` (per-slice table, heatmap, suspected region) and the overlay slice (highest 'any')."""
    from MedDLLib.pipeline import Computed, Overlay

    columns: dict[str, Any] = {"slice": list(range(len(result.probabilities)))}
    for j, label in enumerate(LABELS):
        columns[label] = [round(float(v), 6) for v in result.probabilities[:, j]]
    values = result.as_dict()
    if study_path is not None:
        values["input"] = str(study_path)
    k = int(result.probabilities[:, 0].argmax())
    data = {"table": columns, "heatmap": result.heatmap, "segmentation": result.suspected}
    return Computed(values, data, Overlay(k, heatmap="heatmap", labels="segmentation", window=BRAIN_WINDOW), result)
