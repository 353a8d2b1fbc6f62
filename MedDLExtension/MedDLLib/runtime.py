"""A faster runtime for the prediction forwards: ONNX Runtime or OpenVINO, chosen per network by measurement.

The torch network stays the reference and the path for gradient Grad-CAM (a Grad-CAM that needs no gradient, as
glioma's evidence map, runs here as a named forward). :func:`runner_for` wraps a network of a model package (or one
of its methods, ``forward="evidence_map"``) in a :class:`Runner`, a callable
``inputs (B, C, *spatial) float32 -> first output float32``:

1. **Export once per package.** The network is exported to ONNX (batch axis dynamic, the other axes fixed) into
   ``<package>/runtime/`` (or ``<model cache>/.runtime/<weights sha256>/`` when the package folder is read-only),
   written atomically, and recorded in ``runtime.json`` with the SHA-256 of the weights it was made from and its
   own SHA-256: a changed package (other weights) or a damaged export is exported again, never used.
2. **Choose by measurement.** On the first input of a given shape, torch fp32 runs (its result is returned, so
   nothing is computed twice), then every available candidate runs the same input: ONNX Runtime fp32, OpenVINO
   fp32, and OpenVINO bf16 where the CPU has bf16 dot products (OpenVINO reports ``BF16``). A candidate counts
   only when its output agrees with torch fp32 (``agree``: :func:`probabilities_agree` or
   :func:`masks_agree`); the fastest agreeing one (torch included), counting once what a process pays to load and
   compile it (so a tiny network stays in torch), is kept in ``runtime.json`` for that shape, with the
   :func:`machine` it was measured on, so later runs and later processes on that machine go straight to it; a
   package copied to another machine (or run after a torch or runtime upgrade) measures again there, and a folder
   shared by several machines keeps each one's choice (:data:`MACHINES_KEPT`).
3. **Fall back to torch** when no package is given, when neither runtime package is installed, when the export
   fails, or when ``$MEDDL_RUNTIME=torch``. ``$MEDDL_RUNTIME`` may also force ``onnxruntime``, ``openvino`` or
   ``openvino-bf16`` (benchmarks; a forced candidate that does not agree still falls back to torch).

Nothing here is asserted about speed; ``meddl bench <task>`` measures it side by side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import torch

    from .models import ModelPackage

log = logging.getLogger(__name__)

#: Environment variable forcing a backend: ``auto`` (default), ``torch``, ``onnxruntime``, ``openvino``,
#: ``openvino-bf16``.
ENV = "MEDDL_RUNTIME"
CANDIDATES = ("onnxruntime", "openvino", "openvino-bf16")
RECORD = "runtime.json"
OPSET = 17
#: Machines whose choice ``runtime.json`` keeps for each choice key (the latest on top, the others under its
#: ``"others"``): a package folder shared by several machines (a network drive, a cluster's home directory) keeps
#: each one's choice.
MACHINES_KEPT = 8

Agreement = Callable[[np.ndarray, np.ndarray], bool]


# ---------------------------------------------------------------------------------------------- agreement
def probabilities_agree(activation: str = "sigmoid", tolerance: float = 1e-3) -> Agreement:
    """Agreement of raw outputs ``(B, n)``: probabilities (``sigmoid``, ``softmax``, or ``identity`` for raw
    outputs such as a log-hazard) within ``tolerance`` of the reference, everywhere."""

    def probs(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if activation == "sigmoid":
            return sigmoid(z)
        z = np.clip(z, -60.0, 60.0)
        if activation == "softmax":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return z

    def agree(reference: np.ndarray, candidate: np.ndarray) -> bool:
        return reference.shape == candidate.shape and bool(np.all(np.abs(probs(reference) - probs(candidate))
                                                                  <= tolerance))

    return agree


def masks_agree(threshold: float = 0.5, min_dice: float = 0.995, max_probability_error: float = 0.05) -> Agreement:
    """Agreement of segmentation logits ``(B, 1, H, W)``: Dice of the sigmoid masks at ``threshold`` at least
    ``min_dice`` (two empty masks agree) and no probability further than ``max_probability_error`` from the
    reference (so an input without a tumour cannot hide a disagreement that would show on one)."""

    def agree(reference: np.ndarray, candidate: np.ndarray) -> bool:
        if reference.shape != candidate.shape:
            return False
        p_ref, p_new = sigmoid(reference.astype(np.float64)), sigmoid(candidate.astype(np.float64))
        return dice(p_ref >= threshold, p_new >= threshold) >= min_dice and \
            float(np.abs(p_ref - p_new).max(initial=0.0)) <= max_probability_error

    return agree


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function of ``logits`` in their own float type, without overflow (``exp`` of at most 60 in
    magnitude: beyond it the result is 0 or 1 in float32 and float64 alike)."""
    z = np.clip(logits, -60.0, 60.0)
    one = z.dtype.type(1.0)
    return one / (one + np.exp(-z))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


# ---------------------------------------------------------------------------------------------- capabilities
def available_backends() -> list[str]:
    """The candidates whose runtime package imports here (bf16 only where OpenVINO sees bf16 on this CPU)."""
    return [name for name in CANDIDATES if backend_available(name)]


def backend_available(name: str) -> bool:
    """Whether candidate ``name`` can run here (imports only the package it needs)."""
    try:
        if name == "onnxruntime":
            import onnxruntime

            return bool(onnxruntime.__version__)
        core = openvino_core()  # ImportError without OpenVINO
        return name == "openvino" or "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # ImportError, or a CPU plugin that cannot start
        return False


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 dot products (AVX512-BF16 or AMX-BF16; read from /proc/cpuinfo on Linux)."""
    from .device import cpu_model

    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_model()["cpu_flags"]))


def machine() -> dict[str, Any]:
    """What a recorded choice was measured on and holds for: the CPU (model and kernel flags), the threads the
    forwards use, and the installed versions of torch and of the runtimes (from their package metadata: nothing
    is imported). Speed and agreement belong to these, not to the weights: a package chosen for on a 16-core
    workstation and copied to a laptop, or run after a runtime upgrade, is measured again there."""
    from .device import cpu_model

    return {**cpu_model(), "threads": _threads(), **machine_versions()}


def machine_versions() -> dict[str, str | None]:
    """The installed versions of torch, ONNX Runtime and OpenVINO (None: not installed)."""
    return {name: package_version(name) for name in ("torch", "onnxruntime", "openvino")}


_VERSIONS: dict[str, str] = {}


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` from its package metadata (nothing is imported; None: not
    installed, asked again next time, as Slicer may install it meanwhile)."""
    if name not in _VERSIONS:
        from importlib import metadata

        try:
            _VERSIONS[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    return _VERSIONS[name]


def _threads() -> int:
    from .device import cpu_threads

    return cpu_threads()


_OPENVINO_CORE: Any = None


def openvino_core() -> Any:
    """The process's one ``openvino.Core``: every OpenVINO model is compiled on it, and it is never freed.

    OpenVINO's CPU plugin gives a thread that compiles a model an alternate signal stack (for AMX state) and, when
    that plugin instance is destroyed, unmaps it and restores the stack it found. With one Core per session, freed
    in any order but the reverse, the thread was left with an unmapped (later reused) alternate stack, and the
    next Python signal handler, which runs on it, crashed the process: e.g. the SIGCHLD of an exiting DataLoader
    worker (``Testing/test_runtime_then_training.py``). Raises ImportError without OpenVINO.
    """
    global _OPENVINO_CORE
    import openvino  # every time: a package made unimportable after the Core was made is absent here too

    if _OPENVINO_CORE is None:
        _OPENVINO_CORE = openvino.Core()
    return _OPENVINO_CORE


def forced_backend() -> str:
    """``$MEDDL_RUNTIME`` normalised: ``"auto"`` (default) or the backend it forces (``"torch"``: plain torch fp32
    everywhere, Grad-CAM included)."""
    return os.environ.get(ENV, "auto").strip().lower() or "auto"


def describe(backend: str, device: Any = "cpu") -> str:
    """What runs a forward on ``backend``, with the installed version: ``"torch 2.13.0+cpu fp32"``,
    ``"ONNX Runtime 1.32.0 fp32"``, ``"OpenVINO 2026.4.1 bf16"`` (for a study's provenance); a torch forward on
    another ``device`` than the CPU says it: ``"torch 2.13.0 fp32 on cuda:0"``."""
    if backend.startswith("torch"):  # "torch", or Grad-CAM's "torch-bf16" (bf16 autocast)
        where = "" if str(device) == "cpu" else f" on {device}"
        return f"torch {package_version('torch')} {'bf16 autocast' if backend.endswith('bf16') else 'fp32'}{where}"
    if backend == "onnxruntime":
        return f"ONNX Runtime {package_version('onnxruntime')} fp32"
    return f"OpenVINO {package_version('openvino')} {'bf16' if backend.endswith('bf16') else 'fp32'}"


# ---------------------------------------------------------------------------------------------- sessions
class _Session:
    """One compiled candidate for one input shape: ``run(x) -> first output``; ``native``: the runtime's own
    session (ONNX Runtime ``InferenceSession``, OpenVINO ``CompiledModel``)."""

    def __init__(self, backend: str, onnx_file: Path, shape: tuple[int, ...]) -> None:
        self.backend = backend
        threads = _threads()
        if backend == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # No busy-waiting after a run: ONNX Runtime's spinning threads held a core and doubled the next
            # OpenVINO forward (the choice times the candidates one after another; on 2 cores, anything that
            # follows) for 0.3-0.5 ms more per ONNX Runtime forward.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = self.native = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self.run = lambda x: session.run(None, {name: x})[0]
        else:
            import openvino as ov

            core = openvino_core()
            model = core.read_model(str(onnx_file))
            model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})  # static shape: the fastest kernels
            config = {"INFERENCE_PRECISION_HINT": "bf16" if backend == "openvino-bf16" else "f32",
                      "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
            compiled = self.native = core.compile_model(model, "CPU", config)
            request = compiled.create_infer_request()
            self.run = lambda x: np.array(request.infer([x])[0], copy=True)


@dataclasses.dataclass
class Runner:
    """The prediction forward of one network: ``runner(x)`` with ``x (B, C, *spatial)`` float32 returns the
    network's first output as float32 (same values as ``network(x)`` within the agreement).

    Attributes:
        network: the torch network (eval mode): the reference, the fallback, and what Grad-CAM uses; built by
            ``build`` on first use when not given (a recorded runtime choice runs without it, and without torch).
        forward: the network's method this runner runs (``"forward"``, or another method taking and returning
            one tensor, e.g. glioma's ``"evidence_map"``): its exports and choices are kept apart by that name.
        folder: where the export and ``runtime.json`` live (None: torch only).
        weights_sha256: the package's weights checksum the export belongs to.
        agree: agreement test of a candidate's output with torch fp32's.
        chosen: backend chosen per input shape (``"torch"`` or a :data:`CANDIDATES` entry).
        timings: seconds per candidate measured when choosing (per shape), for benchmarks.
        ran: what produced the outputs since it was last cleared, per choice key (and Grad-CAM's, see
            :func:`MedDLLib.gradcam.compute_gradcam`): a :func:`describe` text, e.g. ``"OpenVINO 2026.4.1 fp32"``
            (a study's ``result.json`` ``runtime``: :meth:`MedDLLib.pipeline.LoadedModel.forwards_run`).
        build: ``() -> network`` for a runner made without its network (:func:`deferred_runner`).
        network_spec: the package's ``metadata["network"]`` (name and arguments): an export records it, and one
            made for another network is not used.
        name: the package's name, which the announcement names (two models of one shape in one Slicer session
            are each said).
        min_torch_seconds: a torch forward (times the caller's calls) faster than this stays in torch without an
            export or a candidate tried (no runtime's start-up, loading and compiling an export, could be won
            back); the choice is recorded all the same. 0: every shape is measured.
    """

    network: Any
    forward: str = "forward"
    folder: Path | None = None
    weights_sha256: str = ""
    agree: Agreement = dataclasses.field(default_factory=probabilities_agree)
    chosen: dict[str, str] = dataclasses.field(default_factory=dict)
    timings: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    ran: dict[str, str] = dataclasses.field(default_factory=dict)
    build: Callable[[], Any] | None = dataclasses.field(default=None, repr=False)
    network_spec: Any = None
    name: str = ""
    min_torch_seconds: float = 0.0
    _sessions: dict[tuple[str, tuple[int, ...]], _Session] = dataclasses.field(default_factory=dict, repr=False)
    _module: Any = dataclasses.field(default=None, repr=False)
    _announced: set[str] = dataclasses.field(default_factory=set, repr=False)
    _forced_tried: set[tuple[str, str]] = dataclasses.field(default_factory=set, repr=False)

    # ------------------------------------------------------------------ calling
    def __call__(self, x: np.ndarray, calls: int = 1) -> np.ndarray:
        """The forward of ``x (B, C, *spatial)``. ``calls``: how many forwards of this shape the caller is about
        to run (a study's batches); when this call measures the choice, each candidate's one-off start-up is
        weighed against that many forwards. The first call of a shape in a process says once what runs it and why
        (:func:`MedDLLib.device.announce`: Slicer's log, else stderr); :attr:`ran` keeps what answered."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        key = self._key(x.shape)
        forced = forced_backend()
        out, why = None, None  # why: the announcement's reason (none for a runner with nothing to choose from)
        if forced == "torch" or self.folder is None:
            backend = "torch"
        else:
            backend = self.chosen.get(key) or self._recorded(key)
            if key not in self._announced:  # the first call of this shape here: say once what runs it
                why = "chosen by an earlier run on this machine" if forced == "auto" else f"forced by ${ENV}"
            if forced != "auto" and backend != forced and (key, forced) not in self._forced_tried:
                backend = None  # a forced backend is measured (and checked) like a choice, once
        if backend is None:  # measured now: torch's output (the reference) answers this call
            out = self._choose(x, key, only=None if forced == "auto" else forced, calls=calls)
            backend, why = "torch", self._measured(key)
            self._forced_tried.add((key, forced))
        elif backend != "torch":
            try:
                out = self._session(backend, x.shape).run(x)
                if why is not None:  # the first call of this shape here
                    self._follow_shape(key, x.shape)
            except Exception as exc:  # a runtime that cannot run this input: torch, and say why once
                log.warning("%s failed (%s); using torch", backend, exc)
                self.chosen[key], why = "torch", f"{describe(backend)} failed here"
                backend = "torch"
        if out is None:
            out = self.torch_forward(x)
        self.note_ran(key, describe(backend, _device(self.torch_network()) if backend == "torch" else "cpu"))
        if why is not None:
            from .device import announce

            self._announced.add(key)
            chosen = self.chosen.get(key, backend)
            model = f"{self.name} " if self.name else ""
            announce(f"MedDL runtime: {model}{self.forward} of {_shape_key(x.shape)} inputs on {describe(chosen)} "
                     f"[{why}]")
        return out

    def note_ran(self, key: str, what: str) -> None:
        """Add ``what`` (a :func:`describe` text) to what produced outputs for ``key`` (:attr:`ran`)."""
        done = self.ran.get(key)
        if done is None:
            self.ran[key] = what
        elif what not in done.split(", "):
            self.ran[key] = f"{done}, {what}"

    def _follow_shape(self, key: str, shape: tuple[int, ...]) -> None:
        """Record ``shape`` (batch included) for this machine's choice ``key`` when it differs from the recorded
        one, so that a later process compiles ahead (:meth:`warm`) the session it will use, not one it will not
        (after a change of batch size, or a study shorter than a batch)."""
        from .io import atomic_write_json

        record = self._read_record()
        entry = _this_machines(record.get("choices", {}).get(key))
        wanted = [int(s) for s in shape]
        if entry is None or entry.get("shape") == wanted:
            return
        entry["shape"] = wanted
        try:
            atomic_write_json(self.folder / RECORD, record)
        except OSError as exc:
            log.info("could not record the input shape in %s (%s)", self.folder, exc)

    def _measured(self, key: str) -> str:
        """How the choice for ``key`` was just made (for the announcement): the chosen and torch's seconds."""
        times, chosen = self.timings.get(key, {}), self.chosen.get(key, "torch")
        text = "measured now"
        if chosen != "torch" and chosen in times:
            text += f": {times[chosen]:.3g} s a forward against torch's {times['torch']:.3g} s"
        return text + "; kept for this package on this machine"

    def torch_forward(self, x: np.ndarray) -> np.ndarray:
        """The torch fp32 forward (the reference)."""
        import torch

        network = self.torch_network()
        device = _device(network)
        network.eval()
        with torch.no_grad():
            return self.module(torch.from_numpy(x).to(device)).float().cpu().numpy()

    def torch_network(self) -> Any:
        """The torch network (built now by :attr:`build` when the runner was made without it)."""
        if self.network is None:
            if self.build is None:
                raise RuntimeError("a runner without its network and without a way to build it")
            self.network = self.build()
        return self.network

    @property
    def module(self) -> Any:
        """The torch module computing :attr:`forward` (the network itself for ``"forward"``)."""
        if self.forward == "forward":
            return self.torch_network()
        if self._module is None:
            self._module = _method_module(self.torch_network(), self.forward)
        return self._module

    def choice(self, shape: tuple[int, ...]) -> str | None:
        """The backend chosen (in this process, or recorded on this machine) for inputs of ``shape``; None when
        the next call of that shape measures it. ``$MEDDL_RUNTIME=torch`` or no package: ``"torch"``."""
        if forced_backend() == "torch" or self.folder is None:
            return "torch"
        key = self._key(shape)
        return self.chosen.get(key) or self._recorded(key)

    def forget(self, shape: tuple[int, ...]) -> None:
        """Drop what :attr:`ran` says of inputs of ``shape`` (for a caller that used another path's output)."""
        self.ran.pop(self._key(shape), None)

    def _key(self, shape: tuple[int, ...]) -> str:
        """The choice key of an input shape: ``"9x64x64"``, or ``"evidence_map:4x64x256x256"``."""
        return _shape_key(shape) if self.forward == "forward" else f"{self.forward}:{_shape_key(shape)}"

    @property
    def backend(self) -> str:
        """The backend of the last chosen shape (``torch`` before any choice)."""
        return next(reversed(self.chosen.values()), "torch") if self.chosen else "torch"

    # ------------------------------------------------------------------ choosing
    def _choose(self, x: np.ndarray, key: str, only: str | None, calls: int = 1) -> np.ndarray:
        """Time torch fp32 and every installed candidate on ``x``; record and return torch's output (the reference).

        A runtime must win over the caller's ``calls`` forwards including its own start-up (tiny networks stay in
        torch). Torch is timed twice first (cold, then warm as the candidates are), before any candidate's threads
        or buffers exist; only the best candidate so far keeps its session (ONNX Runtime's buffers for LGG's
        16-slice batches were about 0.8 GB), so a first run holds at most two sessions at once."""
        calls = max(1, int(calls))
        start = time.perf_counter()
        reference = self.torch_forward(x)
        times = {"torch": time.perf_counter() - start}
        setups: dict[str, float] = {}

        def time_torch_warm() -> None:  # as the candidates are timed
            start = time.perf_counter()
            self.torch_forward(x)
            times["torch"] = min(times["torch"], time.perf_counter() - start)

        floor = only is None and self.min_torch_seconds > 0  # see min_torch_seconds
        if floor:
            time_torch_warm()  # the cold forward paid torch's one-off set-up
            if calls * times["torch"] < self.min_torch_seconds:
                self.chosen[key], self.timings[key] = "torch", times
                self._record(key, "torch", times, x.shape, calls)
                return reference
        onnx_file = self._export(x.shape)
        names = [n for n in available_backends() if only in (None, n)] if onnx_file is not None else []
        if names and not floor:
            time_torch_warm()

        def cost(name: str) -> float:
            return calls * times[name] + setups.get(name, 0.0)

        best = "torch"
        for name in names:
            try:
                start = time.perf_counter()
                out = self._session(name, x.shape).run(x)  # warm-up and the agreement check
                # what a later process pays once: loading and compiling the export, and its first run
                setup = time.perf_counter() - start
                if self.agree(reference, out):
                    start = time.perf_counter()
                    self._session(name, x.shape).run(x)
                    times[name], setups[name] = time.perf_counter() - start, setup
                else:
                    log.info("%s does not agree with torch fp32 on %s; not used", name, key)
            except Exception as exc:
                log.warning("%s could not run the network (%s); not used", name, exc)
            if name in times and (name == only or cost(name) < cost(best)):
                best, beaten = name, best
            else:
                beaten = name
            self._sessions.pop((beaten, tuple(x.shape)), None)  # its buffers go now
        times.update({f"{n}_setup": s for n, s in setups.items()})
        self.chosen[key], self.timings[key] = best, times
        self._record(key, best, times, x.shape, calls)
        return reference

    def warm(self, stop: Callable[[], bool] | None = None) -> list[str]:
        """Load and compile now the sessions of this runner's recorded choices (for the input shapes recorded
        with them), so that a process waiting for something else (the study being read) pays for them there.
        ``stop()`` true ends it before the next session. A session that fails is left to the first call (which
        falls back to torch and says why). Returns the keys warmed."""
        forced = forced_backend()
        if forced == "torch" or self.folder is None:
            return []
        warmed = []
        for key, entry in self.recorded_choices().items():
            forward, _, _ = key.rpartition(":")
            if (forward or "forward") != self.forward or not entry.get("shape") or (stop is not None and stop()):
                continue
            try:
                backend = self.chosen.get(key) or self._recorded(key)
                if backend not in (None, "torch") and forced in ("auto", backend):
                    self._session(backend, tuple(int(s) for s in entry["shape"]))
                    warmed.append(key)
            except Exception as exc:  # noqa: BLE001 - the first call reports it
                log.info("could not prepare %s for %s ahead (%s)", entry.get("backend"), key, exc)
        return warmed

    def _session(self, backend: str, shape: tuple[int, ...]) -> _Session:
        found = self._sessions.get((backend, tuple(shape)))
        if found is None:
            onnx_file = self._export(shape)
            if onnx_file is None:
                raise RuntimeError("no export")
            found = self._sessions[(backend, tuple(shape))] = _Session(backend, onnx_file, tuple(shape))
        return found

    # ------------------------------------------------------------------ the export and its record
    def _read_record(self) -> dict[str, Any]:
        try:
            record = json.loads((self.folder / RECORD).read_text())
        except (OSError, ValueError, TypeError):
            return {}
        if record.get("weights_sha256") != self.weights_sha256 or record.get("network") != self.network_spec:
            return {}  # made from other weights or for another network: exported again
        return record

    def _recorded(self, key: str) -> str | None:
        backend = self.recorded_choices().get(key, {}).get("backend")
        if backend == "torch":  # nothing to import or load
            self.chosen[key] = backend
            return backend
        if backend is None or not backend_available(backend):
            return None
        if backend != "torch" and self._export(_shape_from_key(key.rpartition(":")[2])) is None:
            return None
        self.chosen[key] = backend
        return backend

    def _record(self, key: str, backend: str, times: dict[str, float], shape: tuple[int, ...],
                calls: int = 1) -> None:
        from .io import atomic_write_json

        record = self._read_record() or (self._new_record() if backend == "torch" else {})
        if not record:
            return  # no verified export to attach a runtime's choice to
        choices = record.setdefault("choices", {})
        choices[key] = _with_this_machines(choices.get(key), {"backend": backend, "seconds": times,
                                                               "shape": [int(s) for s in shape], "calls": calls})
        try:
            atomic_write_json(self.folder / RECORD, record)
        except OSError as exc:
            log.info("could not record the runtime choice in %s (%s)", self.folder, exc)

    def gradcam_choice(self, key: str) -> dict[str, Any] | None:
        """The recorded Grad-CAM precision choice for ``key`` (None: not measured for these weights on this
        :func:`machine`)."""
        if self.folder is None:
            return None
        return _this_machines(self._read_record().get("gradcam", {}).get(key))

    def record_gradcam_choice(self, key: str, choice: dict[str, Any]) -> None:
        """Keep a Grad-CAM precision choice beside the export (for these weights)."""
        from .io import atomic_write_json

        if self.folder is None:
            return
        record = self._read_record() or self._new_record()
        choices = record.setdefault("gradcam", {})
        choices[key] = _with_this_machines(choices.get(key), choice)
        try:
            atomic_write_json(self.folder / RECORD, record)
        except OSError as exc:
            log.info("could not record the Grad-CAM choice in %s (%s)", self.folder, exc)

    def _export(self, shape: tuple[int, ...]) -> Path | None:
        """The verified ONNX export for inputs of ``shape`` (any batch), exported now if missing or stale."""
        name = f"{'model' if self.forward == 'forward' else self.forward}-{_shape_key(shape)}.onnx"
        record = self._read_record()
        entry = record.get("exports", {}).get(name)
        onnx_file = self.folder / name
        if entry and onnx_file.is_file() and _sha256(onnx_file) == entry.get("sha256"):
            return onnx_file
        try:
            self._write_export(onnx_file, shape)
        except Exception as exc:  # unexportable network, read-only folder, no onnx: torch
            log.warning("could not export the network to ONNX (%s); using torch", exc)
            return None
        record = self._read_record() or self._new_record()
        record.setdefault("exports", {})[name] = {"sha256": _sha256(onnx_file), "opset": OPSET}
        from .io import atomic_write_json

        atomic_write_json(self.folder / RECORD, record)
        return onnx_file

    def recorded_choices(self) -> dict[str, Any]:
        """The choices recorded beside the export for these weights and this network on this :func:`machine`,
        every forward's (choice key -> ``{"backend", "seconds", "shape", "calls", "machine"}``); empty without a
        record. A choice measured elsewhere is measured again here (and kept beside the other machine's)."""
        if self.folder is None:
            return {}
        found = {key: _this_machines(entries) for key, entries in self._read_record().get("choices", {}).items()}
        return {key: entry for key, entry in found.items() if entry is not None}

    def _new_record(self) -> dict[str, Any]:
        return {"weights_sha256": self.weights_sha256, "network": self.network_spec, "format": "meddl-runtime/1"}

    def covers(self) -> bool:
        """Whether an earlier run exported these weights for this network and recorded a choice (on any machine):
        the weights were then loaded (weights-only) and fitted strictly, so a prediction may run on the export
        without reading them again."""
        return bool(self._read_record().get("choices")) if self.folder is not None else False

    def _write_export(self, onnx_file: Path, shape: tuple[int, ...]) -> None:
        import warnings

        import torch

        from .io import atomic_path

        onnx_file.parent.mkdir(parents=True, exist_ok=True)
        example = torch.zeros((1,) + tuple(shape[1:]), dtype=torch.float32,
                              device=_device(self.torch_network()))
        with atomic_path(onnx_file, ".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(self.module, (example,), str(tmp), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)


def _machine_entries(recorded: Any) -> list[dict[str, Any]]:
    """The entries recorded for one choice key, one per machine, the most recent first: the key's own entry (the
    latest machine's, where an earlier MedDL reads it) and the other machines' under its ``"others"``."""
    if not isinstance(recorded, dict):
        return []
    return [recorded, *(other for other in recorded.get("others", []) if isinstance(other, dict))]


def _this_machines(recorded: Any) -> dict[str, Any] | None:
    """This :func:`machine`'s entry among those recorded for a choice key, as stored (None: not measured here)."""
    here = machine()
    return next((entry for entry in _machine_entries(recorded) if entry.get("machine") == here), None)


def _with_this_machines(recorded: Any, entry: dict[str, Any]) -> dict[str, Any]:
    """A choice key's record with ``entry`` as this machine's, on top (an earlier MedDL reads that one and ignores
    ``"others"``), and the other machines' entries under ``"others"`` (at most :data:`MACHINES_KEPT` in all)."""
    here = machine()
    others = [{k: v for k, v in other.items() if k != "others"} for other in _machine_entries(recorded)
              if other.get("machine") != here][:MACHINES_KEPT - 1]
    return {**entry, "machine": here, **({"others": others} if others else {})}


def _method_module(network: Any, name: str) -> "torch.nn.Module":
    """A torch module whose forward is ``network.<name>(x)`` (what a named :class:`Runner` exports)."""
    import torch

    class Method(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: Any) -> Any:
            return getattr(self.network, name)(x)

    return Method()


def _device(network: Any) -> Any:
    """The device of the network's first parameter or buffer (CPU for a network without any)."""
    import torch

    for tensor in (*network.parameters(), *network.buffers()):
        return tensor.device
    return torch.device("cpu")


def _shape_key(shape: tuple[int, ...]) -> str:
    """``C x spatial`` of an input shape (the batch is free): ``"9x64x64"``."""
    return "x".join(str(int(s)) for s in shape[1:])


def _shape_from_key(key: str) -> tuple[int, ...]:
    return (1,) + tuple(int(s) for s in key.split("x"))


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------------- entry points
_RUNNER_ATTRIBUTE = "_meddl_runner"  # the runner lives on its network (a dict keyed by it would keep it alive)
_PACKAGES: "weakref.WeakKeyDictionary[Any, ModelPackage]" = weakref.WeakKeyDictionary()


def attach(network: "torch.nn.Module", package: "ModelPackage") -> None:
    """Remember that ``network`` carries ``package``'s weights, so :func:`runner_for` finds its export folder
    when a predict function is given the network alone."""
    _PACKAGES[network] = package


def export_folder(package: "ModelPackage") -> Path:
    """Where the runtime exports of ``package`` live: ``<package>/runtime`` when writable, else
    ``<model cache>/.runtime/<weights sha256>``."""
    folder = Path(package.path) / "runtime"
    try:
        folder.mkdir(exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    from .models import cache_dir

    return cache_dir() / ".runtime" / str(package.metadata["sha256"])


def runner_for(network: "torch.nn.Module | Runner", package: "ModelPackage | None" = None, *,
               agree: Agreement | None = None, forward: str = "forward", module: Any = None) -> Runner:
    """The :class:`Runner` of ``network`` (one per network object and ``forward``, reused by every call).

    Args:
        network: a torch network in eval mode, or a Runner (returned as it is).
        forward: the network's method to run (default its ``forward``; e.g. ``"evidence_map"``), or the name of
            the part of it that ``module`` computes (its exports and choices are kept under that name).
        module: a torch module computing a part of ``network`` with its parameters (e.g. Grad-CAM's trunk,
            :func:`MedDLLib.gradcam.split_at`); used when the runner is made.
        package: the model package whose weights ``network`` carries (None: the one given to :func:`attach`;
            none at all: a torch-only runner).
        agree: agreement test for choosing a runtime (default: sigmoid probabilities within 1e-3).
    """
    if isinstance(network, Runner):
        if agree is not None:
            network.agree = agree
        return network
    if _device(network).type != "cpu":
        package = None  # the runtimes here are CPU ones: a GPU network stays in torch
    runners = network.__dict__.setdefault(_RUNNER_ATTRIBUTE, {})
    runner = runners.get(forward)
    package = package if package is not None else _PACKAGES.get(network)
    if runner is None or (package is not None and runner.folder is None):
        runner = runners[forward] = _new_runner(network, package, agree, forward)
    elif agree is not None:
        runner.agree = agree
    if module is not None:  # also for a runner made before, to compile a recorded session (LoadedModel.warm)
        runner._module = module
    return runner


def deferred_runner(build: Callable[[], "torch.nn.Module"], package: "ModelPackage", runners: dict[str, Runner], *,
                    agree: Agreement | None = None, forward: str = "forward") -> Runner:
    """The CPU :class:`Runner` of ``package``'s network before that network exists: ``build()`` makes it when a
    torch forward or an export needs it (a recorded runtime choice needs neither, nor torch). ``runners``
    (``forward`` -> runner) keeps one runner per forward; give the built network the same dict
    (:func:`share_runners`) so :func:`runner_for` finds them."""
    runner = runners.get(forward)
    if runner is None:
        runner = runners[forward] = _new_runner(None, package, agree, forward)
        runner.build = build
    elif agree is not None:
        runner.agree = agree
    return runner


def share_runners(network: "torch.nn.Module", package: "ModelPackage", runners: dict[str, Runner]) -> None:
    """Give ``network`` (just built for ``package``) the runners made before it existed (:func:`deferred_runner`)
    and remember its package (:func:`attach`)."""
    attach(network, package)
    for runner in runners.values():
        if runner.network is None:
            runner.network = network
    network.__dict__[_RUNNER_ATTRIBUTE] = runners


def _new_runner(network: Any, package: "ModelPackage | None", agree: Agreement | None, forward: str) -> Runner:
    folder = export_folder(package) if package is not None else None
    sha = str(package.metadata.get("sha256", "")) if package is not None else ""
    spec = json.loads(json.dumps(package.metadata.get("network"))) if package is not None else None  # as recorded
    return Runner(network, forward, folder, sha, agree or probabilities_agree(), network_spec=spec,
                  name=str(package.name) if package is not None else "")


def forwards_run(network: "torch.nn.Module | Mapping[str, Runner]", clear: bool = False) -> str:
    """What ran the forwards of ``network`` (a torch network, or its runners: forward name -> :class:`Runner`)
    since the last ``clear``: one ``"; "``-separated entry per forward and input shape (and Grad-CAM layer), with
    versions and precision, e.g. ``"forward of 3x256x256 inputs: OpenVINO 2026.4.1 fp32; Grad-CAM layer3: torch
    2.13.0+cpu fp32"`` (:attr:`Runner.ran`); empty when nothing ran. ``clear``: forget it afterwards (one
    study's worth at a time). A study's ``result.json`` and ``meddl evaluate``'s metrics say it as ``runtime``."""
    runners = network if isinstance(network, Mapping) else network.__dict__.get(_RUNNER_ATTRIBUTE, {})
    entries = []
    for runner in runners.values():
        for key, what in runner.ran.items():
            forward, _, shape = key.rpartition(":")
            label = key if key.startswith("Grad-CAM") else f"{forward or 'forward'} of {shape} inputs"
            entries.append(f"{label}: {what}")
        if clear:
            runner.ran.clear()
    return "; ".join(entries)


def torch_network(network: "torch.nn.Module | Runner") -> "torch.nn.Module":
    """The torch network behind ``network`` (for Grad-CAM and training code)."""
    return network.torch_network() if isinstance(network, Runner) else network
