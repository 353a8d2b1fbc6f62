"""The DICOM read benchmark runs both readers on the same series and reports what it measured (no timing asserts)."""

from __future__ import annotations

import json

from MedDLLib import bench, dicomwrite

from test_dicom import random_volume


def test_bench_dicom_read_compares_both_readers(tmp_path):
    dicomwrite.write_series(tmp_path / "dicom", random_volume(shape=(6, 32, 32)))
    result = bench.bench_dicom_read(tmp_path / "dicom", repeats=3)
    assert result["files"] == 6 and result["shape_kji"] == [6, 32, 32]
    assert len(result["meddl_seconds"]) == len(result["simpleitk_seconds"]) == 3
    assert result["same_voxels_as_simpleitk"] and result["same_geometry_as_simpleitk"]
    assert result["ratio_meddl_over_simpleitk"] == result["meddl_median_s"] / result["simpleitk_median_s"]
    path = bench.write_json(result, tmp_path / "out" / "bench.json")
    assert json.loads(path.read_text()) == result
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]
    table = bench.format_table(result)
    assert "MedDL find_series+read_series" in table and "SimpleITK ImageSeriesReader" in table
    assert f"MedDL/SimpleITK = {result['ratio_meddl_over_simpleitk']:.2f}" in table


def test_bench_dicom_read_finds_the_series_below_the_folder_for_both_readers(tmp_path):
    dicomwrite.write_series(tmp_path / "study" / "dicom", random_volume(shape=(4, 16, 16)))
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    result = bench.bench_dicom_read(tmp_path / "study", repeats=1)
    assert result["files"] == 4 and result["same_voxels_as_simpleitk"] and result["same_geometry_as_simpleitk"]


def test_bench_dicom_read_says_when_meddl_resampled_a_tilted_stack(tmp_path):
    import numpy as np

    from MedDLLib.geometry import Geometry, Volume

    tilt = 15.0
    template = Volume(np.zeros((6, 16, 16)), Geometry((1.0, 1.25, 2.0), (-8.0, -10.0, -6.0)))
    noise = np.random.default_rng(0).integers(-50, 50, template.array.shape).astype(np.float64)
    dicomwrite.write_series(tmp_path / "tilted", template.with_array(noise), gantry_tilt_deg=tilt)
    result = bench.bench_dicom_read(tmp_path / "tilted", repeats=1)
    assert result["meddl_resampled"] == "gantry tilt" and not result["same_geometry_as_simpleitk"]
    assert "includes resampling this stack (gantry tilt)" in bench.format_table(result)
    dicomwrite.write_series(tmp_path / "plain", random_volume(shape=(4, 16, 16)))
    plain = bench.bench_dicom_read(tmp_path / "plain", repeats=1)
    assert plain["meddl_resampled"] == "" and "resampling" not in bench.format_table(plain)
