"""Studies, models and output fingerprints for the before/after check of the task pipeline (test_pipeline.py).

:func:`make_cases` writes, into a folder, one small study per task (phantoms) plus the real chest CT, and a
deterministic model package for each task (seeded random or hand-set weights: the check is about the pipeline,
not the weights). :func:`fingerprint` summarises a ``meddl infer`` output folder: every number of
``result.json`` and of the CSV tables, and for every volume file its shape, voxel type, IJK-to-RAS matrix and a
SHA-256 of its voxels (segmentations are read through slicer-core's segmentation storage node and exported on
the input's grid, so a file laid out differently but holding the same segments reads the same).

``python Testing/pipeline_cases.py OUT.json`` runs ``meddl infer`` on every case and writes the fingerprints
(``Testing/data/pipeline_reference.json`` was written so from the code before the task pipeline).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REAL_CHEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ct_chest_tcia_lung_pet_ct_dx_A0002"
#: result.json keys that differ between runs by nature (timings, the input path, what ran the forwards: versions
#: and the runtime chosen on this machine); keys ending in "dicom_seg" (the DICOM SEG file beside a segmentation,
#: added with the pipeline) are left out too.
VOLATILE_KEYS = ("seconds", "input", "runtime")
#: Files outside the output contract: Slicer's table schema beside a CSV (written by its table storage node before
#: the task pipeline), the DICOM SEG beside a segmentation (MedDLLib.dicomseg, when the input is DICOM).
EXTRA_SUFFIXES = (".schema.csv", ".seg.dcm")
#: Network outputs may differ this much: MedDLLib.runtime runs a network on ONNX Runtime/OpenVINO where they agree
#: with torch fp32 within 1e-3 in probability. Voxels (label hashes, voxel counts) and geometry compare exactly.
FLOAT_ABS_TOL = 1e-3


def meddl(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m MedDLLib.cli ARGS`` in a child process."""
    return subprocess.run([sys.executable, "-m", "MedDLLib.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


def _check(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args}: {proc.stderr[-2000:]}")


def make_cases(root: Path, real: bool = True) -> dict[str, dict[str, Any]]:
    """Write the studies and models into ``root``; return ``{case: {"task", "input", "model", "args"}}``."""
    from GliomaClassifierLib.model import untrained_package as glioma_package
    from ICHDetectorLib import phantom as ich_phantom
    from ICHDetectorLib.model import untrained_package as ich_package
    from LungSurvivalLib.model import untrained_package as lung_package
    from MedDLLib.dicomwrite import write_series

    root.mkdir(parents=True, exist_ok=True)
    cases: dict[str, dict[str, Any]] = {}
    # ICH: a head CT phantom with the RSNA bad intercept, as DICOM and as NRRD
    volume, _, _ = ich_phantom.head_ct(np.random.default_rng(5), 48, 8, ("intraparenchymal",))
    write_series(root / "ich_study", volume.with_array(ich_phantom.encode_bad_intercept(volume.array)),
                 rescale_intercept=0.0, bits_stored=12, pixel_representation=0)
    import SimpleITK as sitk

    from MedDLLib.resample import to_sitk

    sitk.WriteImage(to_sitk(volume.with_array(volume.array.astype(np.int16))), str(root / "ich_head.nrrd"))
    ich_model = ich_package(root / "ich_model", 64)
    cases["ich_dicom"] = {"task": "ich", "input": root / "ich_study", "model": ich_model, "args": []}
    cases["ich_nrrd"] = {"task": "ich", "input": root / "ich_head.nrrd", "model": ich_model,
                         "args": ["--heatmap-label", "intraparenchymal", "--threshold", "0.3"]}
    # LGG: a kaggle_3m phantom (tif slices) with Grad-CAM, and its DICOM FLAIR series
    _check(meddl("phantom", "lgg", root / "lgg_data", "--cases", "1", "--size", "40", "--slices", "8", "--seed", "4"))
    lgg_model = lgg_untrained_package(root / "lgg_model")
    case = next(p for p in sorted((root / "lgg_data" / "kaggle_3m").iterdir()) if p.is_dir())
    cases["lgg_tif"] = {"task": "lgg", "input": case, "model": lgg_model, "args": ["--gradcam"]}
    # lung: a chest CT phantom and the real chest CT
    _check(meddl("phantom", "lung", root / "lung_data", "--cases", "1", "--seed", "3"))
    lung_model = lung_package(root / "lung_model")
    series = sorted(p.parent for p in (root / "lung_data").rglob("*.dcm"))[0]
    cases["lung_phantom"] = {"task": "lung", "input": series, "model": lung_model, "args": []}
    if real and REAL_CHEST.is_dir():
        cases["lung_real_ct"] = {"task": "lung", "input": REAL_CHEST / "dicom", "model": lung_model, "args": []}
    # glioma: a case folder with two sequences
    _check(meddl("phantom", "glioma", root / "glioma_data", "--cases", "2", "--seed", "2", "--size", "24",
                 "--slices", "12", "--sequences", "T1wCE", "FLAIR", "--no-flagged"))
    glioma_model = glioma_package(root / "glioma_model" / "m", sequences=("T1wCE", "FLAIR"), size=24, depth=12)
    cases["glioma_case"] = {"task": "glioma", "input": root / "glioma_data" / "train" / "00001",
                            "model": glioma_model, "args": ["--threshold", "0.4"]}
    return cases


def lgg_untrained_package(folder: Path, seed: int = 0) -> Path:
    """An improved-recipe LGG package (BasicUNet, width 4, FLAIR + pre/post contrast) with seeded random weights."""
    import torch

    from LGGSegmenterLib import model
    from MedDLLib.models import build_network, save_package

    metadata = {
        "task": "lgg", "version": "0.0.1", "recipe": "improved",
        "network": model.network_spec("unet", 3, 4),
        "input": {"channels": ["pre-contrast", "FLAIR", "post-contrast"], "size": 40, "normalisation": "p10p99",
                  "brain_crop": True},
        "output": {"labels": ["tumour"], "activation": "sigmoid"},
        "postprocessing": {"threshold": 0.5, "largest_component": True},
        "training_data": {"kind": "synthetic", "n_studies": 0, "description": "seeded random weights (tests)"},
        "metrics": {},
    }
    torch.manual_seed(seed)
    return save_package(folder / "lgg-random", build_network(metadata), metadata)


def infer(case: dict[str, Any], out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``meddl infer <task> --input ... --model ... --output out`` for one case."""
    return meddl("infer", case["task"], "--input", case["input"], "--model", case["model"], "--output", out,
                 *case["args"], env=env)


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _numbers(value: Any) -> Any:
    """Numbers rounded to 6 significant digits (text and booleans as they are), recursively."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(f"{float(value):.6g}")
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_numbers(v) for v in value]
    return value


def _volume_print(path: Path) -> dict[str, Any]:
    import SimpleITK as sitk

    from MedDLLib.resample import from_sitk

    volume = from_sitk(sitk.ReadImage(str(path)), {})
    array = volume.array
    return {"shape": list(array.shape), "dtype": str(array.dtype),
            "ijk_to_ras": np.round(volume.geometry.ijk_to_ras(), 5).tolist(), "sha256": _sha(array),
            "sum": float(f"{float(array.astype(np.float64).sum()):.7g}"), "max": float(array.max()),
            "nonzero": int(np.count_nonzero(array))}


def _segmentation_print(path: Path, reference: Path) -> dict[str, Any]:
    """Segments of a ``.seg.nrrd`` read by slicer-core's storage node, exported on the grid of ``reference``."""
    import slicer

    from MedDLLib import nodes
    from MedDLLib.headless import create_scene

    hs = create_scene()
    try:
        scene = hs.scene
        ref = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(reference))
        storage.SetForceRightHandedIJKCoordinateSystem(False)
        assert storage.ReadData(ref)
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        seg_storage = slicer.vtkMRMLSegmentationStorageNode()
        seg_storage.SetFileName(str(path))
        if not seg_storage.ReadData(seg):
            raise AssertionError(f"{path}: slicer-core's segmentation storage node cannot read it")
        segmentation = seg.GetSegmentation()
        segments = {}
        for n in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(n)
            name = segment.GetName()
            mask = nodes.segment_array(seg, name, ref)
            segments[name] = {"color": [round(c, 3) for c in segment.GetColor()], "sha256": _sha(mask),
                              "nonzero": int(mask.sum())}
        return {"segments": segments}
    finally:
        hs.scene.Clear(1)


def _csv_print(path: Path) -> dict[str, Any]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    out = []
    for row in rows:
        cells = []
        for cell in row:
            try:
                cells.append(_numbers(float(cell)))
            except ValueError:
                cells.append(cell)
        out.append(cells)
    return {"rows": out}


def fingerprint(out: Path, reference_file: Path | None = None) -> dict[str, Any]:
    """What must stay the same in a ``meddl infer`` output folder (see the module docstring).

    ``reference_file``: a volume file on the input's grid (for segmentations); default: ``heatmap.nrrd`` /
    ``*_label.nrrd`` / ``gradcam.nrrd`` of the folder itself.
    """
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    kept = {k: v for k, v in result.items() if k not in VOLATILE_KEYS and not k.endswith("dicom_seg")}
    prints: dict[str, Any] = {"result": _numbers(kept)}
    files = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.endswith(EXTRA_SUFFIXES))
    prints["files"] = files
    volumes = [n for n in files if n.endswith(".nrrd") and not n.endswith(".seg.nrrd")]
    reference = reference_file or (out / volumes[0] if volumes else None)
    for name in files:
        path = out / name
        if name.endswith(".seg.nrrd"):
            prints[name] = _segmentation_print(path, reference)
        elif name.endswith(".nrrd"):
            prints[name] = _volume_print(path)
        elif name.endswith(".csv"):
            prints[name] = _csv_print(path)
    return prints


def differences(new: dict[str, Any], old: dict[str, Any]) -> list[str]:
    """The entries of two fingerprints that differ (NaN equals NaN; files outside the contract are ignored)."""
    old = {k: v for k, v in old.items() if not k.endswith(EXTRA_SUFFIXES)}
    new, old = _float_voxels_by_value(new), _float_voxels_by_value(old)
    if "files" in old:
        old["files"] = [f for f in old["files"] if not f.endswith(EXTRA_SUFFIXES)]
    text = lambda value: json.dumps(value, sort_keys=True)  # noqa: E731
    return [f"{key}: now {text(new.get(key))[:400]}, before {text(old.get(key))[:400]}"
            for key in sorted(set(new) | set(old)) if not same(new.get(key), old.get(key))]


def _float_voxels_by_value(prints: dict[str, Any]) -> dict[str, Any]:
    """Float volumes (heatmaps) compared by their sum, maximum and non-zero count, not by a hash of their bits."""
    out = {}
    for key, value in prints.items():
        if isinstance(value, dict) and str(value.get("dtype", "")).startswith("float"):
            value = {k: v for k, v in value.items() if k != "sha256"}
        out[key] = value
    return out


def same(a: Any, b: Any, abs_tol: float = FLOAT_ABS_TOL) -> bool:
    """Equal structures; integers, text and hashes exactly, floats within ``abs_tol`` (NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], abs_tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, abs_tol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=abs_tol)
    return type(a) is type(b) and a == b


def main(argv: list[str]) -> int:
    target = Path(argv[0])
    with tempfile.TemporaryDirectory() as tmp:
        cases = make_cases(Path(tmp) / "cases")
        prints = {}
        for name, case in cases.items():
            out = Path(tmp) / "out" / name
            _check(infer(case, out))
            prints[name] = fingerprint(out)
            print(name, "done", file=sys.stderr)
    target.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
