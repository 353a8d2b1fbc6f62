"""``meddl bench glioma``: CPU forward and Grad-CAM time and peak memory, seed (stride 1) vs improved (stride 2).

Both networks are the recipes' at their input size (default 64 x 256 x 256), untrained (time and memory do not
depend on the weights): the seed's MONAI ``resnet10(spatial_dims=3, n_input_channels=1, num_classes=1)`` with
the default ``conv1_t_stride=1``; the improved :class:`GliomaClassifierLib.model.EvidenceResNet10` (the same
body with ``conv1_t_stride=2``, output stride 16 at 256 px, an evidence head). Each measurement (network x {forward,
Grad-CAM}) runs in a fresh child process with ``threads`` torch threads, so its peak resident memory
(``ru_maxrss``) is its own; one warm-up of the same operation on the same input shape precedes the timed call.
Grad-CAM is the project's :func:`MedDLLib.gradcam.compute_gradcam` (forward + backward + map) at the recipes'
layer. Targets for the improved network on 2 cores: forward < 3 s, Grad-CAM < 10 s.

Also measured for the improved recipe: ``improved_end_to_end_seconds``, the whole
:func:`GliomaClassifierLib.logic.compute` (preprocessing of a 256 x 256 x 64 phantom T1wCE stored sagittal,
reorientation, network, Grad-CAM mapped back into the input geometry), i.e. what one study costs in Slicer.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from typing import Any

TARGET_FORWARD_S = 3.0
TARGET_GRADCAM_S = 10.0


def _child(stride: int, size: int, depth: int, what: str, threads: int, queue: Any) -> None:
    """Child process body: one measurement, or ``{"error": ...}`` on the queue (never a silent death)."""
    try:
        queue.put(_measure_here(stride, size, depth, what, threads))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it as a MedDLError
        queue.put({"error": " ".join(f"{type(exc).__name__}: {exc}".split())})


def _measure_here(stride: int, size: int, depth: int, what: str, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    from MedDLLib.gradcam import compute_gradcam

    from .model import build, recipe

    r = recipe("improved" if stride == 2 else "seed", size=size, depth=depth)
    torch.manual_seed(0)
    network = build(r).eval()
    x = torch.rand(1, 1, depth, size, size)
    if what == "end_to_end":
        import tempfile
        from pathlib import Path

        import numpy as np

        from MedDLLib.phantoms import as_plane

        from .logic import compute
        from .model import untrained_package
        from .phantom import brain_mri

        volumes, _, _ = brain_mri(np.random.default_rng(0), size, depth, label=1)
        study = {"T1wCE": as_plane(volumes["T1wCE"], "sagittal")}
        with tempfile.TemporaryDirectory() as tmp:
            package = untrained_package(Path(tmp) / "m", size=size, depth=depth, widen_factor=1.0)
            start = time.perf_counter()
            compute(study, package)
            seconds = time.perf_counter() - start
        return {"seconds": round(seconds, 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}

    def run() -> None:
        if what == "forward":
            with torch.no_grad():
                network(x)
        else:
            compute_gradcam(network, x, r.gradcam_layer, class_index=0)

    run()  # warm-up: the same operation on the same shape as the timed call (kernels, allocator)
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}


def measure(stride: int, what: str, size: int = 256, depth: int = 64, threads: int = 2,
            timeout_s: float = 900.0) -> dict[str, float]:
    """Seconds and peak RSS (MB) of one forward (``what="forward"``) or Grad-CAM in a fresh child process.

    Raises:
        MedDLError: the child failed (its error), died without a result, or ran past ``timeout_s``.
    """
    import queue as queue_module

    from MedDLLib.errors import MedDLError

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(stride, size, depth, what, threads, queue))
    proc.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                message = queue.get(timeout=1.0)
                break
            except queue_module.Empty:
                if not proc.is_alive():
                    try:
                        message = queue.get(timeout=1.0)  # put just before it exited
                        break
                    except queue_module.Empty:
                        raise MedDLError(f"glioma bench {what}: the measuring process ended (exit code "
                                         f"{proc.exitcode}) without a result") from None
                if time.monotonic() > deadline:
                    raise MedDLError(f"glioma bench {what}: no result after {timeout_s:g} s") from None
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join()
    if "error" in message:
        raise MedDLError(f"glioma bench {what} (stride {stride}, {depth} x {size} x {size}): {message['error']}")
    return message


def run_bench(size: int = 256, depth: int = 64, threads: int = 2, runs: int = 3) -> dict[str, Any]:
    """Both networks side by side (see the module docstring) and, with ``runs`` > 0, the cold end-to-end and
    runtime rows of :func:`bench_cold_and_runtime`; JSON-ready.

    Raises:
        InputError: ``size`` or ``depth`` below 16 voxels, or ``threads`` below 1.
    """
    import os

    import torch

    from MedDLLib.errors import InputError

    if size < 16 or depth < 16 or threads < 1:
        raise InputError(f"bench glioma needs --size and --depth of at least 16 voxels and --threads >= 1 (got "
                         f"size {size}, depth {depth}, threads {threads})")

    result: dict[str, Any] = {"benchmark": "glioma_cpu_inference", "input_dhw": [depth, size, size],
                              "threads": threads, "cpu_count": os.cpu_count(), "torch": torch.__version__}
    for name, stride in (("seed", 1), ("improved", 2)):
        for what in ("forward", "gradcam"):
            res = measure(stride, what, size, depth, threads)
            result[f"{name}_{what}_seconds"] = res["seconds"]
            result[f"{name}_{what}_peak_rss_mb"] = res["peak_rss_mb"]
    res = measure(2, "end_to_end", size, depth, threads)
    result["improved_end_to_end_seconds"] = res["seconds"]
    result["improved_end_to_end_peak_rss_mb"] = res["peak_rss_mb"]
    result["improved_meets_targets"] = bool(result["improved_forward_seconds"] < TARGET_FORWARD_S
                                            and result["improved_gradcam_seconds"] < TARGET_GRADCAM_S)
    result["speedup_forward"] = round(result["seed_forward_seconds"] / result["improved_forward_seconds"], 2)
    result["speedup_gradcam"] = round(result["seed_gradcam_seconds"] / result["improved_gradcam_seconds"], 2)
    result["target"] = (f"improved (conv1_t_stride=2): forward < {TARGET_FORWARD_S:g} s and Grad-CAM < "
                        f"{TARGET_GRADCAM_S:g} s on 2 cores")
    if runs > 0:
        result["cold_and_runtime"] = bench_cold_and_runtime(size, depth, runs=runs)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A small text table of :func:`run_bench`'s result (seed and improved side by side)."""
    rows = [("network", "forward (s)", "forward peak RSS (MB)", "Grad-CAM (s)", "Grad-CAM peak RSS (MB)")]
    for name, label in (("seed", "seed resnet10 stride 1"), ("improved", "improved evidence-resnet10 stride 2")):
        rows.append((label, f"{result[f'{name}_forward_seconds']:.2f}", f"{result[f'{name}_forward_peak_rss_mb']:.0f}",
                     f"{result[f'{name}_gradcam_seconds']:.2f}", f"{result[f'{name}_gradcam_peak_rss_mb']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    d, h, w = result["input_dhw"]
    lines.append(f"input 1x{d}x{h}x{w}, {result['threads']} threads; {result['target']}: "
                 f"{'met' if result['improved_meets_targets'] else 'NOT met'}")
    if "improved_end_to_end_seconds" in result:
        lines.append(f"improved end to end (preprocess + reorient + network + Grad-CAM back to the input): "
                     f"{result['improved_end_to_end_seconds']:.2f} s, "
                     f"peak {result['improved_end_to_end_peak_rss_mb']:.0f} MB")
    if "cold_and_runtime" in result:
        from MedDLLib.bench import task_table

        lines += ["", task_table(result["cold_and_runtime"])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- cold runs, runtime
def bench_cold_and_runtime(size: int = 256, depth: int = 64, *, runs: int = 3, repeats: int = 5,
                           ceiling: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a study costs as a user runs it, and the improved network's forward, torch against the runtime.

    1. Cold ``meddl infer glioma`` (fresh child each: start-up, imports, reading four DICOM series of a ``depth``
       x ``size`` x ``size`` phantom, preprocessing, the network, Grad-CAM, every output) with the improved
       recipe's :class:`~GliomaClassifierLib.model.EvidenceResNet10` (full width, four sequences as channels,
       seeded random weights), torch eager and the chosen runtime alternately (:func:`MedDLLib.bench.end_to_end_rows`).
    2. That network's prediction forward as ``infer`` runs it (:meth:`EvidenceResNet10.evidence_map`: the
       probability and Grad-CAM both come from it, :func:`~GliomaClassifierLib.evidence.predict_with_evidence`) on the
       study's prepared input ``(1, 4, depth, size, size)``, torch eager fp32 against the runtime
       :mod:`MedDLLib.runtime` chooses, same weights and input, alternating (:func:`MedDLLib.bench.runtime_rows`);
       agreement as the largest probability and Grad-CAM map differences; achieved GFLOP/s of
       both and their share of the machine's ceiling (``ceiling``: :func:`MedDLLib.bench.machine_ceiling`'s
       result; measured here when None).
    """
    import tempfile
    from pathlib import Path

    import numpy as np

    from MedDLLib import bench
    from MedDLLib.models import load_package

    from .dataset import SEQUENCES, read_case, scan_dataset
    from .evidence import evidence_agree, evidence_differences
    from .model import recipe, untrained_package
    from .phantom import write_dataset
    from .preprocess import prepare

    result: dict[str, Any] = {"task": "glioma", "machine": bench.machine(), "caveat": bench.caveat(),
                              "end_to_end_input": f"DICOM, 4 MR series of {depth} x {size} x {size}",
                              "network": "improved recipe: evidence-resnet10 (stride-2 stem), 4 channels",
                              "runtime": {}}
    with tempfile.TemporaryDirectory(prefix="meddl-glioma-bench-") as tmp:
        tmp_path = Path(tmp)
        write_dataset(tmp_path / "data", 1, 0, size=size, n_slices=depth, include_flagged=False)
        case = scan_dataset(tmp_path / "data").cases[0]
        package = untrained_package(tmp_path / "model", "improved", size=size, depth=depth, sequences=SEQUENCES,
                                    widen_factor=1.0)
        case_folder = next(iter(case.folders.values())).parent
        arguments = ["infer", "glioma", "--input", str(case_folder), "--model", str(package), "--output",
                     str(tmp_path / "out"), "--force-cpu"]
        result["end_to_end"] = bench.end_to_end_rows(arguments, tmp_path / "out", "GliomaClassifierLib.cli:TASK",
                                                     Path(__file__).resolve().parents[1], runs=runs)
        spec = recipe("improved", size=size, depth=depth, sequences=SEQUENCES).spec
        x = np.ascontiguousarray(prepare(read_case(case, spec.sequences), spec).array[None], dtype=np.float32)
        loaded = load_package(package)

        network = loaded.network("cpu")

        def compare(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
            return evidence_differences(reference, got, network.sharpness, x.shape[2:])

        result["ceiling"] = ceiling or bench.machine_ceiling()
        result["runtime"]["evidence-resnet10 evidence_map"] = bench.runtime_rows(
            network, loaded, x, evidence_agree(network.sharpness), repeats=repeats, compare=compare,
            ceiling=result["ceiling"], forward="evidence_map")
    return result
