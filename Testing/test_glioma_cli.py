"""`meddl phantom|infer|evaluate|batch glioma`: output contracts (result.json, heatmap.nrrd, overlay.png,
metrics.json) with an untrained network (the contract does not depend on the weights)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bad_files import UNREADABLE_KINDS, unreadable_volume_file
from GliomaClassifierLib import dataset, model, preprocess
from GliomaClassifierLib.card import model_card


def _meddl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MedDLLib.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glioma_cli") / "data"
    proc = _meddl("phantom", "glioma", str(root), "--cases", "10", "--seed", "2", "--size", "24", "--slices", "12")
    assert proc.returncode == 0, proc.stderr
    assert "achievable_auroc: 0.97" in proc.stdout
    return root


def test_phantom_writes_only_the_asked_sequences_and_no_flagged_ids(tmp_path):
    proc = _meddl("phantom", "glioma", str(tmp_path), "--cases", "8", "--seed", "1", "--size", "16", "--slices",
                  "8", "--sequences", "FLAIR", "T1wCE", "--no-flagged")
    assert proc.returncode == 0, proc.stderr
    folders = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert folders == [f"{i:05d}" for i in range(8)]  # flagged ids would replace the last three
    assert {p.name for p in (tmp_path / "train" / "00003").iterdir()} == {"FLAIR", "T1wCE"}
    bad = _meddl("phantom", "glioma", str(tmp_path / "x"), "--cases", "2", "--sequences", "DWI")
    assert bad.returncode == 2 and "invalid choice: 'DWI'" in bad.stderr


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return model.untrained_package(tmp_path_factory.mktemp("glioma_model") / "m", sequences=("T1wCE", "FLAIR"),
                                   size=24, depth=12)


def test_infer_writes_result_heatmap_and_overlay(phantoms, package, tmp_path):
    case = phantoms / "train" / "00001"
    out = tmp_path / "out"
    proc = _meddl("infer", "glioma", "--input", str(case), "--model", str(package), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["probability"] <= 1.0
    assert "Research use only" in result["model_card"] and "close to chance" in result["model_card"]
    assert result["sequences"] == ["T1wCE", "FLAIR"]
    assert result["window_last_slice"] - result["window_first_slice"] + 1 == 12
    heat = sitk.ReadImage(str(out / "heatmap.nrrd"))
    reference = dataset.read_sequence(case / "T1wCE")  # the heatmap lies on the reference series' grid
    assert heat.GetSize() == reference.array.shape[::-1]
    assert np.allclose(heat.GetOrigin(), reference.geometry.origin_lps_mm, atol=1e-3)
    assert np.allclose(heat.GetDirection(), reference.geometry.direction.ravel(), atol=1e-6)
    values = sitk.GetArrayFromImage(heat)
    assert values.min() >= 0.0 and values.max() <= 1.0
    png = (out / "overlay.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_infer_refuses_a_study_without_the_needed_sequence(phantoms, package, tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / "T1wCE").symlink_to(phantoms / "train" / "00001" / "T1wCE")
    proc = _meddl("infer", "glioma", "--input", str(study), "--model", str(package), "--output", str(tmp_path / "o"))
    assert proc.returncode != 0
    assert "no folder FLAIR" in proc.stderr + proc.stdout


def test_evaluate_writes_flat_auroc_with_ci(phantoms, package, tmp_path):
    out = tmp_path / "metrics.json"
    proc = _meddl("evaluate", "glioma", "--data", str(phantoms), "--model", str(package), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    for key in ("auroc", "auroc_ci_low", "auroc_ci_high"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0
    assert metrics["auroc_ci_low"] <= metrics["auroc"] <= metrics["auroc_ci_high"]
    assert metrics["n_cases"] == 7 and sorted(metrics["excluded_cases"]) == ["00109", "00123", "00709"]


def test_batch_runs_every_case(phantoms, package, tmp_path):
    out = tmp_path / "batch"
    proc = _meddl("batch", "glioma", "--input", str(phantoms), "--model", str(package), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows), rows
    assert all((out / r["study"] / "heatmap.nrrd").is_file() for r in rows)


def test_natural_key_sorts_numbers_as_numbers():
    names = ["Image-10.dcm", "Image-2.dcm", "Image-1.dcm"]
    assert sorted(names, key=preprocess.natural_key) == ["Image-1.dcm", "Image-2.dcm", "Image-10.dcm"]


def test_train_writes_a_package_with_its_card(phantoms, tmp_path):
    out = tmp_path / "trained"
    proc = _meddl("train", "glioma", "--data", str(phantoms), "--out", str(out), "--recipe", "improved",
                  "--size", "24", "--depth", "12", "--epochs", "1", "--widen-factor", "0.25", "--batch-size", "2",
                  "--sequences", "T1wCE", "FLAIR")
    assert proc.returncode == 0, proc.stderr
    assert "best_epoch: 1" in proc.stdout
    metadata = json.loads((out / "configs" / "metadata.json").read_text())
    assert metadata["task"] == "glioma" and metadata["input"]["channels"] == ["T1wCE", "FLAIR"]
    assert metadata["network"]["args"]["conv1_t_stride"] == 2 and metadata["input"]["reorient"] is True
    card = model_card(metadata)
    assert "Trained on synthetic data" in card and "close to chance" in card
    assert metadata["network"]["name"] == model.EVIDENCE_NETWORK and metadata["output"]["gradcam_layer"] == "evidence"
    assert "Grad-CAM at evidence: where the network found evidence of methylation" in card
    assert "is not the tumour's outline" in card


def test_bench_measures_in_a_child_and_formats_a_table():
    from GliomaClassifierLib import bench

    res = bench.measure(stride=2, what="forward", size=32, depth=8, threads=1)
    assert res["seconds"] > 0 and res["peak_rss_mb"] > 50
    fake = {"input_dhw": [64, 256, 256], "threads": 2, "target": "t", "improved_meets_targets": True,
            **{f"{n}_{w}_{m}": 1.0 for n in ("seed", "improved") for w in ("forward", "gradcam")
               for m in ("seconds", "peak_rss_mb")}}
    table = bench.format_table(fake)
    assert "seed resnet10 stride 1" in table and "improved evidence-resnet10 stride 2" in table and "met" in table


# ------------------------------------------------------------------------------------------ bad inputs, in process
def _main(capsys, *args: object) -> tuple[int, str, str]:
    from MedDLLib.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def t1_package(tmp_path_factory) -> Path:
    return model.untrained_package(tmp_path_factory.mktemp("glioma_t1") / "m", sequences=("T1wCE",), size=16,
                                   depth=8)


def _head_ct_hu(n_slices: int = 6, size: int = 16) -> np.ndarray:
    """A small head CT in HU: air -1000 around, skull 1000 HU, brain 40 HU."""
    jj, ii = np.mgrid[:size, :size]
    r = np.hypot(jj - size / 2, ii - size / 2)
    slice_ = np.where(r < 0.35 * size, 40.0, np.where(r < 0.45 * size, 1000.0, -1000.0))
    return np.repeat(slice_[None], n_slices, axis=0).astype(np.int16)


def _bad_volume_file(folder: Path, kind: str) -> tuple[Path, str]:
    """A volume file of ``kind`` and a fragment of the one-line error it must give."""
    if kind in UNREADABLE_KINDS:
        return unreadable_volume_file(folder, kind), "could not read this volume file"
    if kind == "ct2d":
        path = folder / "ct2d.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(_head_ct_hu(1)[0]), str(path))
        return path, "like air in a CT"
    path = folder / "mr2d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray((_head_ct_hu(1)[0] + 1000).astype(np.uint16)), str(path))
    return path, "1 slice(s)"


@pytest.mark.parametrize("kind", ["junk", "truncated", "vector", "ct2d", "mr2d"])
def test_bad_volume_files_end_in_one_line_naming_the_file(t1_package, tmp_path, capsys, kind):
    path, expected = _bad_volume_file(tmp_path, kind)
    code, _, err = _main(capsys, "infer", "glioma", "--input", path, "--model", t1_package, "--output", tmp_path / "o")
    assert code == 1, err
    assert "Traceback" not in err and "meddl infer: error: " in err and str(path) in err and expected in err, err
    assert not (tmp_path / "o" / "result.json").exists()


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_infer_refuses_a_headerless_ct_volume(t1_package, tmp_path, capsys, suffix):
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(_head_ct_hu(8)), str(path))
    code, _, err = _main(capsys, "infer", "glioma", "--input", path, "--model", t1_package, "--output", tmp_path / "o")
    assert code == 1, err
    assert f"T1wCE ({path}):" in err and "like air in a CT in Hounsfield units" in err, err
    assert not (tmp_path / "o" / "result.json").exists()
    # the same folder of <sequence>.nrrd files (what the widget writes) with MR values runs
    study = tmp_path / "study"
    study.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray((_head_ct_hu(8) + 1000).astype(np.uint16)), str(study / "T1wCE.nrrd"))
    code, _, err = _main(capsys, "infer", "glioma", "--input", study, "--model", t1_package, "--output",
                         tmp_path / "mr")
    assert code == 0, err
    assert 0.0 <= json.loads((tmp_path / "mr" / "result.json").read_text())["probability"] <= 1.0


def test_infer_refuses_a_single_slice_series(t1_package, tmp_path, capsys):
    from MedDLLib.dicomwrite import write_series
    from MedDLLib.geometry import Geometry, Volume

    mr = Volume((_head_ct_hu(1) + 1000).astype(np.float32), Geometry((1.0, 1.0, 5.0), (0.0, 0.0, 0.0)), {})
    write_series(tmp_path / "study" / "T1wCE", mr, modality="MR", rescale_slope=None, rescale_intercept=None)
    code, _, err = _main(capsys, "infer", "glioma", "--input", tmp_path / "study", "--model", t1_package,
                         "--output", tmp_path / "o")
    assert code == 1, err
    assert f"T1wCE ({tmp_path / 'study' / 'T1wCE'}): 1 slice(s); the model's window is 8 slices" in err, err


def test_phantom_argument_errors_are_usage_errors_or_one_line(tmp_path, capsys):
    from MedDLLib.cli import main

    for option, value, message in (("--size", "0", "expected an integer >= 1"),
                                   ("--slices", "-2", "expected an integer >= 1"),
                                   ("--signal", "5", "expected a number in [0, 1], got 5"),
                                   ("--signal", "nan", "expected a number in [0, 1]")):
        with pytest.raises(SystemExit) as exit_info:
            main(["phantom", "glioma", str(tmp_path / "x"), "--cases", "1", option, value])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    code, _, err = _main(capsys, "phantom", "glioma", tmp_path / "x", "--cases", "1", "--size", "4")
    assert code == 1 and "glioma phantoms need size >= 8 pixels" in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


def test_bench_reports_a_failing_measurement_at_once():
    """A measurement whose child fails is a one-line MedDLError within seconds, not a 900 s wait."""
    from GliomaClassifierLib import bench
    from MedDLLib.errors import InputError, MedDLError

    with pytest.raises(MedDLError, match="glioma bench forward .*InputError"):
        bench.measure(stride=2, what="forward", size=-1, depth=0, threads=1, timeout_s=60)
    with pytest.raises(InputError, match="at least 16 voxels"):
        bench.run_bench(size=-1, depth=0)
