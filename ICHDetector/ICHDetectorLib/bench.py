"""``meddl bench ich``: inference time and peak memory, and training throughput while streaming from disk.

1. Cold ``meddl infer ich`` on a 40-slice 512 x 512 phantom DICOM head CT, torch eager against the chosen runtime
   (:mod:`MedDLLib.runtime`) in alternating fresh child processes (each its own peak resident memory,
   ``ru_maxrss``), and the network's forward side by side (:func:`bench_cold_and_runtime`), with its achieved
   GFLOP/s as a share of the machine's ceiling (:func:`MedDLLib.bench.machine_ceiling`). The network is the
   improved recipe's, untrained (time and memory do not depend on the weights).
2. Training throughput: ``stream_slices`` phantom slices in the RSNA layout streamed through
   :class:`MedDLLib.datasets.FileDataset` (DICOM read per sample) with a forward/backward step per batch;
   slices per second and the resident memory after each tenth of the stream (flat = bounded memory).
"""

from __future__ import annotations

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


def _bench_study(tmp_path: Path, size: int, n_slices: int, net_size: int) -> tuple[Any, Path, list[str]]:
    """The benchmark's study in ``tmp_path``: a ``n_slices`` x ``size``^2 phantom head CT with a subdural bleed
    (DICOM series ``ct``), an untrained improved-recipe package at ``net_size`` px, and the ``meddl infer ich``
    arguments of a CPU run into ``out``. Returns ``(volume, package folder, arguments)``."""
    import numpy as np

    from MedDLLib.dicomwrite import write_series

    from .model import untrained_package
    from .phantom import head_ct

    volume, _, _ = head_ct(np.random.default_rng(0), size, n_slices, ("subdural",))
    write_series(tmp_path / "ct", volume, rescale_intercept=-1024.0, file_names="instance")
    package = untrained_package(tmp_path, net_size)
    arguments = ["infer", "ich", "--input", str(tmp_path / "ct"), "--model", str(package),
                 "--output", str(tmp_path / "out"), "--force-cpu"]
    return volume, package, arguments


def bench_end_to_end(size: int = 512, n_slices: int = 40, net_size: int = 64) -> dict[str, Any]:
    """Seconds and peak RSS (MB) of ``meddl infer ich`` (with Grad-CAM) in a fresh child on a DICOM head CT:
    reading the series, HU, the network, Grad-CAM, the suspected region and writing every output file."""
    from MedDLLib.bench import run_meddl_child
    from MedDLLib.errors import MedDLError

    with tempfile.TemporaryDirectory(prefix="meddl-ich-bench-") as tmp:
        tmp_path = Path(tmp)
        _, _, arguments = _bench_study(tmp_path, size, n_slices, net_size)
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


def bench_cold_and_runtime(size: int = 512, n_slices: int = 40, net_size: int = 64, *, runs: int = 3,
                           repeats: int = 5, ceiling: dict[str, Any] | None = None) -> dict[str, Any]:
    """Cold ``meddl infer ich`` runs (fresh child each: start-up, imports, reading the ``n_slices`` x ``size``^2
    DICOM head CT, the network, Grad-CAM, the suspected region, every output), torch eager and the chosen runtime
    alternately (:func:`MedDLLib.bench.end_to_end_rows`), and the improved recipe's 2.5D ResNet forward on that
    study's network input ``(n_slices, 9, net_size, net_size)``, torch eager fp32 against the runtime, same weights
    and input, alternating (:func:`MedDLLib.bench.runtime_rows`), and the Grad-CAM pass a study with a heatmap runs
    instead (:func:`MedDLLib.bench.gradcam_row`), with their achieved GFLOP/s and their share of the
    machine's ceiling (``ceiling``: :func:`MedDLLib.bench.machine_ceiling`'s result; measured here when None)."""
    import numpy as np

    from MedDLLib import bench
    from MedDLLib.models import load_package
    from MedDLLib.runtime import probabilities_agree

    from .model import probabilities
    from .preprocess import InputSpec, volume_input

    result: dict[str, Any] = {"task": "ich", "machine": bench.machine(), "caveat": bench.caveat(),
                              "end_to_end_input": f"DICOM head CT of {n_slices} x {size} x {size}, Grad-CAM on",
                              "network": f"improved recipe: 2.5D ResNet (9 channels) at {net_size} px", "runtime": {}}
    with tempfile.TemporaryDirectory(prefix="meddl-ich-bench-") as tmp:
        tmp_path = Path(tmp)
        volume, package, arguments = _bench_study(tmp_path, size, n_slices, net_size)
        result["end_to_end"] = bench.end_to_end_rows(arguments, tmp_path / "out", "ICHDetectorLib.cli:TASK",
                                                     Path(__file__).resolve().parents[1], runs=runs)
        loaded = load_package(package)
        x, _ = volume_input(volume, InputSpec.from_metadata(loaded.metadata["input"]))

        def compare(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
            diff = probabilities(reference, "sigmoid") - probabilities(got, "sigmoid")
            return {"max_probability_difference": float(np.abs(diff).max())}

        result["ceiling"] = ceiling or bench.machine_ceiling()
        result["runtime"]["resnet2d-2.5d"] = bench.runtime_rows(
            loaded.network("cpu"), loaded, np.ascontiguousarray(x, dtype=np.float32),
            probabilities_agree("sigmoid"), repeats=repeats, compare=compare, ceiling=result["ceiling"])
        # what a study with a heatmap runs instead (ICHDetectorLib.logic.compute): Grad-CAM's pass gives the
        # probabilities too
        result["gradcam"] = {"resnet2d-2.5d": bench.gradcam_row(
            loaded.network("cpu"), x, loaded.metadata["output"].get("gradcam_layer") or "layer3", repeats=repeats,
            ceiling=result["ceiling"], class_index=0, bf16=False, return_logits=True)}
    return result


def run_bench(stream_slices: int = 20000, runs: int = 3) -> dict[str, Any]:
    """The cold end-to-end and runtime rows (:func:`bench_cold_and_runtime`), then the training stream."""
    import torch

    from MedDLLib.bench import task_table

    result: dict[str, Any] = {"cpu_threads": torch.get_num_threads()}
    result["cold_and_runtime"] = bench_cold_and_runtime(runs=runs)
    print(task_table(result["cold_and_runtime"]))
    result["target"] = "end to end < 5 s on 2 cores (issue 20); streaming memory flat"
    if stream_slices > 0:
        result.update(bench_streaming(stream_slices))
    return result
