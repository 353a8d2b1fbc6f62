"""The rules behind the fuzz suite's outcomes, checked on values (issue 18): what is set aside, what is kept, what is
refused, on copies of the real chest CT and pydicom's test files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from MedDLLib import dicom
from MedDLLib.errors import DicomError, InputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_inputs as fz  # noqa: E402

needs_real = pytest.mark.skipif(not fz.REAL_CT.is_dir(), reason=f"real chest CT not found at {fz.REAL_CT}")


@needs_real
def test_position_outlier_is_set_aside_and_the_rest_is_the_real_stack(tmp_path):
    series = fz.copy_real_ct(tmp_path / "study")
    files = fz.dicom_files(series)
    fz.edit(files[-1:], fz.set_raw("ImagePositionPatient", ["-173.1767578125", "-294.1767578125", "1000000"]))
    found = dicom.find_series(series)
    assert len(found) == 1 and len(found[0].files) == 9 and files[-1] not in found[0].files
    assert any("set aside" in p and files[-1].name in p for p in found[0].problems)
    volume = dicom.read_series(found[0])
    assert volume.shape_kji[0] == 9 and volume.geometry.spacing_mm[2] == pytest.approx(24.0)
    clean = fz.copy_real_ct(tmp_path / "clean")
    (clean / files[-1].name).unlink()
    reference = dicom.read_dicom_folder(clean)
    np.testing.assert_array_equal(volume.array, reference.array)
    assert reference.geometry.allclose(volume.geometry)


@needs_real
def test_a_gap_that_would_make_thousands_of_slices_is_refused(tmp_path):
    series = fz.copy_real_ct(tmp_path / "study")
    files = fz.dicom_files(series)
    z = float(pydicom.dcmread(files[-2]).ImagePositionPatient[2])
    x, y = (str(v) for v in pydicom.dcmread(files[-1]).ImagePositionPatient[:2])
    fz.edit(files[-1:], fz.set_raw("ImagePositionPatient", [x, y, str(z + 2000.0)]))  # 2 m: not an outlier by rule
    with pytest.raises(DicomError, match="would make .* slices"):
        dicom.read_dicom_folder(series)


def test_trailing_padding_of_one_row_is_read_like_pydicom():
    path = pydicom.data.get_testdata_file("MR_small_padded.dcm")
    volume = dicom.read_dicom_folder(path)
    np.testing.assert_array_equal(volume.array[0], pydicom.dcmread(path).pixel_array)


@needs_real
def test_missing_pixel_spacing_refused_for_inference_and_assumed_for_convert(tmp_path):
    series = fz.copy_real_ct(tmp_path / "study")
    fz.edit(fz.dicom_files(series), fz.delete("PixelSpacing"))
    with pytest.raises(DicomError, match="no PixelSpacing .* pixel size is unknown"):
        dicom.read_dicom_folder(series)
    volume = dicom.read_dicom_folder(series, unknown_spacing="assume_1mm")
    assert volume.geometry.spacing_mm[:2] == (1.0, 1.0)
    assert any("pixels taken as 1 mm" in w for w in volume.metadata["warnings"])
    summary = dicom.inspect_folder(series)[0]
    assert any("pixel size is unknown" in p for p in summary["problems"])


def test_stale_staging_folders_of_dead_processes_only_are_removed(tmp_path):
    from MedDLLib.io import atomic_folder, clean_stale_partials

    out = tmp_path / "out"
    live = tmp_path / f".out.{os.getpid()}-live.partial"
    dead = tmp_path / ".out.999999999-dead.partial"
    legacy = tmp_path / ".out.x1y2z3.partial"
    other = tmp_path / ".other.999999999-dead.partial"
    for p in (live, dead, legacy, other):
        p.mkdir()
    removed = clean_stale_partials(out)
    assert sorted(removed) == sorted([dead, legacy])
    assert live.exists() and other.exists()
    with atomic_folder(out) as staging:
        assert staging.name.startswith(f".out.{os.getpid()}-")
        (staging / "a.txt").write_text("x")
    assert (out / "a.txt").is_file()


def test_named_pipe_is_never_opened(tmp_path):
    from MedDLLib.io import load_volume

    pipe = tmp_path / "ct.nrrd"
    os.mkfifo(pipe)
    with pytest.raises(InputError, match="not a regular file"):
        load_volume(None, pipe)
    found = dicom.find_series(tmp_path)
    assert not found and "not a regular file" in found.skipped[0][1]
