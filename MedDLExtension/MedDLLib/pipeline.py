"""One task pipeline for ``meddl infer``, ``meddl batch``, the demo's inference and the module widgets' child.

A task (:class:`PipelineTask`) declares three things; this module runs them, the same way everywhere:

1. how it reads a study: :meth:`PipelineTask.read_study` (a DICOM folder, a volume file, a folder of volume files,
   a dataset's own layout) -> :class:`Study` (named :class:`~MedDLLib.geometry.Volume` arrays, the reference one
   whose grid the outputs lie on, and its DICOM source files in slice order);
2. what it computes: :meth:`PipelineTask.compute` ``(inputs, package, options, progress, cancel)`` on arrays
   only -> :class:`Computed` (the ``result.json`` values, the arrays of the declared outputs, the overlay slice);
3. its outputs: :attr:`PipelineTask.outputs`, a tuple of :class:`MedDLLib.results.OutputFile` (file name, kind,
   node name, segments, the ``result.json`` key that names the file).

:func:`run_study` then does, once: read the study, load and verify the model package (:func:`load_model`:
checksum, weights-only load, network built and loaded strictly -- the network is built once and reused by
``check_model`` and the runs that follow), compute, write the output files WITHOUT MRML
(:mod:`MedDLLib.outputs`: SimpleITK NRRD, a ``.seg.nrrd`` Slicer reads as a segmentation, CSV tables), render
``overlay.png`` from the arrays (:func:`MedDLLib.render.render_overlay`) and return the ``result.json`` values
(the caller, ``meddl infer`` or the batch runner, writes ``result.json`` atomically with the outputs).

Nothing here imports ``slicer``: the widget's child runs the same in ``PythonSlicer`` (MRML core only), in
headless Slicer and in plain Python. Scene nodes are made only at the edge, from the same declarations
(:func:`MedDLLib.results.add_output_nodes`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Cancelled, InputError
from .geometry import Volume
from .results import OutputFile
from .tasks import Task

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]
#: File name of the overlay every task writes (its ``result.json`` key is ``overlay``).
OVERLAY_PNG = "overlay.png"


# ------------------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class Study:
    """One study as arrays: what :meth:`PipelineTask.read_study` returns and :meth:`PipelineTask.compute` takes.

    Attributes:
        volumes: name (sequence, channel or ``"image"``) -> volume, in the order the task takes them.
        reference: the name of the volume whose voxel grid every output lies on.
        path: where the study was read from (None for nodes from a scene).
    """

    volumes: dict[str, Volume]
    reference: str
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.reference not in self.volumes:
            raise ValueError(f"reference {self.reference!r} is not one of the volumes {list(self.volumes)}")

    @property
    def reference_volume(self) -> Volume:
        return self.volumes[self.reference]

    @property
    def source_files(self) -> list[str]:
        """The DICOM files of the reference volume in slice order (empty when it was not read from DICOM); the
        DICOM SEG writer references them."""
        return [str(f) for f in self.reference_volume.metadata.get("files") or []]


@dataclasses.dataclass
class TaskOptions:
    """What every task's options hold: the compute device (None: :func:`MedDLLib.device.select_device`'s
    choice). A task's options dataclass adds its own fields (keyword arguments)."""

    device: Any = None


class LoadedModel:
    """A verified model package and its network (built once, eval mode) on ``device``.

    Given no network, it builds it on first use of :attr:`network`; :meth:`runner` runs a prediction on the
    package's recorded runtime export (:mod:`MedDLLib.runtime`) without building it, or importing torch.
    """

    def __init__(self, package: Any, network: Any = None, device: Any = "cpu") -> None:
        self.package = package  # MedDLLib.models.ModelPackage
        self.device = device
        self._network = None
        self._runners: dict[str, Any] = {}  # forward -> MedDLLib.runtime.Runner
        if network is not None:
            self._set_network(network)

    def __repr__(self) -> str:
        return f"LoadedModel({self.name!r}, device={str(self.device)!r}, built={self._network is not None})"

    @property
    def network(self) -> Any:
        """The torch network (eval mode, on :attr:`device`), built now when it was not yet."""
        if self._network is None:
            self._set_network(self.package.network(self.device))
        return self._network

    @property
    def built(self) -> bool:
        """Whether the torch network exists (False while predictions ran on a runtime export only)."""
        return self._network is not None

    def _set_network(self, network: Any) -> None:
        from . import runtime

        self._network = network
        runtime.share_runners(network, self.package, self._runners)  # predict functions find the runtime export

    def runner(self, forward: str = "forward", agree: Any = None) -> Any:
        """The :class:`MedDLLib.runtime.Runner` of the network's ``forward`` (a method name, e.g.
        ``"evidence_map"``): the network is built only if the runtime needs torch."""
        from . import runtime

        if self._network is not None or str(self.device) != "cpu":
            return runtime.runner_for(self.network, self.package, agree=agree, forward=forward)
        return runtime.deferred_runner(lambda: self.network, self.package, self._runners, agree=agree,
                                       forward=forward)

    def warm(self, stop: Callable[[], bool] | None = None) -> list[str]:
        """Load and compile the runtime sessions of every forward an earlier run recorded a choice for
        (:meth:`MedDLLib.runtime.Runner.warm`), until ``stop()``; the CPU only. Returns the choice keys warmed."""
        if str(self.device) != "cpu":
            return []
        choices = self.runner().recorded_choices()
        forwards = dict.fromkeys(key.rpartition(":")[0] or "forward" for key in choices)
        return [key for forward in forwards for key in self.runner(forward).warm(stop)]

    def forwards_run(self, clear: bool = False) -> str:
        """What ran this model's forwards since the last ``clear`` (:func:`MedDLLib.runtime.forwards_run`)."""
        from . import runtime

        return runtime.forwards_run(self._runners, clear)

    @property
    def name(self) -> str:
        return self.package.name

    @property
    def metadata(self) -> dict[str, Any]:
        return self.package.metadata

    def to(self, device: Any) -> "LoadedModel":
        """This model with its network on ``device`` (moved in place)."""
        if str(device) != str(self.device):
            if self._network is not None:
                self._network.to(device)
            self.device = device
        return self


@dataclasses.dataclass
class Overlay:
    """Which slice ``overlay.png`` shows and what lies on it.

    Attributes:
        k: slice index of the reference volume (array axis k).
        heatmap: the :attr:`Computed.data` key of a heatmap drawn on top (or None).
        labels: the :attr:`Computed.data` key of a label array drawn on top (or None); its colours come from
            the output's segments.
        window: grey window (centre, width) of the background; None: the slice's 1st-99th percentile.
    """

    k: int
    heatmap: str | None = None
    labels: str | None = None
    window: tuple[float, float] | None = None


@dataclasses.dataclass
class Computed:
    """What :meth:`PipelineTask.compute` returns.

    Attributes:
        result: the ``result.json`` values (JSON-typed: numbers, text, lists); the pipeline adds the file names.
        data: :attr:`OutputFile.key` -> what that output holds: a label array ``[k, j, i]`` on the reference grid
            (``labelmap``, ``segmentation``), a :class:`Volume` (``heatmap``, ``volume``) or ``{column: values}``
            (``table``). An optional output whose data is missing or None is not written.
        overlay: the slice of ``overlay.png``.
        details: the task's own result object (e.g. ``ICHResult``), for the console logic.
    """

    result: dict[str, Any]
    data: dict[str, Any]
    overlay: Overlay | None = None
    details: Any = None


# ------------------------------------------------------------------------------------------------ models
_cache: dict[tuple[str, str], LoadedModel] = {}


def load_model(task: "PipelineTask", model: Any, device: Any = "cpu") -> LoadedModel:
    """The model ``model`` (package folder, cached name, :class:`ModelPackage` or :class:`LoadedModel`) of
    ``task``, verified and with its network built once: checksum, weights-only load, strict fit
    (:meth:`PipelineTask.load_network`). The last model loaded is kept, so ``check_model`` then ``infer`` (and
    every study of a batch) load and build it once.

    Raises:
        InputError: a model of another task. ModelError: missing, tampered or not fitting its network.
    """
    if isinstance(model, LoadedModel):
        return model.to(device)
    from .models import ModelPackage, resolve_model

    if isinstance(model, ModelPackage):
        network, package = task.load_network(model, device)
        return LoadedModel(package, network, device)
    root = resolve_model(model)
    key = (task.name, str(root))
    cached = _cache.get(key)
    if cached is not None and _sha_on_disk(root) == cached.metadata.get("sha256"):
        return cached.to(device)
    loaded = task.load_deferred(root) if type(task).load_network is PipelineTask.load_network else None
    if loaded is None:
        network, package = task.load_network(root, "cpu")
        loaded = LoadedModel(package, network, "cpu")
    _cache.clear()
    _cache[key] = loaded
    return loaded.to(device)


def _sha_on_disk(root: Path) -> str | None:
    """The sha256 the package's metadata names now (a replaced package is loaded again)."""
    import json

    from .models import METADATA_FILE

    try:
        return json.loads((root / METADATA_FILE).read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError):
        return None


def ensure_loaded(model: Any, device: Any, loader: Callable[[Any, Any], tuple[Any, Any]]) -> LoadedModel:
    """``model`` as a :class:`LoadedModel` on ``device``: as it is when already loaded, else through ``loader``
    (``(model, device) -> (network, package)``, the task's own loader)."""
    if isinstance(model, LoadedModel):
        return model.to(device)
    network, package = loader(model, device)
    return LoadedModel(package, network, device)


# ------------------------------------------------------------------------------------------------ task
class PipelineTask(Task):
    """A task run by the shared pipeline: it declares :meth:`read_study`, :meth:`compute` and :attr:`outputs`.

    ``infer`` (``meddl infer`` / ``meddl batch``) is :func:`run_study`; subclasses add :meth:`options` (their
    options object from the command line) and, where the model needs it, :meth:`load_network`.
    """

    #: The output files (``result.json`` excepted), in the order they are written and loaded as nodes.
    outputs: tuple[OutputFile, ...] = ()
    #: Whether :meth:`compute` uses a model package (no default model ships with any MedDL task: ``infer`` and
    #: ``batch`` check ``--model`` once, first).
    needs_model = True

    #: The options of ``meddl infer``/``batch`` (:class:`MedDLLib.options.Option`, declared in ``<Task>Lib/options.py``)
    #: and the dataclass of the task's logic they fill (its fields: those options' names and ``device``).
    infer_options: tuple[Any, ...] = ()
    options_type: type | None = None

    def options(self, args: argparse.Namespace, device: Any) -> Any:
        """The task's options object from ``meddl infer|batch`` arguments (each of :attr:`infer_options`, its
        default where ``args`` lacks it); ``device`` is already chosen."""
        if self.options_type is None:
            raise NotImplementedError(f"task {self.name!r} declares no options_type")
        values = {option.name: getattr(args, option.name, option.default) for option in self.infer_options}
        return self.options_type(**values, device=device)

    def load_network(self, model: Any, device: Any) -> tuple[Any, Any]:
        """``(network in eval mode on device, package)`` of ``model`` (folder, cached name or package)."""
        from .models import load_task_model

        return load_task_model(model, self.name, device)

    def load_deferred(self, root: Path) -> LoadedModel:
        """The package at ``root`` checked (metadata, task, weights' SHA-256), its weights read and its network
        built now unless an earlier run exported these weights for this network
        (:meth:`MedDLLib.runtime.Runner.covers`): then a prediction may run on the export without torch, and they
        are read when something needs them."""
        from .models import load_package

        package = load_package(root, weights=False)
        if package.task != self.name:
            raise InputError(f"model {package.name!r} is for task {package.task!r}, not {self.name!r}")
        loaded = LoadedModel(package)
        if not loaded.runner().covers():
            loaded.network  # noqa: B018 - the weights-only load and the strict fit, now (their errors come first)
        return loaded

    def read_study(self, path: Path, package: LoadedModel | None, options: Any) -> Study:
        """Read the study at ``path`` (the model says which sequences/channels it needs)."""
        raise NotImplementedError

    def compute(self, inputs: Study, package: LoadedModel | None, options: Any,
                progress: Progress | None = None, cancel: Cancel | None = None) -> Computed:
        """The task's computation on arrays only (no MRML): see :class:`Computed`."""
        raise NotImplementedError

    def check_model(self, model: str | None) -> dict[str, Any] | None:
        """Refuse an unusable model once, before any study, by loading it (:func:`load_model`): the loaded
        network is kept for the runs that follow (no second verification, no second network build).

        Returns:
            name, path, task, version, sha256, n_tensors, n_values, network (as
            :func:`MedDLLib.models.verify_model` reports them).
        """
        if not self.needs_model:
            return None
        if model is None:
            super().check_model(model)  # the one "needs --model" message
        loaded = load_model(self, model, "cpu")
        found = {"name": loaded.name, "path": str(loaded.package.path), "task": loaded.package.task,
                 "version": loaded.metadata["version"], "sha256": loaded.metadata["sha256"]}
        if not loaded.built:  # an earlier run exported and fitted these weights; not read again
            return {**found, "network": f"{loaded.metadata['network']['name']} (runtime export of these weights)"}
        state = loaded.package.state_dict
        return {**found, "n_tensors": len(state), "n_values": int(sum(t.numel() for t in state.values())),
                "network": f"{loaded.metadata['network']['name']} built and loaded (strict)"}

    def run(self, input_path: str | Path, model: Any, output: str | Path, *, device: Any = None,
            progress: Progress | None = None, **values: Any) -> dict[str, Any]:
        """One study into ``output`` (:func:`run_study`) from Python, e.g. the demo's inference; ``values`` are the
        task's options by their command-line names (``threshold=0.3``); ``device`` as
        :func:`MedDLLib.device.select_device` takes it. Returns the ``result.json`` values (not written)."""
        from .device import select_device

        chosen = select_device(device)
        return run_study(self, Path(input_path), model, Path(output),
                         self.options(argparse.Namespace(**values), chosen), device=chosen, progress=progress)

    def infer(self, input_path: Path, model: str | None, output: Path, args: argparse.Namespace) -> dict[str, Any]:
        """``meddl infer`` / ``meddl batch`` of one study: :func:`run_study` with the options from ``args``."""
        from .device import select_inference_device

        if self.needs_model and model is None:
            super().check_model(model)
        device = select_inference_device(getattr(args, "device", None), getattr(args, "force_cpu", False))
        source = getattr(args, "dicom_source", None)
        if source is not None:
            from .dicomseg import series_files

            source = series_files(source)
        return run_study(self, Path(input_path), model, Path(output), self.options(args, device),
                         device=device, progress=getattr(args, "progress", None),
                         output_format=getattr(args, "output_format", None) or "nrrd", source_files=source,
                         prefetched=getattr(args, "prefetch", None))


# ------------------------------------------------------------------------------------------------ running
def _scaled(progress: Progress | None, start: float, end: float) -> Progress:
    def report(fraction: float, message: str = "") -> None:
        if progress is not None:
            progress(start + (end - start) * float(fraction), message)

    return report


def run_study(task: PipelineTask, input_path: Path, model: Any, output: Path, options: Any, *,
              device: Any = "cpu", progress: Progress | None = None, cancel: Cancel | None = None,
              output_format: str = "nrrd", source_files: Sequence[str | Path] | None = None,
              prefetched: Any = None) -> dict[str, Any]:
    """Read one study, compute, write the task's output files into ``output``; return the ``result.json`` values.

    ``output_format``: "nrrd" or "nifti" for the volume outputs (heatmaps, labelmaps; see :func:`write_outputs`).
    ``source_files``: the DICOM series an NRRD/NIfTI input was saved from (``--dicom-source``): its
    segmentations then also go out as DICOM SEG referencing that series.
    ``prefetched``: the study being read in a child while the model loaded (:mod:`MedDLLib.prefetch`); when it
    brings none, the study is read here.

    ``progress(fraction 0..1, message)``: reading 0-0.05, the model 0.05, computing 0.1-0.9, writing 0.9-1.
    Errors from reading or computing that name no file name the study. What reading warned about (each input
    volume's ``metadata["warnings"]``) joins the task's own under ``warnings`` (:func:`input_warnings`).

    Raises:
        InputError / DicomError / ModelError: the study or the model is refused (one line each).
    """
    report = _scaled(progress, 0.0, 1.0)
    report(0.0, "reading the study")
    start = time.perf_counter()
    loaded = load_model(task, model, device) if task.needs_model else None
    if prefetched is not None and loaded is not None:
        loaded.warm(stop=prefetched.ready)  # the recorded runtime sessions compiled while the child reads
    study = prefetched.study(loaded.metadata if loaded is not None else None) if prefetched is not None else None
    try:
        if study is None:
            study = task.read_study(Path(input_path), loaded, options)
    except InputError as exc:
        raise _naming(exc, input_path) from None
    read_s = time.perf_counter() - start
    if source_files:
        study.reference_volume.metadata["files"] = [str(f) for f in source_files]
    report(0.1, "computing")
    try:
        computed = compute(task, study, loaded, options, _scaled(progress, 0.1, 0.9), cancel)
    except InputError as exc:
        raise _naming(exc, input_path) from None
    report(0.9, "writing the outputs")
    write_start = time.perf_counter()
    result = write_outputs(task.outputs, computed, study, Path(output), model=loaded, output_format=output_format,
                           dicom_seg_optional=bool(source_files))
    warnings = merged_warnings(result.get("warnings"), input_warnings(study))
    if warnings:
        result["warnings"] = warnings
    if isinstance(result.get("seconds"), dict):  # a task that reports its steps' times gets read and write too
        result["seconds"] = {"read": round(read_s, 3), **result["seconds"],
                             "write": round(time.perf_counter() - write_start, 3)}
    report(1.0, "done")
    return result


def compute(task: PipelineTask, study: Study, loaded: LoadedModel | None, options: Any,
            progress: Progress | None = None, cancel: Cancel | None = None) -> Computed:
    """``task.compute`` of one study, its ``result`` completed with ``runtime``: what ran the model's forwards
    for this study (:meth:`LoadedModel.forwards_run`; torch or a runtime, versions, precision)."""
    if loaded is not None:
        loaded.forwards_run(clear=True)  # what earlier studies (or the model check) ran is not this study's
    computed = task.compute(study, loaded, options, progress, cancel)
    ran = loaded.forwards_run(clear=True) if loaded is not None else ""
    if ran:
        computed.result["runtime"] = ran
    return computed


def input_warnings(study: Study) -> list[str]:
    """What reading the study warned about (``metadata["warnings"]`` of each input volume: an outlier slice set
    aside, a gantry tilt resampled, 1 mm pixels assumed, ...), reference volume first; each line names its volume
    when the study has several."""
    names = [study.reference] + [name for name in study.volumes if name != study.reference]
    several = len(names) > 1
    return [f"{name}: {text}" if several else str(text)
            for name in names for text in study.volumes[name].metadata.get("warnings") or []]


def merged_warnings(*lists: Sequence[str] | None) -> list[str]:
    """The warnings of ``lists`` in order, each once (``result.json``'s ``warnings``: the task's own and the
    input's)."""
    return list(dict.fromkeys(str(text) for texts in lists for text in texts or []))


def _naming(exc: InputError, path: Path) -> InputError:
    """``exc`` with the study's path in front, unless it names it already."""
    text = str(exc)
    return exc if str(path) in text else InputError(f"{path}: {text}")


def write_outputs(spec: Sequence[OutputFile], computed: Computed, study: Study, output: Path, *,
                  model: LoadedModel | None = None, output_format: str = "nrrd",
                  dicom_seg_optional: bool = False) -> dict[str, Any]:
    """Write every declared output of ``computed`` into ``output`` (no MRML) and ``overlay.png``; return the
    ``result.json`` values with each written file under its :attr:`OutputFile.result_key`.

    Volume outputs (heatmap, labelmap, volume) go out as ``output_format`` ("nrrd": the declared name;
    "nifti": the same stem with ``.nii.gz``); segmentations are always ``.seg.nrrd`` (Slicer's segmentation
    format, segments carry their SNOMED terminology) plus, for a DICOM input, a DICOM SEG (:func:`write_dicom_seg`,
    named in ``result.json`` under ``dicom_seg``). ``model`` names the algorithm in the DICOM SEG.
    ``dicom_seg_optional`` (the source series came with ``--dicom-source``, e.g. from the widget): a DICOM SEG the
    series refuses (a file it cannot reference) becomes a ``warnings`` line instead of failing the run.

    Raises:
        InputError: a required output has no data, or data that does not lie on the reference grid.
    """
    from . import outputs

    output.mkdir(parents=True, exist_ok=True)
    reference = study.reference_volume
    result = dict(computed.result)
    for item in spec:
        data = computed.data.get(item.key)
        if data is None:
            if item.required:
                raise InputError(f"the task computed no {item.key!r} output ({item.file})")
            continue
        path = output / (outputs.volume_file_name(item.file, output_format)
                          if item.kind in outputs.VOLUME_KINDS else item.file)
        if item.kind in ("labelmap", "segmentation"):
            labels = np.asarray(data)
            # a segmentation of overlapping regions comes as stacked 0/1 masks [k, j, i, n] (channel c: the c-th
            # segment in value order): the .seg.nrrd gets one label per voxel (a later segment wins), the DICOM
            # SEG every region whole
            stacked = item.kind == "segmentation" and labels.ndim == 4
            if labels.shape[:3] != reference.shape_kji or labels.ndim != (4 if stacked else 3) or (
                    stacked and labels.shape[3] != len(item.segments or {})):
                raise InputError(f"{item.file}: labels of shape {labels.shape}, the input grid is "
                                 f"{reference.shape_kji}" + (f" x {len(item.segments or {})} segments" if stacked
                                                             else ""))
            if item.kind == "labelmap":
                outputs.write_volume(path, Volume(outputs.check_labels(labels, item.segments or {}, item.file),
                                                  reference.geometry))
            else:
                flat = labels
                if stacked:
                    flat = np.zeros(reference.shape_kji, dtype=np.uint8)
                    for channel, value in enumerate(sorted(item.segments or {})):
                        flat[labels[..., channel] > 0] = value
                outputs.write_segmentation(path, flat, reference.geometry, item.segments or {})
                try:
                    seg = write_dicom_seg(labels, reference, item, study.source_files, output, model=model,
                                          model_name=str(result.get("model") or "MedDL"))
                except InputError as exc:
                    if not dicom_seg_optional:
                        raise
                    seg = None
                    result["warnings"] = merged_warnings(result.get("warnings"),
                                                         [f"{item.file}: no DICOM SEG written ({exc})"])
                if seg is not None:
                    # the task's first segmentation is `dicom_seg` in every task; further ones `<key>_dicom_seg`
                    first = next(s for s in spec if s.kind == "segmentation")
                    result["dicom_seg" if item is first else f"{item.result_key or item.key}_dicom_seg"] = seg.name
        elif item.kind in ("heatmap", "volume"):
            outputs.write_volume(path, data)
        elif item.kind == "table":
            outputs.write_table(path, data)
        if item.result_key:
            result[item.result_key] = path.name
    if computed.overlay is not None:
        _write_overlay(output / OVERLAY_PNG, spec, computed, reference)
        result["overlay"] = OVERLAY_PNG
    return result


def write_dicom_seg(labels: np.ndarray, reference: Volume, item: OutputFile, source_files: Sequence[str],
                    output: Path, model: LoadedModel | None = None, model_name: str = "MedDL") -> Path | None:
    """THE place where a segmentation output also becomes DICOM SEG, when the input came from DICOM.

    :func:`MedDLLib.dicomseg.write_dicom_seg` writes ``<name>.seg.dcm`` beside the ``.seg.nrrd``: the labels on
    the reference grid, referencing the source series' instances, segments coded in SNOMED CT, the algorithm
    named by ``model`` (name and version; else ``model_name``). Without DICOM source files (an NRRD/NIfTI
    input) nothing is written and None is returned.
    """
    if not source_files:
        return None
    from .dicomseg import write_dicom_seg as write

    path = output / (item.file[: -len(".seg.nrrd")] + ".seg.dcm")
    return write(np.asarray(labels), reference.geometry, item.segments or {}, list(source_files), path,
                 model_name=model.name if model is not None else model_name,
                 model_version=str(model.metadata.get("version", "")) if model is not None else "",
                 source_headers=reference.metadata.get("headers"))  # what the reader parsed, if it kept it


def _write_overlay(path: Path, spec: Sequence[OutputFile], computed: Computed, reference: Volume) -> Path:
    from .render import render_overlay

    overlay = computed.overlay
    assert overlay is not None
    heat = computed.data.get(overlay.heatmap) if overlay.heatmap else None
    labels = computed.data.get(overlay.labels) if overlay.labels else None
    colors = {}
    for item in spec:
        if item.key == overlay.labels and item.segments:
            colors = {value: rgb for value, (_, rgb) in item.segments.items()}
    return render_overlay(path, reference, overlay.k, heatmap=None if heat is None else np.asarray(heat.array),
                          labels=labels, colors=colors, window=overlay.window)


def checkpoints(progress: Progress | None, cancel: Cancel | None) -> Progress:
    """A ``(fraction, message)`` reporter that first polls ``cancel`` (raising :class:`Cancelled`)."""

    def checkpoint(fraction: float, message: str = "") -> None:
        if cancel is not None and cancel():
            raise Cancelled("cancelled by the user")
        if progress is not None:
            progress(fraction, message)

    return checkpoint


def run_nodes(task: PipelineTask, study: Study, model: Any, options: Any, reference_node: Any, *,
              progress: Progress | None = None, cancel: Cancel | None = None, device: Any = "cpu") -> tuple[
                  Computed, dict[str, Any]]:
    """The console path ``<Task>Logic.process(node, ...)``: compute on the study read from nodes, then add the
    declared outputs as new nodes beside ``reference_node`` from memory (:func:`MedDLLib.results.add_output_nodes`).

    Returns:
        ``(computed, nodes by OutputFile.key)``.
    """
    from .results import add_output_nodes

    loaded = load_model(task, model, device) if task.needs_model else None
    computed = compute(task, study, loaded, options, progress, cancel)
    added = add_output_nodes(reference_node, task.outputs, computed.data, computed.result)
    return computed, added


def study_from_nodes(named_nodes: Mapping[str, Any], reference: str | None = None) -> Study:
    """A :class:`Study` of copies of the volume nodes ``{name: node}`` (the nodes are only read); the reference
    is ``reference`` or the first."""
    from .nodes import volume_from_node

    volumes = {name: volume_from_node(node, labelmap=False) for name, node in named_nodes.items()}
    if not volumes:
        raise InputError("no input volume node given")
    return Study(volumes, reference or next(iter(volumes)))
