"""``meddl bench lgg``: what one patient costs, cold end to end, and the network's forward, torch against the runtime.

1. **Cold end to end** (:func:`MedDLLib.bench.end_to_end_rows`): an ``n_slices x size x size`` phantom patient
   (default 88 x 256 x 256, as a TCGA-LGG study) written as three MR DICOM series (pre-contrast, FLAIR,
   post-contrast); ``meddl infer lgg`` runs on that folder in a fresh child process each time (start-up,
   imports, DICOM reading, preprocessing, the network on every slice, post-processing, every output file
   written), torch eager and the chosen runtime alternately; peak resident memory of each child (``ru_maxrss``).
2. **Forward** (:func:`MedDLLib.bench.runtime_rows`): one inference batch (``model.INFERENCE_BATCH`` prepared
   slices) of that patient through each network (default: the improved recipe's U-Net, width 16, 3 channels, at
   ``size``), torch eager fp32 against the runtime :mod:`MedDLLib.runtime` chooses, same weights, same input,
   alternating; agreement as mask Dice and largest probability difference; achieved GFLOP/s of both and their
   share of the machine's ceiling (:func:`MedDLLib.bench.machine_ceiling`, measured once per bench).
3. **Grad-CAM** (:func:`MedDLLib.bench.gradcam_row`): the ``--gradcam`` pass on one Grad-CAM batch
   (``logic.GRADCAM_BATCH`` slices) of each network, torch fp32 as a study runs it.

The networks carry seeded random weights (time and memory do not depend on the weights). Speed is measured
here, never asserted in tests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import model, preprocess


def improved_package(folder: Path, *, network: str = model.DEFAULT_NETWORK, width: int = model.DEFAULT_WIDTH,
                     size: int = 256, seed: int = 0) -> Path:
    """An improved-recipe package (brain crop, p10-p99, largest component) with seeded random weights."""
    import torch

    from MedDLLib.models import build_network, save_package

    spec = model.network_spec(network, 3, width)
    metadata = {
        "task": model.TASK, "version": model.VERSION, "recipe": "improved", "network": spec,
        "input": {"channels": ["pre-contrast", "FLAIR", "post-contrast"], "size": size,
                  "normalisation": preprocess.RECIPE_NORMALISATION["improved"], "brain_crop": True},
        "output": {"labels": model.LABELS, "activation": "sigmoid"},
        "postprocessing": {"threshold": 0.5, "largest_component": True},
        "training_data": {"kind": "synthetic", "n_studies": 0, "description": "seeded random weights (benchmark)"},
        "metrics": {},
    }
    torch.manual_seed(seed)
    return save_package(folder / f"lgg-bench-{network}", build_network({**metadata, "task": "lgg"}), metadata)


def _mask_agreement(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    from MedDLLib.runtime import dice

    p_ref, p_got = 1.0 / (1.0 + np.exp(-reference)), 1.0 / (1.0 + np.exp(-got))
    return {"mask_dice": dice(p_ref >= 0.5, p_got >= 0.5), "max_probability_difference":
            float(np.abs(p_ref - p_got).max())}


def run_bench(*, size: int = 256, n_slices: int = 88, width: int = model.DEFAULT_WIDTH,
              networks: Sequence[str] = (model.DEFAULT_NETWORK,), runs: int = 3, repeats: int = 5,
              ceiling: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both parts (see the module docstring); JSON-ready, with the machine, the ceiling (``ceiling``:
    :func:`MedDLLib.bench.machine_ceiling`'s result; measured here when None) and the caveat."""
    from MedDLLib import bench
    from MedDLLib.models import load_package

    from . import dataset
    from .phantom import write_dataset

    result: dict[str, Any] = {"task": "lgg", "machine": bench.machine(), "caveat": bench.caveat(),
                              "end_to_end_input": f"DICOM, 3 MR series of {n_slices} x {size} x {size}",
                              "network": f"improved recipe: {model.DEFAULT_NETWORK} width {width}", "runtime": {}}
    with tempfile.TemporaryDirectory(prefix="meddl-lgg-bench-") as tmp:
        tmp_path = Path(tmp)
        write_dataset(tmp_path / "data", 1, 0, size=size, n_slices=n_slices, dicom=True)
        case = dataset.scan_dataset(tmp_path / "data")[0]
        packages = {kind: improved_package(tmp_path, network=kind, width=width, size=size) for kind in networks}
        first = packages[networks[0]]
        arguments = ["infer", "lgg", "--input", str(tmp_path / "data" / "dicom" / case.case_id), "--model",
                     str(first), "--output", str(tmp_path / "out"), "--force-cpu"]
        result["end_to_end"] = bench.end_to_end_rows(arguments, tmp_path / "out", "LGGSegmenterLib.cli:TASK",
                                                     Path(__file__).resolve().parents[1], runs=runs)
        prepared = preprocess.prepare(model.case_image(case, dataset.CHANNELS), "improved", size)
        x = np.ascontiguousarray(prepared.x[:model.INFERENCE_BATCH], dtype=np.float32)
        result["ceiling"] = ceiling or bench.machine_ceiling()
        for kind, folder in packages.items():
            package = load_package(folder)
            from MedDLLib.runtime import masks_agree

            row = bench.runtime_rows(package.network("cpu"), package, x, masks_agree(), repeats=repeats,
                                     compare=_mask_agreement, ceiling=result["ceiling"])
            row["slices_per_patient"] = n_slices
            row["torch_seconds_per_patient"] = round(row["torch_median_s"] * n_slices / len(x), 2)
            row["runtime_seconds_per_patient"] = round(row["runtime_median_s"] * n_slices / len(x), 2)
            result["runtime"][kind] = row
            # --gradcam: the pass on one batch as a study runs it (only its slices with evidence, GRADCAM_BATCH at
            # a time)
            from .logic import GRADCAM_BATCH, GRADCAM_LAYERS, tumour_score

            result.setdefault("gradcam", {})[kind] = bench.gradcam_row(
                package.network("cpu"), x[:GRADCAM_BATCH], GRADCAM_LAYERS[package.metadata["network"]["name"]],
                repeats=repeats, ceiling=result["ceiling"], class_index=0, score=tumour_score, bf16=False)
    return result
