"""LGGSegmenter logic on MRML nodes (Qt-free): brain MRI node(s) in, tumour segmentation + features out.

``process`` = read the scene (:func:`read_inputs`) -> :func:`compute` on arrays only -> :meth:`write_outputs`
(new nodes only; the input nodes are never modified). The 2D network runs slice by slice along the input's
acquisition axis (array axis k) and the result lies on the input's own voxel grid, so the segmentation's
reference geometry is the input volume.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.pipeline import TaskOptions
from MedDLLib.results import OutputFile

from . import model as lggmodel
from . import options as declared
from .features import TumourFeatures, tumour_features

SEGMENT = {1: ("tumour", (0.95, 0.35, 0.1))}
#: The outputs of ``meddl infer lgg`` (besides ``overlay.png`` and ``result.json``) and the nodes they become
#: (Grad-CAM only when asked for).
OUTPUTS = (
    OutputFile("segmentation", "tumour.seg.nrrd", "segmentation", "tumour", segments=SEGMENT,
               result_key="segmentation"),
    OutputFile("labelmap", "tumour_label.nrrd", "labelmap", "tumour label", segments=SEGMENT, result_key="labelmap"),
    OutputFile("table", "features.csv", "table", "tumour features", units={"area_mm2": "mm2", "volume_ml": "mL"},
               result_key="features"),
    OutputFile("heatmap", "gradcam.nrrd", "heatmap", "tumour Grad-CAM", required=False),
)
#: Grad-CAM target layer per network name.
GRADCAM_LAYERS = {"monai.networks.nets.BasicUNet": "upcat_2", lggmodel.UNETPP_NAME: "upcat_0_2",
                  "monai.networks.nets.FlexibleUNet": "decoder"}
#: Slices whose highest tumour probability (the prediction's, on the network's grid) is at most this have no
#: positive logit, so :func:`tumour_score` has a zero gradient and their Grad-CAM is 0: it is not run on them.
#: 0.1 below 0.5 covers the runtime's agreement with torch fp32 (probabilities within 0.05).
GRADCAM_NO_EVIDENCE = 0.4
#: Slices per Grad-CAM forward and backward (one batch's graph in memory at a time): batches of 2 took 0.7-0.8x
#: the time a slice of batches of 4 (U-Net w16 at 256 px, 2 cores: a full-resolution graph outgrows the caches).
GRADCAM_BATCH = 2


@dataclasses.dataclass
class LGGOptions(TaskOptions):
    """Options of one run: Grad-CAM heatmap, and the device (:class:`MedDLLib.pipeline.TaskOptions`)."""

    gradcam: bool = declared.GRADCAM.default


@dataclasses.dataclass
class LGGResult:
    """What :func:`compute` returns: all on the input grid ``(K, J, I)``."""

    mask: np.ndarray
    probability: np.ndarray
    geometry: Geometry
    features: TumourFeatures
    heatmap: Volume | None = None


@dataclasses.dataclass
class LGGOutputs:
    """The nodes :meth:`LGGSegmenterLogic.write_outputs` added, and the computed result."""

    segmentation: Any
    labelmap: Any
    table: Any
    heatmap: Any
    result: LGGResult


def read_inputs(volume_nodes: Any | Sequence[Any]) -> tuple[np.ndarray, Geometry]:
    """``(K, C, J, I)`` image and geometry from one node (FLAIR) or three (pre-contrast, FLAIR, post-contrast).

    Raises:
        InputError: see :func:`stack_channels`.
    """
    from MedDLLib.nodes import volume_from_node

    nodes = list(volume_nodes) if isinstance(volume_nodes, (list, tuple)) else [volume_nodes]
    if len(nodes) not in (1, 3):
        raise InputError(f"give one brain MRI node (FLAIR) or three (pre-contrast, FLAIR, post-contrast), "
                         f"got {len(nodes)}")
    return stack_channels({node.GetName(): volume_from_node(node, labelmap=False) for node in nodes})


def stack_channels(volumes: Mapping[str, Volume]) -> tuple[np.ndarray, Geometry]:
    """``(K, C, J, I)`` image and geometry of the channel volumes ``{name: volume}`` (in channel order).

    Raises:
        InputError: not brain MRI (:func:`~.preprocess.check_mri`: a CT by its DICOM modality or, without one,
            by its HU-like values), or volumes on different voxel grids.
    """
    from .preprocess import check_mri

    names = list(volumes)
    for name in names:
        check_mri(volumes[name], f"volume {volumes[name].metadata.get('name') or name!r}")
    first = volumes[names[0]]
    for name in names[1:]:
        vol = volumes[name]
        if vol.array.shape != first.array.shape or not vol.geometry.allclose(first.geometry, 1e-3):
            raise InputError(f"volume {name!r} is not on the voxel grid of {names[0]!r}: "
                             "resample the channels onto one grid first")
    return np.stack([volumes[n].array for n in names], axis=1), first.geometry


def tumour_score(logits: Any) -> Any:
    """A segmentation network's output ``(B, 1, H, W)`` as the one class score Grad-CAM explains ``(B, 1)``: the
    mean positive tumour logit of each slice."""
    import torch

    return torch.relu(logits).mean(dim=(2, 3))


def compute(image: np.ndarray, geometry: Geometry, network: Any, metadata: dict[str, Any],
            options: LGGOptions | None = None, progress: Callable[[float, str], None] | None = None,
            cancel: Callable[[], bool] | None = None, device: Any = "cpu") -> LGGResult:
    """Segment ``image (K, C, J, I)`` on ``geometry`` and compute the tumour features (arrays only, no MRML).

    ``network``: the torch network, or the :class:`MedDLLib.runtime.Runner` of its package (without Grad-CAM,
    a recorded runtime export then runs without torch).

    ``progress(fraction, message)``: the network takes the fractions up to 0.6 (with Grad-CAM) or 0.9.
    """
    options = options or LGGOptions()
    report = progress or (lambda fraction, message="": None)
    share = 0.6 if options.gradcam else 0.9
    seg = lggmodel.segment_study(image, network, metadata, device, cancel=cancel,
                                 progress=lambda fraction, message="": report(share * fraction, message))
    heat = None
    if options.gradcam:
        report(share, "Grad-CAM")
        import torch

        from MedDLLib.gradcam import compute_gradcam, heatmap_to_reference
        from MedDLLib.runtime import torch_network

        from .preprocess import network_grid_geometry

        layer = GRADCAM_LAYERS.get(metadata["network"]["name"])
        if layer is None:
            raise InputError(f"no Grad-CAM layer known for network {metadata['network']['name']!r}")
        # only the slices with evidence, a batch at a time (one batch's graph in memory); the others' map is 0
        shown = np.flatnonzero(seg.peak > GRADCAM_NO_EVIDENCE)
        maps = np.zeros(seg.prepared.x.shape[:1] + seg.prepared.x.shape[2:], dtype=np.float32)
        if len(shown):
            inputs = torch.from_numpy(seg.prepared.x[shown]).to(device)
            maps[shown] = compute_gradcam(torch_network(network), inputs, layer, class_index=0, score=tumour_score,
                                          batch_size=GRADCAM_BATCH, cancel=cancel,
                                          progress=lambda f, m: report(share + (0.95 - share) * f, m))
        grid = network_grid_geometry(geometry, seg.prepared.crop)
        reference = Volume(np.broadcast_to(np.float32(0.0), seg.mask.shape), geometry, {})  # its grid only
        heat = heatmap_to_reference(maps, grid, reference)
    report(0.95, "tumour features")
    return LGGResult(seg.mask, seg.probability, geometry, tumour_features(seg.mask, geometry), heat)


class LGGSegmenterLogic:
    """Runs a model package on brain MRI nodes and writes the result as new nodes."""

    def process(self, volume_nodes: Any | Sequence[Any], model: Any, options: LGGOptions | None = None,
                progress: Callable[[float, str], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> LGGOutputs:
        """Segment the tumour in ``volume_nodes`` (one FLAIR node or pre/FLAIR/post) with ``model``.

        Args:
            volume_nodes: one scalar volume node or a sequence of three in :data:`dataset.CHANNELS` order.
            model: a :class:`MedDLLib.models.ModelPackage`, or a package folder / cached model name.
            options: :class:`LGGOptions`.
            progress: ``(fraction done in [0, 1], message)`` callback.
            cancel: polled between batches; when it returns True :class:`MedDLLib.errors.Cancelled` is raised.
        """
        from MedDLLib.device import select_device
        from MedDLLib.models import load_task_model

        options = options or LGGOptions()
        device = select_device(options.device)
        network, package = load_task_model(model, lggmodel.TASK, device)
        image, geometry = read_inputs(volume_nodes)
        result = compute(image, geometry, network, package.metadata, options, progress, cancel, device)
        nodes = list(volume_nodes) if isinstance(volume_nodes, (list, tuple)) else [volume_nodes]
        reference = nodes[1] if len(nodes) == 3 else nodes[0]
        outputs = self.write_outputs(reference, result)
        if progress is not None:
            progress(1.0, "done")
        return outputs

    def write_outputs(self, reference_node: Any, result: LGGResult) -> LGGOutputs:
        """New nodes of the declared :data:`OUTPUTS` (:func:`MedDLLib.results.add_output_nodes`: segmentation with
        reference geometry ``reference_node``, labelmap, features table, heatmap; the result values as
        ``MedDL.*`` attributes)."""
        from MedDLLib.results import add_output_nodes

        computed = to_computed(result)
        added = add_output_nodes(reference_node, OUTPUTS, computed.data,
                                 {k: v for k, v in computed.result.items() if k not in ("model", "recipe")})
        return LGGOutputs(added["segmentation"], added["labelmap"], added["table"], added.get("heatmap"), result)


def features_table(f: TumourFeatures) -> dict[str, list[Any]]:
    """Table columns: one row per slice (k, area_mm2) and the 3D features repeated on the first row only.

    Kept long-format so it plots per-slice area directly; 3D features are on row 0 (``NaN`` below).
    """
    n = len(f.area_mm2)
    row = f.row()
    columns: dict[str, list[Any]] = {"k": list(range(n)), "area_mm2": [float(a) for a in f.area_mm2]}
    columns["volume_ml"] = [f.volume_ml] + [float("nan")] * (n - 1)
    for key, value in row.items():
        if key in ("tumour_volume_ml", "max_area_mm2"):
            continue
        columns[key] = [float(value)] + [float("nan")] * (n - 1)
    return columns


def read_study(path: str | Path, channels: Sequence[str]) -> dict[str, Volume]:
    """Read a study as ``{channel: Volume}`` in ``channels`` order (arrays only, no scene).

    ``path`` is a kaggle_3m study folder of .tif slices (nominal geometry), a DICOM folder holding one series
    (FLAIR) or the three series pre-contrast/FLAIR/post-contrast (matched by SeriesDescription), a folder of
    volume files named by channel (``pre-contrast.nrrd``, ``FLAIR.nrrd``, ``post-contrast.nrrd``, or .nii.gz:
    what the module widget writes), or an NRRD/NIfTI file (FLAIR). ``metadata["name"]`` of each volume names it
    in messages.

    Raises:
        InputError: the study does not provide the channels the model needs.
    """
    from MedDLLib.io import file_stem, is_volume_file, read_volume_file

    from . import dataset

    path = Path(path)
    volume_files = {file_stem(p): p for p in path.iterdir() if is_volume_file(p)} if path.is_dir() else {}
    if path.is_dir() and any(path.glob("*.tif")):
        case = dataset.read_case_folder(path)
        image = dataset.read_slices(case)
        geometry = dataset.nominal_geometry((image.shape[0], image.shape[2], image.shape[3]))
        return {c: Volume(image[:, dataset.CHANNELS.index(c)].astype(np.float32), geometry,
                          {"name": f"{case.case_id} {c}"}) for c in channels}
    if volume_files:
        missing = [c for c in channels if c not in volume_files]
        if missing:
            raise InputError(f"{path}: the model needs channels {list(channels)}; no volume file for {missing} "
                             f"(found {sorted(p.name for p in volume_files.values())}; expected <channel>.nrrd)")
        return {c: _named(read_volume_file(volume_files[c], name=c), c) for c in channels}
    if path.is_dir():
        from MedDLLib.dicom import find_series, read_series

        found = find_series(path)
        if len(found) == 0:
            raise InputError(f"{path}: no DICOM series and no kaggle_3m .tif slices")
        if len(found) == 1:
            if list(channels) != ["FLAIR"]:
                raise InputError(f"{path}: one series, but the model needs {list(channels)} "
                                 "(give a folder with the pre-contrast, FLAIR and post-contrast series)")
            return {"FLAIR": _named(read_series(found[0], keep_headers=True), "FLAIR")}
        out = {}
        reference = reference_channel(channels)
        for c in channels:
            key = {"pre-contrast": "pre", "FLAIR": "flair", "post-contrast": "post"}[c]
            match = [s for s in found if key in s.description.lower()]
            if len(match) != 1:
                raise InputError(f"{path}: expected one series whose SeriesDescription contains {key!r} for "
                                 f"channel {c}, found {len(match)} among "
                                 f"{[s.description for s in found]}")
            # the reference channel's parsed headers are kept: its DICOM SEG references them
            out[c] = _named(read_series(match[0], keep_headers=c == reference), c)
        return out
    if list(channels) != ["FLAIR"]:
        raise InputError(f"{path}: one volume file, but the model needs {list(channels)}")
    return {"FLAIR": _named(read_volume_file(path), file_stem(path))}


def _named(volume: Volume, name: str) -> Volume:
    return volume.with_array(volume.array, name=name)


def reference_channel(channels: Sequence[str]) -> str:
    """The channel whose grid the outputs lie on: FLAIR (the middle one of three), else the first."""
    return "FLAIR" if "FLAIR" in channels else list(channels)[0]


def to_computed(result: LGGResult, metadata: Mapping[str, Any] | None = None, model_name: str = "") -> Any:
    """The pipeline's view of a result: ``result.json`` values, the arrays of :data:`OUTPUTS` and the overlay
    (the slice of largest tumour area, else the middle one)."""
    import math

    from MedDLLib.pipeline import Computed, Overlay

    f = result.features
    clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    values = {
        "tumour_volume_ml": f.volume_ml, "centroid_ras_mm": [clean(v) for v in f.centroid_ras_mm],
        "spread_mm": [clean(v) for v in f.spread_mm], "max_area_mm2": f.max_area_mm2,
        "ellipsoid_ratio": clean(f.ellipsoid_ratio), "margin_fluctuation_mm": clean(f.margin_fluctuation_mm),
        "n_slices": len(f.area_mm2), "model": model_name, "recipe": (metadata or {}).get("recipe", ""),
    }
    labels = result.mask.astype(np.uint8)
    k = int(max(range(len(f.area_mm2)), key=lambda i: f.area_mm2[i])) if f.n_voxels else len(f.area_mm2) // 2
    data = {"segmentation": labels, "labelmap": labels, "table": features_table(f), "heatmap": result.heatmap}
    return Computed(values, data, Overlay(k, heatmap="heatmap" if result.heatmap is not None else None,
                                          labels="labelmap"), result)
