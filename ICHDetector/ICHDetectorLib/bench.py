"""``meddl bench ich``: inference time and peak memory, and training throughput while streaming from disk.

1. Inference, end to end on arrays (:func:`ICHDetectorLib.logic.compute`: checks, preprocessing, network,
   Grad-CAM, suspected region) on a 40-slice 512 x 512 phantom head CT, with and without Grad-CAM. Each
   measurement runs in a fresh child process so its peak resident memory (``ru_maxrss``) is its own.
   The network is the improved recipe's, untrained (time and memory do not depend on the weights).
2. Training throughput: ``stream_slices`` phantom slices in the RSNA layout streamed through
   :class:`MedDLLib.datasets.FileDataset` (DICOM read per sample) with a forward/backward step per batch;
   slices per second and the resident memory after each tenth of the stream (flat = bounded memory).
"""

from __future__ import annotations

import multiprocessing
import resource
import tempfile
import time
from pathlib import Path
from typing import Any


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:  # pragma: no cover - not Linux
        return _rss_mb()


def _infer_child(package: str, size: int, n_slices: int, gradcam: bool, queue: Any) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(2)
    from .logic import ICHOptions, compute
    from .phantom import head_ct

    volume, _, _ = head_ct(np.random.default_rng(0), size, n_slices, ("subdural",))
    compute(volume, package, ICHOptions(heatmap_label="any" if gradcam else None))  # warm-up (imports, allocator)
    start = time.perf_counter()
    result = compute(volume, package, ICHOptions(heatmap_label="any" if gradcam else None))
    seconds = time.perf_counter() - start
    queue.put({"seconds": round(seconds, 3), "peak_rss_mb": round(_rss_mb(), 1),
               "any_probability": result.study["any_probability"]})


def bench_inference(size: int = 512, n_slices: int = 40, net_size: int = 64) -> dict[str, Any]:
    """Seconds and peak RSS (MB) of :func:`compute` (arrays in memory: preprocessing, network, optionally Grad-CAM
    and the suspected region) on a ``n_slices x size x size`` head CT, with and without Grad-CAM, side by side."""
    from .model import untrained_package

    ctx = multiprocessing.get_context("spawn")
    out: dict[str, Any] = {"input_shape": [n_slices, size, size], "network_input": net_size}
    with tempfile.TemporaryDirectory() as tmp:
        package = str(untrained_package(Path(tmp), net_size))
        for gradcam in (False, True):
            queue = ctx.Queue()
            proc = ctx.Process(target=_infer_child, args=(package, size, n_slices, gradcam, queue))
            proc.start()
            res = queue.get(timeout=600)
            proc.join()
            key = "with_gradcam" if gradcam else "without_gradcam"
            out[f"infer_{key}_seconds"] = res["seconds"]
            out[f"infer_{key}_peak_rss_mb"] = res["peak_rss_mb"]
    return out


def bench_end_to_end(size: int = 512, n_slices: int = 40, net_size: int = 64) -> dict[str, Any]:
    """Seconds and peak RSS (MB) of ``meddl infer ich`` (with Grad-CAM) in a fresh child on a DICOM head CT:
    reading the series, HU, the network, Grad-CAM, the suspected region and writing every output file."""
    import numpy as np

    from MedDLLib.bench import run_meddl_child
    from MedDLLib.dicomwrite import write_series
    from MedDLLib.errors import MedDLError

    from .model import untrained_package
    from .phantom import head_ct

    with tempfile.TemporaryDirectory(prefix="meddl-ich-bench-") as tmp:
        tmp_path = Path(tmp)
        volume, _, _ = head_ct(np.random.default_rng(0), size, n_slices, ("subdural",))
        write_series(tmp_path / "ct", volume, rescale_intercept=-1024.0, file_names="instance")
        package = untrained_package(tmp_path, net_size)
        arguments = ["infer", "ich", "--input", str(tmp_path / "ct"), "--model", str(package),
                     "--output", str(tmp_path / "out"), "--force-cpu"]
        code, seconds, peak_mb = run_meddl_child(arguments, tmp_path / "log.txt", "ICHDetectorLib.cli:TASK",
                                                 Path(__file__).resolve().parents[1])
        if code != 0:
            raise MedDLError(f"meddl infer ich failed in the benchmark (exit {code}):\n"
                             + (tmp_path / "log.txt").read_text()[-3000:])
    return {"end_to_end_seconds": round(seconds, 2), "end_to_end_peak_rss_mb": round(peak_mb, 1)}


def bench_streaming(n_slices: int = 20000, batch_size: int = 32, net_size: int = 64) -> dict[str, Any]:
    """Training throughput (slices/s) and resident memory while streaming ``n_slices`` phantom slices from disk."""
    import torch
    from torch.utils.data import DataLoader

    from MedDLLib.datasets import FileDataset

    from .dataset import load_sample, scan_dataset, training_items
    from .model import WeightedBCE, ich_resnet2d, recipe
    from .phantom import write_dataset

    r = recipe("improved", net_size)
    per_study = 12
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_dataset(Path(tmp) / "data", max(2, -(-n_slices // per_study)), 0, n_slices=per_study)
        write_seconds = time.perf_counter() - start
        data = scan_dataset(Path(tmp) / "data")
        items = training_items(data.studies, r.spec.context)[:n_slices]
        import functools

        loader = DataLoader(FileDataset(items, functools.partial(load_sample, spec=r.spec)), batch_size=batch_size,
                            shuffle=True, num_workers=0)
        network = ich_resnet2d(len(r.spec.channels))
        optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
        loss_fn = WeightedBCE()
        rss, seen = [], 0
        checkpoints = {int(len(loader) * f / 10) for f in range(1, 11)}
        start = time.perf_counter()
        for step, (x, y) in enumerate(loader, start=1):
            optimizer.zero_grad()
            loss_fn(network(x), y).backward()
            optimizer.step()
            seen += len(x)
            if step in checkpoints:
                rss.append(round(_current_rss_mb(), 1))
        seconds = time.perf_counter() - start
    return {"stream_slices": seen, "stream_seconds": round(seconds, 1),
            "train_slices_per_second": round(seen / seconds, 1), "phantom_write_seconds": round(write_seconds, 1),
            "stream_rss_mb_by_tenth": rss, "stream_rss_growth_mb": round(rss[-1] - rss[0], 1) if rss else None}


def run_bench(stream_slices: int = 20000) -> dict[str, Any]:
    """Both benchmarks (see the module docstring)."""
    import torch

    result: dict[str, Any] = {"cpu_threads": torch.get_num_threads()}
    result.update(bench_inference())
    result.update(bench_end_to_end())
    result["target"] = "inference < 15 s and < 2048 MB on 2 cores; streaming memory flat"
    if stream_slices > 0:
        result.update(bench_streaming(stream_slices))
    return result
