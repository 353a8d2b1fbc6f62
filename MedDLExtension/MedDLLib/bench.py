"""Benchmarks: MedDL's DICOM read against SimpleITK's ImageSeriesReader, side by side in one run.

``meddl bench dicom --input DIR --out F.json`` calls :func:`bench_dicom_read`; :func:`write_json` and
:func:`format_table` write and show its result. Both readers run alternately in the same process, ``repeats``
times each after one warm-up read each (file cache and imports warm for both), and the medians are compared.
Speed is measured here, never asserted in tests.

The task benches (``meddl bench <task>``) share :func:`end_to_end_rows` (cold runs), :func:`runtime_rows` (one
forward, torch against the chosen runtime, with its achieved GFLOP/s as a share of :func:`machine_ceiling`) and
:func:`task_table`.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


def _time(func: Callable[[], Any]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def bench_dicom_read(folder: str | os.PathLike, repeats: int = 7, workers: int | None = None) -> dict[str, Any]:
    """Time reading the one DICOM series in ``folder``: MedDL (find_series + read_series, what ``meddl
    convert`` does before writing) against SimpleITK (GetGDCMSeriesFileNames + ImageSeriesReader.Execute).

    Args:
        folder: a folder holding one DICOM series (in it or in a subfolder).
        repeats: timed runs of each reader (medians reported).
        workers: passed to MedDL's reader (None: its automatic choice).

    Returns:
        JSON-ready dict: seconds per run of both readers, their medians, ``ratio`` (MedDL median / SimpleITK
        median: below 1 means MedDL is faster), the volume read, the machine, and ``meddl_resampled``: why MedDL
        resampled the stack onto a regular grid (``"gantry tilt"``, ``"uneven gaps"``; empty when it did not),
        work SimpleITK's reader does not do (its voxels and geometry then differ by design).
    """
    import SimpleITK as sitk

    from . import dicom

    folder = Path(folder)
    if repeats < 1:
        raise ValueError("repeats must be at least 1")

    def meddl_read():
        series = dicom.select_series(dicom.find_series(folder, workers=workers))
        return series, dicom.read_series(series, workers=workers)

    series, volume = meddl_read()  # warm-up, and the checks below
    # a tilted or unevenly spaced stack: MedDL resamples it (as `meddl convert` does), SimpleITK stacks it as it is
    resampled = series.layout.irregularity
    # SimpleITK reads the same series from the folder that holds its files (MedDL searches below ``folder``).
    series_folders = {str(Path(f).parent) for f in volume.metadata.get("files", [])}
    if len(series_folders) != 1:
        raise ValueError(f"{folder}: the series' files lie in {len(series_folders)} folders; SimpleITK's "
                         f"ImageSeriesReader reads one folder, so the two readers cannot be compared")
    series_folder, series_uid = series_folders.pop(), str(volume.metadata.get("series_uid", ""))

    def sitk_read():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(series_folder, series_uid))
        return reader.Execute()

    image = sitk_read()
    same_voxels = bool(np.array_equal(volume.array, sitk.GetArrayFromImage(image)))
    same_geometry = bool(
        np.allclose(volume.geometry.spacing_mm, image.GetSpacing(), atol=1e-4)
        and np.allclose(volume.geometry.origin_lps_mm, image.GetOrigin(), atol=1e-4)
        and np.allclose(volume.geometry.direction.ravel(), image.GetDirection(), atol=1e-6)
    )
    meddl_s: list[float] = []
    sitk_s: list[float] = []
    for _ in range(repeats):  # alternate so that both see the same machine load
        meddl_s.append(_time(meddl_read))
        sitk_s.append(_time(sitk_read))
    meddl_median = statistics.median(meddl_s)
    sitk_median = statistics.median(sitk_s)
    return {
        "benchmark": "dicom_read",
        "folder": str(folder),
        "files": len(volume.metadata.get("files", [])),
        "shape_kji": list(volume.shape_kji),
        "dtype": str(volume.array.dtype),
        "repeats": repeats,
        "meddl_seconds": meddl_s,
        "simpleitk_seconds": sitk_s,
        "meddl_median_s": meddl_median,
        "simpleitk_median_s": sitk_median,
        "ratio_meddl_over_simpleitk": meddl_median / sitk_median,
        "same_voxels_as_simpleitk": same_voxels,
        "same_geometry_as_simpleitk": same_geometry,
        "meddl_resampled": resampled,
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "simpleitk": sitk.Version_VersionString(),
            "pydicom": __import__("pydicom").__version__,
        },
    }


def run_meddl_child(arguments: list[str], log: str | os.PathLike, task_entry: str,
                    library_folder: str | os.PathLike, env: dict[str, str] | None = None) -> tuple[int, float, float]:
    """Run ``python -m MedDLLib.cli ARGUMENTS`` in a fresh child, as a user runs ``meddl``.

    Args:
        arguments: the ``meddl`` command line, e.g. ``["infer", "ich", "--input", ...]``.
        log: file receiving the child's stdout and stderr.
        task_entry: ``module:attribute`` of the task (added to ``$MEDDL_EXTRA_TASKS``).
        library_folder: the folder holding the task's package (put first on the child's ``PYTHONPATH``).
        env: environment variables set in the child (e.g. ``{"MEDDL_RUNTIME": "torch"}``).
    Returns:
        ``(exit status, wall seconds, peak resident memory of that child alone in MB)``: the child's own
        high-water mark (``VmHWM`` of ``/proc/self/status``, read at its exit), not ``ru_maxrss``: Linux keeps the
        resident size a child had before ``exec`` in its ``ru_maxrss``, and a forked child starts with its
        parent's, so a benchmark holding a 300-slice CT in memory read its children's peak as its own
        (``ru_maxrss`` of :func:`os.wait4` where ``/proc`` is missing).
    """
    import subprocess
    import sys
    import tempfile

    overrides = dict(env or {})
    env = dict(os.environ)
    env.update(overrides)
    extra = [e for e in env.get("MEDDL_EXTRA_TASKS", "").split(",") if e]
    env["MEDDL_EXTRA_TASKS"] = ",".join(extra + [task_entry])
    env["PYTHONPATH"] = os.pathsep.join([str(library_folder)] +
                                        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with tempfile.TemporaryDirectory(prefix="meddl-bench-peak-") as tmp, open(log, "w") as out:
        peak_file = Path(tmp) / "peak_kb"
        env[_PEAK_ENV] = str(peak_file)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, *arguments], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        try:
            peak_mb = int(peak_file.read_text()) / 1024.0
        except (OSError, ValueError):
            peak_mb = usage.ru_maxrss / 1024.0
    return os.waitstatus_to_exitcode(status), seconds, peak_mb


_PEAK_ENV = "MEDDL_BENCH_PEAK_FILE"
#: The benchmark child: ``meddl ARGUMENTS`` (``python -m MedDLLib.cli``), writing its own ``VmHWM`` (kB) at exit.
_CHILD = f"""
import atexit, os, runpy, sys

def _peak():
    try:
        with open("/proc/self/status") as f:
            kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        with open(os.environ["{_PEAK_ENV}"], "w") as f:
            f.write(kb)
    except (OSError, StopIteration, KeyError):
        pass

atexit.register(_peak)
sys.argv[0] = "meddl"
runpy.run_module("MedDLLib.cli", run_name="__main__", alter_sys=True)
"""


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a benchmark result as JSON, atomically (:func:`MedDLLib.io.atomic_write_json`)."""
    from .io import atomic_write_json

    return atomic_write_json(path, result)


def format_table(result: dict[str, Any]) -> str:
    """A small text table of :func:`bench_dicom_read`'s result."""
    rows = [
        ("reader", "median (ms)", "min (ms)", "max (ms)"),
        ("MedDL find_series+read_series", *_ms(result["meddl_seconds"])),
        ("SimpleITK ImageSeriesReader", *_ms(result["simpleitk_seconds"])),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    k, j, i = result["shape_kji"]
    lines.append(
        f"{result['files']} files, {i}x{j}x{k} {result['dtype']}, {result['repeats']} runs each: MedDL/SimpleITK = "
        f"{result['ratio_meddl_over_simpleitk']:.2f} (same voxels: {result['same_voxels_as_simpleitk']}, "
        f"same geometry: {result['same_geometry_as_simpleitk']})"
    )
    if result.get("meddl_resampled"):
        lines.append(f"MedDL's time includes resampling this stack ({result['meddl_resampled']}) onto a regular "
                     "orthogonal grid, as meddl convert does; SimpleITK stacks the slices as they are: unlike work, "
                     "and voxels and geometry that differ by design.")
    return "\n".join(lines)


def _ms(seconds: list[float]) -> tuple[str, str, str]:
    return (f"{1000 * statistics.median(seconds):.1f}", f"{1000 * min(seconds):.1f}", f"{1000 * max(seconds):.1f}")


# ---------------------------------------------------------------------------------------------- task benches
def caveat() -> str:
    """What every task bench's figures carry: the machine's load when the bench started (the 1-minute load
    average against the cores; over half a core busy counts as other work running) and how to read them."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # not on this platform
        return "Machine load unknown: absolute seconds may be noisy; read the ratios, measured side by side."
    state = "other work running" if load > 0.5 else "idle"
    return (f"Load average {load:.2f} on {cores} cores when the bench started ({state}): seconds drift between "
            "series of runs; read the ratios, measured side by side in alternating runs.")


def machine() -> dict[str, Any]:
    """The machine a bench ran on: the CPUs, Python and platform, and :func:`MedDLLib.runtime.machine` (CPU model and
    kernel flags, the forwards' threads, torch and runtime versions: what a runtime choice holds for)."""
    from .runtime import machine as measured_on

    return {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            **measured_on()}


def end_to_end_rows(arguments: list[str], output: str | os.PathLike, task_entry: str,
                    library_folder: str | os.PathLike, *, runs: int = 3) -> dict[str, Any]:
    """Cold ``meddl ARGUMENTS`` runs (a fresh child each: start-up, imports, reading, model, outputs), torch eager
    against the chosen runtime (``$MEDDL_RUNTIME`` torch / auto), alternating, ``runs`` pairs.

    The first run (auto) exports the network and chooses the runtime once per package; it is its own row
    (``first_run``). Every run writes into a fresh ``output`` folder (removed before each run).

    Returns:
        ``{"first_run": {seconds, peak_rss_mb}, "torch": {...}, "runtime": {...}, "ratio_torch_over_runtime":
        {median, min, max}}``; each mode row has ``seconds`` and ``peak_rss_mb`` lists and their medians.

    Raises:
        MedDLError: a run failed (the end of its log in the message).
    """
    import shutil

    from .errors import MedDLError

    output = Path(output)
    log = output.parent / f".{output.name}.log"

    def once(mode: str) -> tuple[float, float]:
        shutil.rmtree(output, ignore_errors=True)
        code, seconds, peak = run_meddl_child(arguments, log, task_entry, library_folder, {"MEDDL_RUNTIME": mode})
        if code != 0:
            raise MedDLError(f"meddl {' '.join(arguments[:2])} failed in the benchmark (exit {code}, "
                             f"MEDDL_RUNTIME={mode}):\n" + Path(log).read_text()[-3000:])
        return seconds, peak

    first = once("auto")
    rows: dict[str, dict[str, list[float]]] = {"torch": {"seconds": [], "peak_rss_mb": []},
                                               "runtime": {"seconds": [], "peak_rss_mb": []}}
    for _ in range(runs):
        for mode, key in (("torch", "torch"), ("auto", "runtime")):
            seconds, peak = once(mode)
            rows[key]["seconds"].append(round(seconds, 2))
            rows[key]["peak_rss_mb"].append(round(peak, 1))
    ratios = [t / r for t, r in zip(rows["torch"]["seconds"], rows["runtime"]["seconds"])]
    out: dict[str, Any] = {"first_run": {"seconds": round(first[0], 2), "peak_rss_mb": round(first[1], 1)}}
    for key, row in rows.items():
        out[key] = {**row, "median_seconds": statistics.median(row["seconds"]),
                    "median_peak_rss_mb": statistics.median(row["peak_rss_mb"])}
    out["ratio_torch_over_runtime"] = {"median": round(statistics.median(ratios), 2),
                                       "min": round(min(ratios), 2), "max": round(max(ratios), 2)}
    return out


def runtime_rows(network: Any, package: Any, x: np.ndarray, agree: Any, *, repeats: int = 5,
                 compare: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None,
                 ceiling: dict[str, Any] | None = None, forward: str = "forward") -> dict[str, Any]:
    """One network's forward, torch eager fp32 against the runtime :mod:`MedDLLib.runtime` chooses, on the same
    weights and the same input ``x``, timed alternately ``repeats`` times each after the choice (which runs
    both once).

    Args:
        compare: ``(torch output, runtime output) -> {name: value}`` agreement figures for the row.
        forward: the network's method the task's prediction runs (:func:`MedDLLib.runtime.runner_for`; e.g.
            glioma's ``"evidence_map"``): timed, exported and counted as the task runs it.
        ceiling: :func:`machine_ceiling`'s result (measured with the thread count the forwards use): the row
            then carries the forward's FLOPs (:func:`forward_flops`, counted once on the torch network) and the
            achieved GFLOP/s of both (fastest and median run) with their share of the matching ceiling
            (:func:`ceiling_for`).
    Returns:
        seconds of both, medians, ``ratio_torch_over_runtime`` (median and min over the pairs), the chosen
        backend, the seconds the choice measured per candidate, the agreement figures, and ``candidates``
        (:func:`_candidate_seconds`: each agreeing runtime's warm forward, chosen or not); with ``ceiling``,
        ``forward_flops``, ``torch_achieved`` and ``runtime_achieved`` (:func:`_achieved`: ``best_gflops``,
        ``share_of_ceiling``, ``gflops``, ``median_share_of_ceiling``, ``ceiling_precision``, ``ceiling_gflops``)
        and ``threads``, and each candidate's ``achieved``.
    """
    from . import runtime

    runner = runtime.runner_for(network, package, agree=agree, forward=forward)
    runner(x)  # exports (or reuses the export), measures the candidates, keeps the choice
    torch_s: list[float] = []
    runtime_s: list[float] = []
    for _ in range(repeats):
        torch_s.append(_time(lambda: runner.torch_forward(x)))
        runtime_s.append(_time(lambda: runner(x)))
    ratios = [t / r for t, r in zip(torch_s, runtime_s)]
    reference, got = runner.torch_forward(x), runner(x)
    key = runner._key(x.shape)
    row = {"input_shape": list(x.shape), "forward": forward, "backend": runner.chosen.get(key, "torch"),
           "choice_seconds": {k: round(v, 4) for k, v in runner.timings.get(key, {}).items()},
           "torch_seconds": [round(s, 4) for s in torch_s], "runtime_seconds": [round(s, 4) for s in runtime_s],
           "torch_median_s": round(statistics.median(torch_s), 4),
           "runtime_median_s": round(statistics.median(runtime_s), 4),
           "ratio_torch_over_runtime": {"median": round(statistics.median(ratios), 2),
                                        "min": round(min(ratios), 2)},
           "agreement": (compare or _max_abs_difference)(reference, got)}
    candidates = _candidate_seconds(runner, x, reference, repeats)
    row["candidates"] = {name: {"seconds": [round(t, 5) for t in times], "median_s": round(statistics.median(times), 5)}
                         for name, times in candidates.items()}
    if ceiling is not None:
        import torch

        flops = forward_flops(runner.module, x)
        row.update({"forward_flops": flops, "flop_convention": FLOP_CONVENTION, "threads": torch.get_num_threads(),
                    "torch_achieved": _achieved(flops, torch_s, ceiling, "torch"),
                    "runtime_achieved": _achieved(flops, runtime_s, ceiling, row["backend"])})
        for name, times in candidates.items():
            row["candidates"][name]["achieved"] = _achieved(flops, times, ceiling, name)
        if ceiling.get("threads") != row["threads"]:
            row["warning"] = (f"the ceiling was measured with {ceiling.get('threads')} threads, the forwards ran "
                              f"with {row['threads']}: the shares compare unlike things")
    return row


def gradcam_row(network: Any, x: np.ndarray, layer: str, *, repeats: int = 5, ceiling: dict[str, Any] | None = None,
                **options: Any) -> dict[str, Any]:
    """The Grad-CAM pass a study runs (:func:`MedDLLib.gradcam.compute_gradcam` of ``network`` on ``x`` at ``layer``
    with the task's ``options``, e.g. ``class_index``, ``bf16``), timed ``repeats`` times after one warm-up.

    Returns:
        ``input_shape``, ``layer``, ``seconds``, ``median_s``; with ``ceiling``, ``forward_flops`` and ``achieved``
        (:func:`_achieved`): the forward's FLOPs over the whole pass's seconds, a lower bound of the forward's rate
        (the pass also runs the backward from the output to ``layer``, not counted).
    """
    import torch

    from .gradcam import compute_gradcam

    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    compute_gradcam(network, tensor, layer, **options)  # warm-up (and Grad-CAM's precision choice, if any)
    seconds = [_time(lambda: compute_gradcam(network, tensor, layer, **options)) for _ in range(repeats)]
    row = {"input_shape": list(x.shape), "layer": layer, "seconds": [round(t, 4) for t in seconds],
           "median_s": round(statistics.median(seconds), 4)}
    if ceiling is not None:
        flops = forward_flops(network, tensor)
        row.update({"forward_flops": flops, "achieved": _achieved(flops, seconds, ceiling, "torch")})
    return row


def _candidate_seconds(runner: Any, x: np.ndarray, reference: np.ndarray, repeats: int) -> dict[str, list[float]]:
    """Seconds of each installed runtime's warm forward of ``x`` whose output agrees with torch's ``reference``
    (chosen or not: a runtime whose start-up outweighs a study's forwards still shows what it makes of the
    network), alternating between them ``repeats`` times. Empty when the runner runs torch only."""
    from . import runtime

    if runner.folder is None or runtime.forced_backend() == "torch":
        return {}
    sessions = {}
    for name in runtime.available_backends():
        try:
            session = runner._session(name, tuple(x.shape))
            if runner.agree(reference, session.run(x)):
                sessions[name] = session
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot run it is left out of the row
            log.info("%s could not run the network (%s)", name, exc)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            times[name].append(_time(lambda: session.run(x)))
    return times


def _max_abs_difference(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    return {"max_abs_output_difference": float(np.abs(reference - got).max(initial=0.0))}


# ---------------------------------------------------------------------------------------------- the ceiling
#: How forward FLOPs are counted (:func:`forward_flops`), stated in every result that carries them.
FLOP_CONVENTION = ("FLOPs of convolutions and matrix products, counted by torch.utils.flop_counter.FlopCounterMode "
                   "on the torch network (a multiply-add = 2 FLOPs; elementwise ops, norms, activations and pooling "
                   "not counted)")


def forward_flops(network: Any, x: np.ndarray | Any) -> int:
    """FLOPs of one forward of ``network`` on ``x`` ``(B, C, *spatial)`` (see :data:`FLOP_CONVENTION`): one
    torch forward, without gradients, under :class:`torch.utils.flop_counter.FlopCounterMode`.

    Example: a ``Conv2d(3, 8, 3, padding=1, bias=False)`` on ``(2, 3, 16, 16)`` makes 2 * 16 * 16 * 8 outputs
    of 3 * 3 * 3 multiply-adds each: ``2 * (2*16*16*8) * 27 = 221184`` FLOPs.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .runtime import _device, torch_network

    network = torch_network(network)
    was_training = network.training
    network.eval()
    tensor = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            network(tensor.to(_device(network)))
    finally:
        network.train(was_training)
    return int(counter.get_total_flops())


def _sustained_gflops(run: Callable[[], Any], flops: float, seconds: float, batches: int = 4) -> dict[str, Any]:
    """GFLOP/s of ``run`` (``flops`` per call): one warm-up call, then ``batches`` timed batches of as many calls
    as fill ``seconds / batches`` (at least one). ``best_gflops`` (the fastest batch, the least disturbed by
    other work on a shared machine) is the sustained rate the ceiling takes; ``gflops`` is the median batch."""
    warm = _time(run)
    calls = max(1, int(round(seconds / batches / max(warm, 1e-6))))
    rates = []
    for _ in range(batches):
        elapsed = _time(lambda: [run() for _ in range(calls)])
        rates.append(calls * flops / elapsed / 1e9)
    return {"flops_per_call": int(flops), "calls_per_batch": calls, "batch_gflops": [round(r, 1) for r in rates],
            "gflops": round(statistics.median(rates), 1), "best_gflops": round(max(rates), 1)}


def _openvino_kernel(kind: str, shape: tuple[int, ...], precision: str, threads: int) -> Callable[[], Any]:
    """A compiled OpenVINO kernel on a random float32 input of ``shape``, compiled as :mod:`MedDLLib.runtime`
    compiles networks (``precision`` ``f32``/``bf16``, latency, ``threads``): ``kind`` ``"matmul"`` (``(n, n) @``
    a constant ``(n, n)``, as a network's weights) or ``"conv3d"`` (C -> C channels, 3x3x3, padding 1)."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter(list(shape), ov.Type.f32)
    if kind == "matmul":
        y = ops.matmul(x, ops.constant(rng.standard_normal((shape[1], shape[1]), dtype=np.float32)), False, False)
    else:
        c = shape[1]
        w = ops.constant(rng.standard_normal((c, c, 3, 3, 3), dtype=np.float32) * 0.05)
        y = ops.convolution(x, w, [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1])
    compiled = ov.Core().compile_model(ov.Model([y], [x]), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
    request, data = compiled.create_infer_request(), rng.standard_normal(shape, dtype=np.float32)
    return lambda: request.infer([data])


def machine_ceiling(threads: int | None = None, *, seconds_per_kernel: float = 0.4, matmul_size: int = 2048,
                    conv_size: int = 128, openvino: bool | None = None) -> dict[str, Any]:
    """The machine's ceiling: sustained GFLOP/s of large dense kernels with ``threads`` threads (default: torch's
    current count, which the forwards use: torch and :mod:`MedDLLib.runtime` sessions alike).

    Kernels (``n = matmul_size``, ``s = conv_size``): torch fp32 matmul ``(n, n) @ (n, n)``; torch fp32 conv2d
    C -> C channels 3x3 on ``(4, C, s/4, s/4)``; torch fp32 conv3d C -> C channels 3x3x3 on
    ``(1, C, s/16, s/8, s/8)`` (C = 256: wide layers, where the convolution kernels run fastest; a 128-channel
    conv3d on ``8 x 32 x 32`` ran at about 0.6 of the glioma network's bf16 forward on OpenVINO); where the CPU
    has bf16 dot products, torch bf16 matmul; where OpenVINO imports and ``openvino`` (default: unless
    ``$MEDDL_RUNTIME`` keeps the forwards on torch, as the test suite's process does: OpenVINO is not loaded
    there), its fp32 and (CPU reporting BF16) bf16 matmul and conv3d on the same shapes, compiled as
    the runtime compiles networks. Each kernel: a warm-up call, then four timed
    batches of about ``seconds_per_kernel / 4``; its rate is the fastest batch (on a shared machine the least
    disturbed one: a ceiling is an upper bound). A multiply-add counts 2 FLOPs. About 4-6 s with the defaults.

    Returns:
        JSON-ready: ``threads``, ``measurements`` (name -> what, precision, GFLOP/s of each batch, median
        ``gflops``, ``best_gflops``), ``fp32_gflops``/``bf16_gflops`` (the largest ``best_gflops`` of that
        precision: the ceiling a forward of that precision is compared with; ``None`` when not measured) with
        ``fp32_from``/``bf16_from`` naming the kernel, and the seconds the measurement took.
    """
    import torch

    from .runtime import ENV, backend_available, cpu_has_bf16

    if openvino is None:
        openvino = os.environ.get(ENV, "auto").strip().lower() != "torch"
    before = torch.get_num_threads()
    threads = int(threads or before)
    n, s = int(matmul_size), int(conv_size)
    c = 256
    shape2d = (4, c, max(1, s // 4), max(1, s // 4))
    shape3d = (1, c, max(1, s // 16), max(1, s // 8), max(1, s // 8))
    conv2d_flops = 2.0 * float(np.prod(shape2d)) * c * 9
    conv3d_flops = 2.0 * float(np.prod(shape3d)) * c * 27
    conv3d_what = f"Conv3d {c}->{c} 3x3x3 pad 1 on {'x'.join(map(str, shape3d))}"
    start = time.perf_counter()
    measurements: dict[str, dict[str, Any]] = {}

    def measure(name: str, precision: str, what: str, run: Callable[[], Any], flops: float) -> None:
        measurements[name] = {"precision": precision, "what": what,
                              **_sustained_gflops(run, flops, seconds_per_kernel)}

    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
            measure("torch fp32 matmul", "fp32", f"({n}x{n}) @ ({n}x{n})", lambda: a @ b, 2.0 * n ** 3)
            conv2d = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).eval()
            x2 = torch.randn(shape2d, generator=gen)
            measure("torch fp32 conv2d", "fp32", f"Conv2d {c}->{c} 3x3 pad 1 on {'x'.join(map(str, shape2d))}",
                    lambda: conv2d(x2), conv2d_flops)
            conv3d = torch.nn.Conv3d(c, c, 3, padding=1, bias=False).eval()
            x3 = torch.randn(shape3d, generator=gen)
            measure("torch fp32 conv3d", "fp32", conv3d_what, lambda: conv3d(x3), conv3d_flops)
            if cpu_has_bf16():
                a16, b16 = a.bfloat16(), b.bfloat16()
                measure("torch bf16 matmul", "bf16", f"({n}x{n}) @ ({n}x{n}) bfloat16", lambda: a16 @ b16,
                        2.0 * n ** 3)
        for precision, label, backend in (("f32", "fp32", "openvino"), ("bf16", "bf16", "openvino-bf16")):
            if not (openvino and backend_available(backend)):
                continue
            for kind, shape, flops, what in (("matmul", (n, n), 2.0 * n ** 3, f"({n}x{n}) @ constant ({n}x{n})"),
                                              ("conv3d", shape3d, conv3d_flops, conv3d_what)):
                name = f"openvino {label} {kind}"
                try:
                    measure(name, label, f"{what}, inference precision {precision}",
                            _openvino_kernel(kind, shape, precision, threads), flops)
                except Exception as exc:  # a plugin that cannot compile: no OpenVINO figure, say why
                    measurements[name] = {"precision": label, "error": " ".join(str(exc).split())[:200]}
    finally:
        torch.set_num_threads(before)
    result: dict[str, Any] = {"threads": threads, "flop_convention": "a multiply-add = 2 FLOPs",
                              "measurements": measurements}
    for precision in ("fp32", "bf16"):
        rated = {k: m["best_gflops"] for k, m in measurements.items()
                 if m["precision"] == precision and "best_gflops" in m}
        top = max(rated, key=rated.__getitem__) if rated else None
        result[f"{precision}_gflops"] = rated[top] if top else None
        result[f"{precision}_from"] = top
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def ceiling_for(ceiling: dict[str, Any], backend: str) -> tuple[float | None, str]:
    """The ceiling (GFLOP/s) a forward on ``backend`` is compared with, and its precision: bf16 for
    ``openvino-bf16``, fp32 for every other backend (torch eager, ONNX Runtime, OpenVINO fp32)."""
    precision = "bf16" if backend.endswith("bf16") else "fp32"
    return ceiling.get(f"{precision}_gflops"), precision


def _achieved(flops: int, seconds: list[float], ceiling: dict[str, Any] | None, backend: str) -> dict[str, Any]:
    """Achieved GFLOP/s of forwards taking ``seconds``: ``best_gflops`` of the fastest one, whose share of the
    ceiling is ``share_of_ceiling`` (the ceiling too is its kernels' fastest batch: both the least disturbed
    figures on a shared machine), and ``gflops`` of the median one with ``median_share_of_ceiling``."""
    top, precision = ceiling_for(ceiling, backend) if ceiling else (None, "fp32")
    median, best = flops / statistics.median(seconds) / 1e9, flops / min(seconds) / 1e9
    return {"gflops": round(median, 1), "best_gflops": round(best, 1), "ceiling_precision": precision,
            "ceiling_gflops": top, "share_of_ceiling": round(best / top, 3) if top else None,
            "median_share_of_ceiling": round(median / top, 3) if top else None}


def task_table(result: dict[str, Any]) -> str:
    """A text table of a task bench (:func:`end_to_end_rows`, :func:`runtime_rows` and :func:`gradcam_row` entries
    of ``result``)."""
    rows = [("what", "torch eager", "chosen runtime", "torch/runtime (median, min)", "peak MB (torch / runtime)")]
    e2e = result.get("end_to_end")
    if e2e:
        rows.append((f"cold end to end: {result.get('end_to_end_input', '')}",
                     f"{e2e['torch']['median_seconds']:.2f} s", f"{e2e['runtime']['median_seconds']:.2f} s",
                     f"{e2e['ratio_torch_over_runtime']['median']:.2f}x, {e2e['ratio_torch_over_runtime']['min']:.2f}x",
                     f"{e2e['torch']['median_peak_rss_mb']:.0f} / {e2e['runtime']['median_peak_rss_mb']:.0f}"))
        rows.append(("  first run (export + choice, once per package)", "", f"{e2e['first_run']['seconds']:.2f} s",
                     "", f"{e2e['first_run']['peak_rss_mb']:.0f}"))
    for name, row in (result.get("runtime") or {}).items():
        agreement = ", ".join(f"{k} {v:.3g}" for k, v in row["agreement"].items())
        rows.append((f"forward {name} {'x'.join(map(str, row['input_shape']))} -> {row['backend']} ({agreement})",
                     f"{row['torch_median_s']:.3f} s", f"{row['runtime_median_s']:.3f} s",
                     f"{row['ratio_torch_over_runtime']['median']:.2f}x, {row['ratio_torch_over_runtime']['min']:.2f}x",
                     ""))
        if "forward_flops" in row:
            rows.append((f"  fastest run: GFLOP/s = share of the ceiling ({row['forward_flops'] / 1e9:.2f} GFLOP)",
                         _achieved_cell(row["torch_achieved"]), _achieved_cell(row["runtime_achieved"]), "", ""))
        for candidate, figures in row.get("candidates", {}).items():
            cell = f"{figures['median_s']:.4f} s" + (f": {_achieved_cell(figures['achieved'])}"
                                                     if "achieved" in figures else "")
            rows.append((f"  {candidate}{' (chosen)' if candidate == row['backend'] else ''}, warm", "", cell, "", ""))
    for name, row in (result.get("gradcam") or {}).items():
        cell = f"{row['median_s']:.3f} s" + (f": {_achieved_cell(row['achieved'])}" if "achieved" in row else "")
        rows.append((f"Grad-CAM pass {name} {'x'.join(map(str, row['input_shape']))} at {row['layer']} (forward "
                     "FLOPs over the pass)", cell, "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if result.get("ceiling"):
        lines.append(ceiling_line(result["ceiling"]))
        shares = [row[side].get("share_of_ceiling") or 0.0 for row in (result.get("runtime") or {}).values()
                  for side in ("torch_achieved", "runtime_achieved") if side in row]
        if any(share > 1.0 for share in shares):
            lines.append("A share above 100 %: the machine's load changed between the ceiling and the forwards (or "
                         "the ceiling's kernels are not the fastest this CPU runs); measure on an idle machine.")
    if any("warning" in row for row in (result.get("runtime") or {}).values()):
        lines += [row["warning"] for row in result["runtime"].values() if "warning" in row][:1]
    lines.append(result.get("caveat") or caveat())
    return "\n".join(lines)


def _achieved_cell(achieved: dict[str, Any]) -> str:
    share, median = achieved.get("share_of_ceiling"), achieved.get("median_share_of_ceiling")
    if share is None:
        return f"{achieved['best_gflops']:.0f} GFLOP/s (no {achieved['ceiling_precision']} ceiling)"
    return (f"{achieved['best_gflops']:.0f} GFLOP/s = {100 * share:.0f} % of {achieved['ceiling_precision']} "
            f"(median {100 * median:.0f} %)")


def ceiling_line(ceiling: dict[str, Any]) -> str:
    """Two lines saying what :func:`machine_ceiling` measured (the fp32 and bf16 ceilings and their kernels) and how
    forward FLOPs are counted."""
    parts = []
    for precision in ("fp32", "bf16"):
        if ceiling.get(f"{precision}_gflops"):
            parts.append(f"{precision} {ceiling[f'{precision}_gflops']:.0f} GFLOP/s ({ceiling[f'{precision}_from']})")
    others = ", ".join(f"{name} {m['best_gflops']:.0f}" for name, m in ceiling.get("measurements", {}).items()
                       if "best_gflops" in m and name not in (ceiling.get("fp32_from"), ceiling.get("bf16_from")))
    return (f"ceiling with {ceiling['threads']} threads: " + ("; ".join(parts) or "not measured")
            + (f" (also {others})" if others else "") + f"\nFLOPs: {FLOP_CONVENTION}")
