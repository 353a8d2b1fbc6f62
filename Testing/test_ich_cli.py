"""`meddl infer ich` output contract, refusal of the real chest CT, `meddl phantom ich`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ICHDetectorLib import phantom
from ICHDetectorLib.model import untrained_package
from MedDLLib.dicomwrite import write_series


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
