"""`meddl infer ich` output contract, refusal of the real chest CT, `meddl phantom ich`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bad_files import UNREADABLE_KINDS, unreadable_volume_file
from ICHDetectorLib import phantom
from ICHDetectorLib.model import untrained_package
from MedDLLib.dicomwrite import write_series
from MedDLLib.errors import InputError


def _meddl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "MedDLLib.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return untrained_package(tmp_path_factory.mktemp("model"), 64)


def test_infer_writes_outputs_in_input_geometry(tmp_path, model):
    volume, _, _ = phantom.head_ct(np.random.default_rng(5), 48, 8, ("intraparenchymal",))
    write_series(tmp_path / "study", volume.with_array(phantom.encode_bad_intercept(volume.array)),
                 rescale_intercept=0.0, bits_stored=12, pixel_representation=0)
    out = tmp_path / "out"
    proc = _meddl("infer", "ich", "--input", str(tmp_path / "study"), "--model", str(model), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    for label in ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"):
        assert 0.0 <= result[f"{label}_probability"] <= 1.0
    rows = list(csv.DictReader((out / "probabilities.csv").open()))
    assert [int(r["slice"]) for r in rows] == list(range(8))
    assert result["any_probability"] == pytest.approx(max(float(r["any"]) for r in rows), abs=1e-5)
    import SimpleITK as sitk

    heat = sitk.ReadImage(str(out / "heatmap.nrrd"))
    assert heat.GetSize() == (48, 48, 8)
    np.testing.assert_allclose(heat.GetSpacing(), volume.geometry.spacing_mm, atol=1e-4)
    np.testing.assert_allclose(heat.GetOrigin(), volume.geometry.origin_lps_mm, atol=1e-3)
    seg = sitk.ReadImage(str(out / "suspected.seg.nrrd"))
    np.testing.assert_allclose(seg.GetSpacing(), volume.geometry.spacing_mm, atol=1e-4)
    assert (out / "overlay.png").stat().st_size > 1000
    assert "research use only" in result["summary"]


def test_infer_refuses_real_chest_ct(tmp_path, model, real_data):
    chest = real_data / "ct_chest_tcia_lung_pet_ct_dx_A0002" / "dicom"
    proc = _meddl("infer", "ich", "--input", str(chest), "--model", str(model), "--output", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert "does not look like a head CT" in proc.stderr and "lung density" in proc.stderr
    assert not (tmp_path / "o" / "result.json").exists()


def test_head_ct_check_runs_where_the_study_is_read_and_not_again(tmp_path, model, real_data, monkeypatch):
    """The head-CT check runs in read_study (in a cold infer: the forked reader, while torch loads) and compute
    takes its result: one check a run, the same result and refusal; another accept_non_head checks again."""
    from ICHDetectorLib import logic, preprocess
    from MedDLLib.pipeline import run_study
    from MedDLLib.taskregistry import get_task

    volume, _, _ = phantom.head_ct(np.random.default_rng(2), 48, 6, ("subdural",))
    write_series(tmp_path / "study", volume)
    calls = []
    original = preprocess.check_head_ct
    for module in (preprocess, logic):  # where read_study and compute find it
        monkeypatch.setattr(module, "check_head_ct", lambda *a, **k: calls.append(k) or original(*a, **k))
    task = get_task("ich")
    options = task.options_type(device="cpu")
    result = run_study(task, tmp_path / "study", model, tmp_path / "out", options)
    assert calls == [{"accept_non_head": False}] and "accepted_non_head" not in result
    checked = task.read_study(tmp_path / "study", None, options)
    calls.clear()
    task.compute(checked, _loaded(task, model),
                 task.options_type(device="cpu", accept_non_head=True))
    assert calls == [{"accept_non_head": True}]  # recorded for the other option: checked again
    chest = real_data / "ct_chest_tcia_lung_pet_ct_dx_A0002" / "dicom"
    with pytest.raises(InputError, match="does not look like a head CT"):
        task.read_study(chest, None, options)
    note = task.read_study(chest, None, task.options_type(device="cpu", accept_non_head=True))
    assert "does not look like a head CT" in note.reference_volume.metadata[preprocess.HEAD_CT_CHECK].note


def _loaded(task, model):
    from MedDLLib.pipeline import load_model

    return load_model(task, model, "cpu")


def test_phantom_command(tmp_path):
    proc = _meddl("phantom", "ich", str(tmp_path / "p"), "--cases", "3", "--size", "32", "--slices", "6")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p" / "stage_2_train.csv").read_text().startswith("ID,Label\n")
    assert len(list((tmp_path / "p" / "stage_2_train").glob("ID_*.dcm"))) == 18


def test_bench_end_to_end_runs_meddl_infer_in_a_child():
    from ICHDetectorLib.bench import bench_end_to_end

    result = bench_end_to_end(size=64, n_slices=6, net_size=32)
    assert result["end_to_end_seconds"] > 0
    assert 50 < result["end_to_end_peak_rss_mb"] < 4096  # the child's own peak: a Python with torch loaded


# ------------------------------------------------------------------------------------------ bad inputs, in process
def _main(capsys, *args: object) -> tuple[int, str, str]:
    from MedDLLib.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _bad_volume_file(folder: Path, kind: str) -> tuple[Path, str]:
    """A volume file of ``kind`` and a fragment of the one-line error it must give."""
    import SimpleITK as sitk

    if kind in UNREADABLE_KINDS:
        return unreadable_volume_file(folder, kind), "could not read this volume file"
    hu = np.full((4, 16, 16), -1000, np.int16)
    hu[:, 4:12, 4:12] = 40
    path = folder / "mr2d.nii.gz"  # an MR slice: no air below -500
    sitk.WriteImage(sitk.GetImageFromArray((hu[0] + 1000).astype(np.uint16)), str(path))
    return path, "are not Hounsfield units of a CT"


@pytest.mark.parametrize("kind", ["junk", "truncated", "vector", "mr2d"])
def test_bad_volume_files_end_in_one_line_naming_the_file(model, tmp_path, capsys, kind):
    path, expected = _bad_volume_file(tmp_path, kind)
    code, _, err = _main(capsys, "infer", "ich", "--input", path, "--model", model, "--output", tmp_path / "o")
    assert code == 1, err
    assert "Traceback" not in err and "meddl infer: error: " in err and str(path) in err and expected in err, err
    assert not (tmp_path / "o" / "result.json").exists()


def test_phantom_argument_errors_are_usage_errors_or_one_line(tmp_path, capsys):
    from MedDLLib.cli import main

    for option, value in (("--size", "0"), ("--slices", "0"), ("--cases", "-1")):
        with pytest.raises(SystemExit) as exit_info:
            main(["phantom", "ich", str(tmp_path / "x"), option, value])
        assert exit_info.value.code == 2
        assert "expected an integer >= 1" in capsys.readouterr().err
    code, _, err = _main(capsys, "phantom", "ich", tmp_path / "x", "--cases", "1", "--size", "8")
    assert code == 1 and "ICH phantoms need size >= 16 pixels" in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="positive_fraction must be in"):
        phantom.write_dataset(tmp_path / "x", 1, positive_fraction=2.0)
    assert not (tmp_path / "x").exists()


def test_volume_file_outputs_stay_on_the_files_own_grid(model, tmp_path, capsys):
    """A left-handed grid (slices stored towards the feet) is kept: the outputs match the file voxel for voxel
    (what the widget's round trip node -> NRRD -> meddl -> outputs on the node's grid relies on)."""
    import SimpleITK as sitk

    volume, _, _ = phantom.head_ct(np.random.default_rng(5), 48, 8, ("intraparenchymal",))
    image = sitk.GetImageFromArray(volume.array[::-1].astype(np.int16))
    image.SetSpacing(volume.geometry.spacing_mm)
    top = np.asarray(volume.geometry.origin_lps_mm) + 7 * volume.geometry.spacing_mm[2] * np.array([0.0, 0.0, 1.0])
    image.SetOrigin(tuple(top))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))  # k towards the feet: left-handed
    path = tmp_path / "head.nrrd"
    sitk.WriteImage(image, str(path))
    code, _, err = _main(capsys, "infer", "ich", "--input", path, "--model", model, "--output", tmp_path / "o")
    assert code == 0, err
    heat = sitk.ReadImage(str(tmp_path / "o" / "heatmap.nrrd"))
    assert heat.GetSize() == image.GetSize()
    np.testing.assert_allclose(heat.GetOrigin(), image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(heat.GetDirection(), image.GetDirection(), atol=1e-6)
