"""`meddl phantom|train|evaluate|infer|batch|bench lung` through :func:`MedDLLib.cli.main` (in process).

One tiny model per recipe is trained once for the module (8 phantoms, 2 epochs): these tests check the command
contracts (files, keys, geometry, refusals, batch bookkeeping), not what the model learned (test_lung_model.py).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from MedDLLib import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _meddl(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """8 phantom studies (TCIA layout, 64 x 64 x 24) and a tiny model of each recipe trained on them."""
    root = tmp_path_factory.mktemp("lung_cli")
    data = root / "data"
    assert cli.main(["phantom", "lung", str(data), "--cases", "8", "--seed", "3"]) == 0
    out = {"data": data}
    for recipe, size, epochs in (("improved", "16", "2"), ("seed", "24", "1")):
        package = root / f"lung-{recipe}"
        code = cli.main(["train", "lung", "--data", str(data), "--out", str(package), "--recipe", recipe,
                         "--epochs", epochs, "--size", size, "--batch-size", "4", "--seed", "0"])
        assert code == 0
        out[recipe] = package
    return out


def _series_folders(data: Path) -> list[Path]:
    return sorted({p.parent for p in data.rglob("*.dcm")})


def _sitk_series(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _ijk_to_lps(image) -> np.ndarray:
    """4x4 IJK -> LPS matrix of a SimpleITK image."""
    m = np.eye(4)
    m[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    return m


def _assert_outputs_on_input_grid(out: Path, reference) -> None:
    import SimpleITK as sitk

    for name in ("lungs.seg.nrrd", "lungs_label.nrrd", "heatmap.nrrd"):
        image = sitk.ReadImage(str(out / name))
        assert image.GetSize()[:3] == reference.GetSize(), name
        np.testing.assert_allclose(_ijk_to_lps(image), _ijk_to_lps(reference), atol=1e-3, err_msg=name)


def test_phantom_command_writes_a_tcia_cohort(trained):
    data = trained["data"]
    rows = list(csv.DictReader((data / "clinical.csv").open()))
    assert [r["PatientID"] for r in rows] == [f"LUNGPH-{n:03d}" for n in range(8)]
    assert all(float(r["Survival.time"]) > 0 and r["deadstatus.event"] in ("0", "1") for r in rows)
    series = _series_folders(data)
    assert len(series) == 8 and all(len(list(s.glob("*.dcm"))) == 24 for s in series)


@pytest.mark.parametrize("recipe", ["improved", "seed"])
def test_evaluate_writes_flat_metrics_and_km_png(tmp_path, capsys, trained, recipe, monkeypatch):
    metrics_path = tmp_path / "metrics.json"
    monkeypatch.chdir(tmp_path)  # --out relative to the working folder: km_png is still an absolute path
    code, out, err = _meddl(capsys, "evaluate", "lung", "--data", trained["data"], "--model", trained[recipe],
                            "--out", "metrics.json")
    assert code == 0, err
    metrics = json.loads(metrics_path.read_text())
    assert metrics["recipe"] == recipe and metrics["n_studies"] == 8
    for key in ("c_index", "c_index_ci_low", "c_index_ci_high", "logrank_p"):
        assert isinstance(metrics[key], float), key
    assert 0.0 <= metrics["c_index_ci_low"] <= metrics["c_index"] <= metrics["c_index_ci_high"] <= 1.0
    assert 0.0 <= metrics["logrank_p"] <= 1.0
    if recipe == "seed":
        assert 0.0 <= metrics["accuracy_ci_low"] <= metrics["accuracy"] <= metrics["accuracy_ci_high"] <= 1.0
    else:
        assert "accuracy" not in metrics
    km = Path(metrics["km_png"])
    assert km.is_absolute() and km.parent == tmp_path.resolve()
    assert km.read_bytes()[:8] == PNG_MAGIC and km.stat().st_size > 1000


def test_infer_output_contract_and_geometry(tmp_path, capsys, trained):
    study = _series_folders(trained["data"])[0]
    out = tmp_path / "out"
    code, _, err = _meddl(capsys, "infer", "lung", "--input", study, "--model", trained["improved"], "--output", out)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["left_lung_ml"] > 100 and result["right_lung_ml"] > 100
    assert result["total_lung_ml"] == pytest.approx(result["left_lung_ml"] + result["right_lung_ml"], abs=1e-2)
    assert np.isfinite(result["risk_score"]) and result["risk_group"] in ("low", "high")
    assert "Research use only" in result["caveat"]
    for name in ("lungs.seg.nrrd", "lungs_label.nrrd", "heatmap.nrrd", "overlay.png"):
        assert (out / name).is_file(), name
    assert (out / "overlay.png").read_bytes()[:8] == PNG_MAGIC
    _assert_outputs_on_input_grid(out, _sitk_series(study))
    # the labelmap's volumes are the reported ones
    import SimpleITK as sitk

    label = sitk.ReadImage(str(out / "lungs_label.nrrd"))
    voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
    labels = sitk.GetArrayFromImage(label)
    assert (labels == 1).sum() * voxel_ml == pytest.approx(result["right_lung_ml"], abs=0.01)
    assert (labels == 2).sum() * voxel_ml == pytest.approx(result["left_lung_ml"], abs=0.01)


def test_infer_on_the_real_chest_ct(tmp_path, capsys, trained, real_data):
    chest = real_data / "ct_chest_tcia_lung_pet_ct_dx_A0002" / "dicom"
    out = tmp_path / "real"
    code, _, err = _meddl(capsys, "infer", "lung", "--input", chest, "--model", trained["improved"], "--output", out)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    # 30 slices 8 mm apart (24 cm) of an adult chest: both lungs, each several hundred mL in view
    assert result["right_lung_ml"] > 300 and result["left_lung_ml"] > 300, result
    assert 1000 < result["total_lung_ml"] < 8000, result
    _assert_outputs_on_input_grid(out, _sitk_series(chest))


def test_infer_refuses_head_ct_and_mr(tmp_path, capsys, trained):
    from ICHDetectorLib.phantom import head_ct
    from MedDLLib.dicomwrite import write_series

    head, _, _ = head_ct(np.random.default_rng(1), 64, 12)
    write_series(tmp_path / "head", head)
    code, _, err = _meddl(capsys, "infer", "lung", "--input", tmp_path / "head", "--model", trained["improved"],
                          "--output", tmp_path / "o1")
    assert code == 1
    assert "meddl infer: error:" in err and ("no lungs found" in err or "does not look like a chest CT" in err), err
    assert not (tmp_path / "o1" / "result.json").exists()

    from LungSurvivalLib.phantom import chest_ct

    chest, _, _ = chest_ct(np.random.default_rng(2), 48, 20)
    write_series(tmp_path / "mr", chest.with_array(np.clip(chest.array + 1024.0, 0, 4095)), modality="MR",
                 rescale_intercept=0.0)
    code, _, err = _meddl(capsys, "infer", "lung", "--input", tmp_path / "mr", "--model", trained["improved"],
                          "--output", tmp_path / "o2")
    assert code == 1
    assert "modality is 'MR'" in err, err
    assert not (tmp_path / "o2" / "result.json").exists()


def test_batch_keeps_going_and_records_the_failure(tmp_path, capsys, trained):
    studies = tmp_path / "studies"
    for n, series in enumerate(_series_folders(trained["data"])[:2]):
        shutil.copytree(series, studies / f"study{n}")
    (studies / "broken").mkdir()
    (studies / "broken" / "1-001.dcm").write_bytes(b"not a DICOM file" * 8)
    out = tmp_path / "batch"
    code, stdout, err = _meddl(capsys, "batch", "lung", "--input", studies, "--model", trained["improved"],
                               "--output", out)
    assert code == 1  # one study failed
    assert "3 studies: 2 done" in stdout and "1 failed" in stdout
    summary = {r["study"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert {summary[s]["status"] for s in ("study0", "study1")} == {"ok"} and summary["broken"]["status"] == "failed"
    for s in ("study0", "study1"):
        result = json.loads((out / s / "result.json").read_text())
        assert result["risk_group"] in ("low", "high") and result["left_lung_ml"] > 100
        assert (out / s / "lungs.seg.nrrd").is_file()
    failures = list(csv.DictReader((out / "failures.csv").open()))
    assert [f["study"] for f in failures] == ["broken"]
    assert "broken" in err


def test_bench_at_a_tiny_size(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, stdout, err = _meddl(capsys, "bench", "lung", "--size", "64", "--slices", "40", "--runs", "0",
                                 "--out", out)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["shape_kji"] == [40, 64, 64]
    for key in ("seconds_end_to_end", "seconds_read", "seconds_segmentation", "seconds_network", "seconds_write",
                "peak_rss_mb", "total_lung_ml"):
        assert result[key] > 0, key
        assert f"{key}: " in stdout
    steps = sum(result[f"seconds_{s}"] for s in ("read", "segmentation", "network", "write"))
    assert steps <= result["seconds_end_to_end"] and result["within_target"] in (True, False)
    assert "60 s" in result["target"]


def test_train_seed_with_5_fold_cross_validation(tmp_path, capsys, trained):
    """`meddl train lung --recipe seed --folds 5`: patient-level folds, accuracy with CI, stored in the model card."""
    package = tmp_path / "seed-cv"
    code, stdout, err = _meddl(capsys, "train", "lung", "--data", trained["data"], "--out", package, "--recipe",
                               "seed", "--epochs", "1", "--size", "24", "--batch-size", "4", "--folds", "5")
    assert code == 0, err
    folds = sorted(p.name for p in (tmp_path / "seed-cv-cv").iterdir() if "." not in p.name)  # + .training logs
    assert folds == [f"fold-{k}" for k in range(5)]
    values = dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)
    fold_acc = json.loads(values["cv_fold_accuracy"])
    assert len(fold_acc) == 5 and all(0.0 <= a <= 1.0 for a in fold_acc)
    acc, low, high = (float(values[k]) for k in ("cv_accuracy", "cv_accuracy_ci_low", "cv_accuracy_ci_high"))
    assert 0.0 <= low <= acc <= high <= 1.0
    # every one of the 8 patients is predicted once, out of fold: the pooled accuracy counts patients
    assert acc * 8 == pytest.approx(round(acc * 8)) and min(fold_acc) <= acc <= max(fold_acc)
    from MedDLLib.models import load_package

    card = load_package(package).metadata["metrics"]["cv_accuracy"]
    assert card["value"] == pytest.approx(acc) and card["folds"] == 5 and card["ci95"] == pytest.approx([low, high])


def test_phantom_argument_errors_are_usage_errors_or_one_line(tmp_path, capsys):
    from LungSurvivalLib.phantom import write_dataset
    from MedDLLib.errors import InputError

    for option, value in (("--size", "0"), ("--slices", "-3"), ("--cases", "0")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["phantom", "lung", str(tmp_path / "x"), option, value])
        assert exit_info.value.code == 2
        assert "expected an integer >= 1" in capsys.readouterr().err
    code, _, err = _meddl(capsys, "phantom", "lung", tmp_path / "x", "--cases", "1", "--size", "8")
    assert code == 1 and "lung phantoms need size >= 16 pixels and >= 2 slices" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="got size 64, 1 slices"):
        write_dataset(tmp_path / "x", 1, n_slices=1)
    assert not (tmp_path / "x").exists()


def test_finding_the_lung_task_imports_no_torch():
    """The task is found without torch, so a cold infer reads the study in a forked child while torch loads
    (MedDLLib.prefetch forks only a process without torch)."""
    import subprocess
    import sys

    code = ("import sys; from MedDLLib.taskregistry import get_task; from MedDLLib import prefetch; "
            "get_task('lung'); assert 'torch' not in sys.modules, 'torch imported'; "
            "assert prefetch._fork_is_safe()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
