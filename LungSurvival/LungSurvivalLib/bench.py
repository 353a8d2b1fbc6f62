"""``meddl bench lung``: end-to-end inference time and peak memory on a realistic chest CT.

A ``n_slices x size x size`` phantom chest CT (:func:`bench_volume`: the phantom anatomy at 10 mm slices,
interpolated along z to ``n_slices`` slices over the same 30 cm, 1 mm apart for 300 slices) is written as a
DICOM series; then ``meddl infer lung`` runs on it in a fresh child process, as a user runs it: DICOM reading,
checks, lung segmentation, network input, risk, Grad-CAM, outputs (segmentation, labelmap, heatmap NRRD and
overlay PNG). The wall time of the child (start-up and imports included) is ``seconds_end_to_end``; its peak
resident memory (``ru_maxrss`` from :func:`os.wait4`, the child's alone) is ``peak_rss_mb``; the child's
``result.json`` gives the split per step. The network is the improved recipe's with seeded random weights
(time and memory do not depend on the weights).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from MedDLLib.bench import run_meddl_child
from MedDLLib.errors import MedDLError
from MedDLLib.geometry import Geometry, Volume

#: The issue's targets on 2 CPU cores.
TARGET_SECONDS = 60.0
TARGET_MB = 4096.0
#: The improved recipe's network width (``LungSurvivalLib.model.train_model``).
IMPROVED_WIDTH = 8
#: z extent of the benchmark chest (mm).
EXTENT_Z_MM = 300.0


def bench_volume(size: int = 512, n_slices: int = 300, seed: int = 0) -> Volume:
    """A phantom chest CT ``[n_slices, size, size]`` in HU spanning ``EXTENT_Z_MM`` (linear interpolation in z)."""
    from scipy.ndimage import zoom

    from .phantom import SLICE_MM, chest_ct

    coarse_slices = max(int(round(EXTENT_Z_MM / SLICE_MM)), 12)
    coarse, _, _ = chest_ct(np.random.default_rng(seed), size, coarse_slices)
    if n_slices == coarse_slices:
        return coarse
    array = zoom(coarse.array, (n_slices / coarse_slices, 1.0, 1.0), order=1, mode="nearest", grid_mode=True)
    g = coarse.geometry
    spacing_z = g.spacing_mm[2] * coarse_slices / n_slices
    # keep the centre of the slab: the first slice centre moves by half the change of spacing
    origin = np.array(g.origin_lps_mm) + np.array(g.direction)[:, 2] * (spacing_z - g.spacing_mm[2]) / 2.0
    geometry = Geometry((g.spacing_mm[0], g.spacing_mm[1], spacing_z), tuple(origin), g.direction_lps)
    return Volume(array.astype(np.float32), geometry, dict(coarse.metadata))


def bench_inference(size: int = 512, n_slices: int = 300, *, force_cpu: bool = False,
                    device: str | None = None) -> dict[str, Any]:
    """Seconds and peak RSS (MB) of ``meddl infer lung`` on a ``n_slices x size x size`` DICOM chest CT.

    Raises:
        MedDLError: the child inference failed (its output is in the message).
    """
    import json

    from MedDLLib.dicomwrite import write_series

    from .model import recipe, untrained_package

    if size < 32 or n_slices < 12:
        raise MedDLError(f"bench size {size} x {n_slices} slices is too small for a chest CT (>= 32 x 12)")
    with tempfile.TemporaryDirectory(prefix="meddl-lung-bench-") as tmp:
        tmp_path = Path(tmp)
        start = time.perf_counter()
        volume = bench_volume(size, n_slices)
        write_series(tmp_path / "ct", volume, file_names="instance")
        prepare_s = time.perf_counter() - start
        shape, spacing = list(volume.array.shape), [round(v, 4) for v in volume.geometry.spacing_mm]
        del volume
        # the network the improved recipe trains (width 8 on a 32^3 crop)
        package = untrained_package(tmp_path, width=IMPROVED_WIDTH, size=recipe("improved").spec.size)
        arguments = ["infer", "lung", "--input", str(tmp_path / "ct"), "--model", str(package),
                     "--output", str(tmp_path / "out")]
        if force_cpu:
            arguments.append("--force-cpu")
        if device:
            arguments += ["--device", device]
        code, seconds, peak_mb = run_meddl_child(arguments, tmp_path / "log.txt", "LungSurvivalLib.cli:TASK",
                                                 Path(__file__).resolve().parents[1])
        if code != 0:
            raise MedDLError(f"meddl infer lung failed in the benchmark (exit {code}):\n"
                             + (tmp_path / "log.txt").read_text()[-3000:])
        result = json.loads((tmp_path / "out" / "result.json").read_text())
    steps = {f"seconds_{k}": v for k, v in result.get("seconds", {}).items()}
    return {"shape_kji": shape, "spacing_mm": spacing, "input": "DICOM series, 16-bit", "device": device or "auto",
            "seconds_end_to_end": round(seconds, 2), **steps, "peak_rss_mb": round(peak_mb, 1),
            "total_lung_ml": result["total_lung_ml"], "seconds_phantom": round(prepare_s, 1),
            "within_target": bool(seconds < TARGET_SECONDS and peak_mb < TARGET_MB),
            "target": f"< {TARGET_SECONDS:.0f} s and < {TARGET_MB:.0f} MB on 2 CPU cores"}


def bench_cold_and_runtime(size: int = 512, n_slices: int = 300, *, runs: int = 3, repeats: int = 5,
                           ceiling: dict[str, Any] | None = None) -> dict[str, Any]:
    """Cold ``meddl infer lung`` on a ``n_slices x size x size`` DICOM chest CT (fresh child each: start-up,
    imports, reading, lungs, network input, risk, Grad-CAM, every output), torch eager and the chosen runtime
    alternately (:func:`MedDLLib.bench.end_to_end_rows`), and the improved recipe's network forward on a crop of
    that study, torch eager fp32 against the runtime, same weights and input (:func:`MedDLLib.bench.runtime_rows`),
    and the Grad-CAM pass a study with a heatmap runs instead (:func:`MedDLLib.bench.gradcam_row`), with their
    achieved GFLOP/s and their share of the machine's ceiling (``ceiling``: :func:`MedDLLib.bench.machine_ceiling`'s
    result; measured here when None).
    """
    from MedDLLib import bench
    from MedDLLib.dicomwrite import write_series
    from MedDLLib.models import load_package
    from MedDLLib.runtime import probabilities_agree

    from .model import GRADCAM_LAYER, recipe, untrained_package
    from .preprocess import InputSpec, network_input, segment_lungs

    result: dict[str, Any] = {"task": "lung", "machine": bench.machine(), "caveat": bench.caveat(),
                              "end_to_end_input": f"DICOM chest CT of {n_slices} x {size} x {size}, Grad-CAM on",
                              "network": f"improved recipe: 3D CNN width {IMPROVED_WIDTH} on a 32^3 crop",
                              "runtime": {}}
    with tempfile.TemporaryDirectory(prefix="meddl-lung-bench-") as tmp:
        tmp_path = Path(tmp)
        volume = bench_volume(size, n_slices)
        write_series(tmp_path / "ct", volume, file_names="instance")
        package = untrained_package(tmp_path, width=IMPROVED_WIDTH, size=recipe("improved").spec.size)
        arguments = ["infer", "lung", "--input", str(tmp_path / "ct"), "--model", str(package),
                     "--output", str(tmp_path / "out"), "--force-cpu"]
        result["end_to_end"] = bench.end_to_end_rows(arguments, tmp_path / "out", "LungSurvivalLib.cli:TASK",
                                                     Path(__file__).resolve().parents[1], runs=runs)
        loaded = load_package(package)
        x, _, _ = network_input(volume, segment_lungs(volume).labels, InputSpec.from_metadata(loaded.metadata["input"]))
        del volume
        result["ceiling"] = ceiling or bench.machine_ceiling()
        result["runtime"]["cnn3d"] = bench.runtime_rows(loaded.network("cpu"), loaded, x[None],
                                                        probabilities_agree("identity"), repeats=repeats,
                                                        ceiling=result["ceiling"])
        # what a study with a heatmap runs instead (LungSurvivalLib.logic.compute): Grad-CAM's pass gives the risk too
        result["gradcam"] = {"cnn3d": bench.gradcam_row(
            loaded.network("cpu"), x[None], loaded.metadata["output"].get("gradcam_layer", GRADCAM_LAYER),
            repeats=repeats, ceiling=result["ceiling"], class_index=0, bf16=False, return_logits=True)}
    return result
