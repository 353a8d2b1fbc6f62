"""The DICOM reader (MedDLLib.dicom) on synthetic series written with MedDLLib.dicomwrite and on real files.

Intensities are checked against pydicom and against the analytic phantom that was written; geometry against the
phantom's geometry and SimpleITK (test_cli_dicom.py compares the whole ``meddl convert`` path with SimpleITK).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataelem import RawDataElement
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from MedDLLib import dicom, dicomwrite
from MedDLLib.errors import DicomError
from MedDLLib.geometry import Geometry, Volume


# ------------------------------------------------------------------------------------------------ helpers
def rotation(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    """Rotation matrix (columns = rotated x, y, z axes)."""
    ax, ay, az = np.deg2rad([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


#: Slice orientations: direction matrices whose columns are the i (row), j (column) and k (normal) axes in LPS.
ORIENTATIONS = {
    "axial": np.eye(3),
    "sagittal": np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float),  # rows A->P, columns S->I
    "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float),  # rows R->L, columns S->I
    "oblique": rotation(20, -15, 35),
}


def linear_hu(points_lps: np.ndarray) -> np.ndarray:
    """An analytic phantom linear in position, so linear interpolation reproduces it: 10x - 7y + 13z HU."""
    return 10.0 * points_lps[..., 0] - 7.0 * points_lps[..., 1] + 13.0 * points_lps[..., 2]


def voxel_points_lps(volume: Volume) -> np.ndarray:
    """LPS position of every voxel of ``volume``, shape (k, j, i, 3)."""
    nk, nj, ni = volume.shape_kji
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    m = volume.geometry.ijk_to_lps()
    return (ijk @ m[:3, :3].T + m[:3, 3]).reshape(nk, nj, ni, 3)


def random_volume(shape=(8, 32, 32), direction=np.eye(3), seed=0, low=-1000, high=2000) -> Volume:
    rng = np.random.default_rng(seed)
    geometry = Geometry((0.7, 0.9, 2.5), (-11.5, 20.25, 31.0), direction)
    return Volume(rng.integers(low, high, size=shape).astype(np.int32), geometry)


def only_series(folder) -> dicom.DicomSeries:
    found = dicom.find_series(folder)
    assert len(found) == 1, [s.uid for s in found]
    return found[0]


def set_raw(path, keyword: str, text: str) -> None:
    """Write ``text`` as the value of ``keyword`` in the file at ``path`` as it is (a malformed value pydicom
    would refuse to set)."""
    ds = pydicom.dcmread(path)
    tag = Tag(keyword)
    value = text.encode() + (b" " if len(text) % 2 else b"")
    ds[tag] = RawDataElement(tag, pydicom.datadict.dictionary_VR(tag), len(value), value, 0, False, True)
    ds.save_as(path)


def set_pixels(path, stored: np.ndarray, bits_stored: int) -> None:
    """Replace the pixel data of the file at ``path`` by ``stored`` (its type sets BitsAllocated and
    PixelRepresentation)."""
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = stored.dtype.itemsize * 8, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(np.issubdtype(stored.dtype, np.signedinteger))
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds.save_as(path)


# ------------------------------------------------------------------------------------------------ sorting, geometry
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_shuffled_series_reads_back_exactly(tmp_path, orientation):
    phantom = random_volume(direction=ORIENTATIONS[orientation])
    files = dicomwrite.write_series(tmp_path, phantom, file_names="shuffled")
    # InstanceNumbers (and file names) are unrelated to position: the order must come from the positions
    instance_numbers = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
    assert instance_numbers != sorted(instance_numbers) and instance_numbers != sorted(instance_numbers)[::-1]
    series = only_series(tmp_path)
    assert series.problems == []
    assert series.files == files  # sorted along the slice normal
    assert dicom.orientation_name(series.layout.normal) == ("oblique" if orientation == "oblique" else orientation)
    volume = dicom.read_series(series)
    assert volume.array.dtype == np.int32  # 16 stored bits + intercept: needs 32 bits
    np.testing.assert_array_equal(volume.array, phantom.array)
    assert volume.geometry.allclose(phantom.geometry, atol_mm=1e-4)
    assert volume.metadata["units"] == "HU"
    assert volume.metadata["files"] == [str(f) for f in files]


def test_metadata_keys(tmp_path):
    phantom = random_volume()
    dicomwrite.write_series(tmp_path, phantom, window=[(40, 400), (-600, 1500)], series_description="Chest",
                            patient_id="P7", bits_stored=12, rescale_intercept=-1024)
    volume = dicom.read_dicom_folder(tmp_path)
    md = volume.metadata
    assert md["modality"] == "CT" and md["series_description"] == "Chest" and md["patient_id"] == "P7"
    assert md["window_center"] == [40.0, -600.0] and md["window_width"] == [400.0, 1500.0]
    first = pydicom.dcmread(md["files"][0])
    assert md["study_uid"] == first.StudyInstanceUID and md["series_uid"] == first.SeriesInstanceUID
    assert md["frame_of_reference_uid"] == first.FrameOfReferenceUID
    assert md["warnings"] == [] and md["units"] == "HU"
    assert volume.array.dtype == np.int16  # 12 stored bits - 1024 fits int16, as CT usually does


def test_workers_give_the_same_volume(tmp_path):
    phantom = random_volume(shape=(12, 32, 32))
    dicomwrite.write_series(tmp_path, phantom, transfer_syntax=RLELossless)
    serial = dicom.read_series(dicom.find_series(tmp_path, workers=1)[0], workers=1)
    parallel = dicom.read_series(dicom.find_series(tmp_path, workers=2)[0], workers=2)
    np.testing.assert_array_equal(serial.array, parallel.array)
    assert serial.geometry == parallel.geometry and serial.metadata == parallel.metadata


# ------------------------------------------------------------------------------------------------ irregular stacks
@pytest.mark.parametrize("orientation", ["axial", "oblique"])
def test_uneven_gaps_resampled_onto_regular_grid(tmp_path, orientation):
    offsets = [0.0, 2.0, 4.0, 6.0, 10.0, 12.0, 14.0, 16.0, 18.0]  # one slice missing at 8 mm
    shape = (len(offsets), 24, 32)
    template = Volume(np.zeros(shape), Geometry((1.0, 1.25, 2.0), (-16.0, -20.0, -8.0), ORIENTATIONS[orientation]))
    written = linear_hu(dicomwrite.pixel_positions_lps_mm(template, slice_offsets_mm=offsets))
    dicomwrite.write_series(tmp_path, template.with_array(written), slice_offsets_mm=offsets)
    series = only_series(tmp_path)
    assert series.layout.uneven and not series.layout.tilted
    assert any("uneven slice gaps: 2.000 to 4.000 mm" in p and "missing slices?" in p for p in series.problems)

    with pytest.raises(DicomError, match="uneven slice gaps.*refused"):
        dicom.read_series(series, irregular="refuse")

    volume = dicom.read_series(series, irregular="resample")
    assert volume.shape_kji == (10, 24, 32)  # 0..18 mm every 2 mm
    assert volume.geometry.allclose(template.geometry, atol_mm=1e-4)
    # linear interpolation of a linear phantom: exact up to the rounding of the stored integers (0.5 HU)
    np.testing.assert_allclose(volume.array, linear_hu(voxel_points_lps(volume)), atol=0.5 + 1e-4)
    assert volume.array.dtype == np.float32
    assert any("uneven gaps: resampled" in w and "9 slices -> 10 slices at 2 mm" in w
               for w in volume.metadata["warnings"])


def test_gantry_tilt_detected_and_resampled(tmp_path):
    tilt = 15.0
    template = Volume(np.zeros((10, 32, 32)), Geometry((1.0, 1.25, 2.0), (-16.0, -20.0, -8.0)))
    points = dicomwrite.pixel_positions_lps_mm(template, gantry_tilt_deg=tilt)
    dicomwrite.write_series(tmp_path, template.with_array(linear_hu(points)), gantry_tilt_deg=tilt)
    series = only_series(tmp_path)
    assert series.layout.tilted and not series.layout.uneven
    assert series.layout.tilt_deg == pytest.approx(tilt, abs=1e-3)
    assert any(p.startswith("gantry tilt") and "15.00 deg" in p for p in series.problems)

    with pytest.raises(DicomError, match="gantry tilt.*refused"):
        dicom.read_series(series, irregular="refuse")

    volume = dicom.read_series(series)
    t = np.deg2rad(tilt)
    # the orthogonal grid of the tilted image planes: rows along x, columns tilted, slices along their normal
    expected_direction = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    np.testing.assert_allclose(volume.geometry.direction, expected_direction, atol=1e-6)
    np.testing.assert_allclose(volume.geometry.spacing_mm, (1.0, 1.25, 2.0 * np.cos(t)), atol=1e-5)
    np.testing.assert_allclose(volume.geometry.origin_lps_mm, (-16.0, -20.0, -8.0), atol=1e-4)
    expected = linear_hu(voxel_points_lps(volume))
    # slice k starts k * 2 mm * sin(15 deg) = 0.41 k rows further along the columns than slice 0, so target row j
    # comes from row j - 0.41 k of source slice k; rows with no source row are filled
    shift_rows = np.arange(10) * 2.0 * np.sin(t) / 1.25
    source_row = np.arange(32)[None, :] - shift_rows[:, None]  # (k, j)
    error = np.abs(volume.array - expected)
    assert error[source_row >= 0].max() <= 0.5 + 1e-3
    assert np.all(volume.array[source_row < -0.5] == volume.array.min())  # outside the image: the fill value
    assert any("gantry tilt: resampled" in w for w in volume.metadata["warnings"])


def test_gantry_tilt_tag_without_shear_is_only_noted(tmp_path):
    phantom = random_volume(direction=rotation(12, 0, 0))  # tilted images stacked along their own normal
    dicomwrite.write_series(tmp_path, phantom, extra={"GantryDetectorTilt": "12"})
    series = only_series(tmp_path)
    assert series.layout.regular and series.problems == []
    assert any("GantryDetectorTilt (0018,1120) is 12 deg but the slices are not sheared" in w for w in series.warnings)
    volume = dicom.read_series(series, irregular="refuse")
    np.testing.assert_array_equal(volume.array, phantom.array)
    assert volume.geometry.allclose(phantom.geometry, atol_mm=1e-4)


# ------------------------------------------------------------------------------------------------ series splitting
def test_two_echoes_in_one_series_are_never_stacked(tmp_path):
    echo1, echo2 = random_volume(seed=1, low=0, high=3000), random_volume(seed=2, low=0, high=3000)
    common = dict(modality="MR", rescale_intercept=None, rescale_slope=None, series_uid="1.2.826.0.1.3680043.10.999.1",
                  study_uid="1.2.826.0.1.3680043.10.999.0", series_description="dual echo")
    dicomwrite.write_series(tmp_path, echo1, echo_number=1, echo_time_ms=10.0, seed=1, **common)
    dicomwrite.write_series(tmp_path, echo2, echo_number=2, echo_time_ms=80.0, seed=2, **common)
    found = dicom.find_series(tmp_path)
    assert [s.uid for s in found] == ["1.2.826.0.1.3680043.10.999.1#echo=1", "1.2.826.0.1.3680043.10.999.1#echo=2"]
    assert all(len(s.files) == 8 for s in found)
    assert all("holds 2 volumes that differ in EchoNumbers" in s.problems[0] for s in found)
    for series, phantom in zip(found, (echo1, echo2)):
        volume = dicom.read_series(series)
        np.testing.assert_array_equal(volume.array, phantom.array)
        assert volume.array.dtype == np.uint16 and volume.metadata["units"] == ""
    with pytest.raises(DicomError, match=r"holds 2 volumes.*#echo=1 \(dual echo, 8 slices\).*#echo=2"):
        dicom.read_dicom_folder(tmp_path)
    with pytest.raises(DicomError, match="series 1.2.826.0.1.3680043.10.999.1 holds 2 volumes, choose one"):
        dicom.read_dicom_folder(tmp_path, series_uid="1.2.826.0.1.3680043.10.999.1")
    volume = dicom.read_dicom_folder(tmp_path, series_uid="1.2.826.0.1.3680043.10.999.1#echo=2")
    np.testing.assert_array_equal(volume.array, echo2.array)


def test_repeated_positions_without_distinguishing_tags_are_split(tmp_path):
    first, second = random_volume(seed=3), random_volume(seed=4)
    uid = "1.2.826.0.1.3680043.10.999.2"
    dicomwrite.write_series(tmp_path, first, series_uid=uid, file_names="instance")
    dicomwrite.write_series(tmp_path / "more", second, series_uid=uid, file_names="instance")
    found = dicom.find_series(tmp_path)
    assert len(found) == 2 and all(len(s.files) == 8 for s in found)
    assert any("repeated slice positions that no tag tells apart" in p for p in found[0].problems)
    arrays = sorted((dicom.read_series(s).array for s in found), key=lambda a: int(a[0, 0, 0] != first.array[0, 0, 0]))
    np.testing.assert_array_equal(arrays[0], first.array)
    np.testing.assert_array_equal(arrays[1], second.array)


def test_exact_copy_of_a_file_is_dropped_with_a_warning(tmp_path):
    phantom = random_volume()
    files = dicomwrite.write_series(tmp_path, phantom, file_names="instance")
    (tmp_path / "backup").mkdir()
    copy = shutil.copy(files[3], tmp_path / "backup" / files[3].name)  # same SOPInstanceUID, same header
    series = only_series(tmp_path)
    assert series.files == files and series.problems == []
    assert series.warnings == [f"{copy} is a copy of {files[3]} (same SOPInstanceUID (0008,0018) and header): "
                               "dropped"]
    volume = dicom.read_series(series)
    np.testing.assert_array_equal(volume.array, phantom.array)
    assert series.warnings[0] in volume.metadata["warnings"]


def test_same_instance_uid_with_another_header_is_not_dropped(tmp_path):
    files = dicomwrite.write_series(tmp_path, random_volume())
    ds = pydicom.dcmread(files[3])
    ds.ImagePositionPatient = [float(v) + 100.0 for v in ds.ImagePositionPatient]  # another image, reused UID
    ds.save_as(tmp_path / "other.dcm")
    found = dicom.find_series(tmp_path)
    assert sum(len(s.files) for s in found) == 9
    assert not any("copy" in w for s in found for w in s.warnings)


def test_orientations_and_sizes_in_one_series_are_split(tmp_path):
    uid = "1.2.826.0.1.3680043.10.999.3"
    dicomwrite.write_series(tmp_path / "a", random_volume(), series_uid=uid)
    dicomwrite.write_series(tmp_path / "b", random_volume(direction=ORIENTATIONS["sagittal"]), series_uid=uid)
    dicomwrite.write_series(tmp_path / "c", random_volume(shape=(8, 16, 32)), series_uid=uid)
    found = dicom.find_series(tmp_path)
    assert sorted(s.uid.split("#")[1] for s in found) == ["orientation=1,size=32x16", "orientation=1,size=32x32",
                                                          "orientation=2"]


# ------------------------------------------------------------------------------------------------ values
def test_missing_rescale_slope_uses_slope_one(tmp_path):
    phantom = random_volume()
    dicomwrite.write_series(tmp_path, phantom, rescale_slope=None, rescale_intercept=-1024)
    volume = dicom.read_dicom_folder(tmp_path)
    np.testing.assert_array_equal(volume.array, phantom.array)
    assert any("without RescaleSlope (0028,1053): slope taken as 1" in w for w in volume.metadata["warnings"])


@pytest.mark.parametrize("pixel_representation, bits_stored, low, high",
                         [(0, 16, 0, 65535), (0, 12, 0, 4095), (1, 16, -32768, 32767), (1, 12, -2048, 2047)])
def test_signed_and_unsigned_stored_values(tmp_path, pixel_representation, bits_stored, low, high):
    phantom = random_volume(low=low, high=high + 1)
    phantom.array[0, 0, :2] = (low, high)
    dicomwrite.write_series(tmp_path, phantom, modality="MR", rescale_slope=None, rescale_intercept=None,
                            bits_stored=bits_stored, pixel_representation=pixel_representation)
    volume = dicom.read_dicom_folder(tmp_path)
    np.testing.assert_array_equal(volume.array, phantom.array)
    assert volume.array.dtype == (np.uint16 if pixel_representation == 0 else np.int16)
    for path, values in zip(volume.metadata["files"], volume.array):  # and pydicom agrees
        np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, values)


def mixed_representation_series(folder, case: str) -> list:
    """Six MR slices without Modality LUT, 12 bits unsigned, except: "signed_later": slices 3-5 are 16 bits
    signed with values down to -1024; "bits8_first": slice 0 is 8 bits. Returns the files in slice order."""
    phantom = random_volume(shape=(6, 16, 16), low=0, high=4096)
    files = dicomwrite.write_series(folder, phantom, modality="MR", rescale_slope=None, rescale_intercept=None,
                                    bits_stored=12)
    if case == "signed_later":
        for k in (3, 4, 5):
            stored = phantom.array[k].astype(np.int16) - 1024
            stored[0, 0] = -1024
            set_pixels(files[k], stored, 16)
    else:
        set_pixels(files[0], (phantom.array[0] % 256).astype(np.uint8), 8)
    return files


@pytest.mark.parametrize("case, dtype", [("signed_later", np.int16), ("bits8_first", np.uint16)])
def test_files_differing_in_pixel_representation_or_bits_keep_every_value(tmp_path, case, dtype):
    files = mixed_representation_series(tmp_path, case)
    volume = dicom.read_dicom_folder(tmp_path)
    assert volume.metadata["files"] == [str(f) for f in files]
    assert volume.array.dtype == dtype  # holds every file's values, whichever file comes first
    for path, values in zip(files, volume.array):  # as pydicom reads each file
        np.testing.assert_array_equal(values, pydicom.dcmread(path).pixel_array)


def test_values_that_do_not_fit_the_output_type_are_never_wrapped(tmp_path, monkeypatch):
    files = mixed_representation_series(tmp_path, "signed_later")
    monkeypatch.setattr(dicom, "_output_dtype", lambda luts, raw_dtype: np.dtype(raw_dtype))  # too small a type
    with pytest.raises(DicomError, match=rf"{files[3].name}: values -1024\.\.[0-9]+ do not fit uint16"):
        dicom.read_dicom_folder(tmp_path)


def test_unparseable_rescale_in_any_file_is_warned(tmp_path):
    phantom = random_volume()
    files = dicomwrite.write_series(tmp_path, phantom)  # slope 1, intercept -1024
    set_raw(files[3], "RescaleSlope", "x")
    set_raw(files[5], "RescaleSlope", "x")
    set_raw(files[6], "RescaleIntercept", "1O24")
    volume = dicom.read_dicom_folder(tmp_path)
    warnings = volume.metadata["warnings"]
    assert (f"RescaleSlope (0028,1053) is 'x', not a number: slope taken as 1 (2 of 8 files, e.g. {files[3]})"
            in warnings)
    assert f"{files[6]}: RescaleIntercept (0028,1052) is '1O24', not a number: intercept taken as 0" in warnings
    assert not any("without" in w for w in warnings)  # the tags are there, not missing
    np.testing.assert_array_equal(volume.array[[3, 5]], phantom.array[[3, 5]])  # slope 1 is what they meant
    np.testing.assert_array_equal(volume.array[6], phantom.array[6] + 1024)  # stored values as they are


def test_non_integer_rescale_gives_float32(tmp_path):
    phantom = random_volume(low=0, high=1000)
    values = phantom.array * 0.25 + 0.5
    dicomwrite.write_series(tmp_path, phantom.with_array(values), modality="MR", rescale_slope=0.25,
                            rescale_intercept=0.5)
    volume = dicom.read_dicom_folder(tmp_path)
    assert volume.array.dtype == np.float32 and volume.metadata["units"] == ""
    np.testing.assert_allclose(volume.array, values, rtol=0, atol=1e-4)


def test_monochrome1_is_inverted_to_monochrome2_sense(tmp_path):
    phantom = random_volume(low=0, high=4096)
    dicomwrite.write_series(tmp_path, phantom, modality="CR", rescale_slope=None, rescale_intercept=None,
                            bits_stored=12, photometric="MONOCHROME1", window=(1000, 500))
    series = only_series(tmp_path)
    volume = dicom.read_series(series)
    raw = np.stack([pydicom.dcmread(f).pixel_array for f in volume.metadata["files"]])  # pydicom: raw values
    np.testing.assert_array_equal(raw, phantom.array)
    np.testing.assert_array_equal(volume.array, 4095 - raw)
    assert volume.metadata["window_center"] == [4095 - 1000] and volume.metadata["window_width"] == [500]
    assert any("MONOCHROME1: values inverted" in w for w in volume.metadata["warnings"])
    # the window shows what the file meant: pydicom's VOI on the raw values, displayed MONOCHROME2-wise
    ds = pydicom.dcmread(volume.metadata["files"][0])
    np.testing.assert_allclose(dicom.apply_voi(volume.array[0], series), 4095 - apply_voi_lut(raw[0], ds))


def test_monochrome1_ct_keeps_hounsfield_units(tmp_path):
    phantom = random_volume()
    dicomwrite.write_series(tmp_path, phantom, photometric="MONOCHROME1")
    volume = dicom.read_dicom_folder(tmp_path)
    np.testing.assert_array_equal(volume.array, phantom.array)
    assert any("physical units: values kept" in w for w in volume.metadata["warnings"])


def test_real_monochrome1_cr_against_pydicom():
    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    ds = pydicom.dcmread(path)
    volume = dicom.read_dicom_folder(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.PixelRepresentation == 0
    np.testing.assert_array_equal(volume.array[0], 2**ds.BitsStored - 1 - ds.pixel_array)
    compressed = dicom.read_dicom_folder(pydicom.data.get_testdata_file("RG1_J2KR.dcm", download=False))
    np.testing.assert_array_equal(compressed.array, volume.array)


def test_modality_lut_sequence_against_pydicom():
    path = pydicom.data.get_testdata_file("mlut_18.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    ds = pydicom.dcmread(path)
    volume = dicom.read_dicom_folder(path)
    assert "ModalityLUTSequence" in ds and "RescaleSlope" not in ds
    expected = apply_modality_lut(ds.pixel_array, ds)
    assert not np.array_equal(expected, ds.pixel_array)  # the LUT really changes values
    np.testing.assert_array_equal(volume.array[0], expected)
    assert "Modality LUT Sequence (0028,3000) applied" in volume.metadata["warnings"]


def test_voi_lut_sequence_against_pydicom():
    path = pydicom.data.get_testdata_file("vlut_04.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    ds = pydicom.dcmread(path)
    volume = dicom.read_dicom_folder(path)
    expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    assert not np.array_equal(expected, ds.pixel_array)
    np.testing.assert_array_equal(dicom.apply_voi(volume.array[0], path), expected)
    np.testing.assert_array_equal(dicom.apply_voi(volume.array[0], ds), expected)


def test_window_through_apply_voi_matches_pydicom(tmp_path):
    phantom = random_volume()
    dicomwrite.write_series(tmp_path, phantom, window=[(40, 400), (-600, 1500)])
    series = only_series(tmp_path)
    volume = dicom.read_series(series)
    ds = pydicom.dcmread(series.files[3])
    for index in (0, 1):
        expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=index)
        np.testing.assert_allclose(dicom.apply_voi(volume.array[3], series, index=index), expected)


# ------------------------------------------------------------------------------------------------ transfer syntaxes
def test_transfer_syntaxes_decode_identically(tmp_path):
    phantom = random_volume(shape=(4, 32, 32), low=-1000, high=3000)
    arrays = {}
    for ts in (ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless, JPEG2000Lossless):
        folder = tmp_path / ts.name.replace(" ", "_")
        dicomwrite.write_series(folder, phantom, transfer_syntax=ts, bits_stored=12)
        assert pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == ts
        arrays[ts.name] = dicom.read_dicom_folder(folder).array
    for name, array in arrays.items():
        np.testing.assert_array_equal(array, phantom.array, err_msg=name)


def test_deflated_transfer_syntax_is_read(tmp_path):
    phantom = random_volume(shape=(4, 256, 256))
    files = dicomwrite.write_series(tmp_path, phantom)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    assert min(f.stat().st_size for f in files) > dicom.HEADER_CHUNK_BYTES  # headers parsed from the whole file
    series = only_series(tmp_path)
    assert series.problems == []
    assert {s.transfer_syntax for s in series.slices} == {DeflatedExplicitVRLittleEndian}
    volume = dicom.read_series(series)
    np.testing.assert_array_equal(volume.array, phantom.array)
    assert volume.geometry.allclose(phantom.geometry, atol_mm=1e-4)


def test_pydicom_deflated_test_file_against_pydicom():
    path = pydicom.data.get_testdata_file("image_dfl.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's test file image_dfl.dcm is not installed")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    volume = dicom.read_dicom_folder(path)
    assert volume.array.dtype == ds.pixel_array.dtype
    np.testing.assert_array_equal(volume.array[0], ds.pixel_array)


def demosaic(tile_image: np.ndarray, tile: int, count: int) -> np.ndarray:
    """Siemens mosaic -> slices [k, j, i] with rows flipped, as dcm2niix writes its NIfTI (the Ref files)."""
    per_row = tile_image.shape[1] // tile
    slices = [tile_image[(t // per_row) * tile:(t // per_row + 1) * tile, (t % per_row) * tile:(t % per_row + 1) * tile]
              for t in range(count)]
    return np.stack(slices)[:, ::-1, :]


def test_dcm_qa_ts_all_transfer_syntaxes_identical(real_data):
    folder = real_data / "dcm_qa_ts" / "In"
    found = dicom.find_series(folder)
    assert len(found) == 9  # one SeriesInstanceUID, nine SeriesNumbers at the same position: never stacked
    syntaxes = {s.slices[0].transfer_syntax for s in found}
    assert len(syntaxes) >= 7  # LE explicit/implicit, BE, RLE, JPEG lossless, JPEG-LS, JPEG 2000
    arrays = [dicom.read_series(s).array for s in found]
    for series, array in zip(found, arrays):
        np.testing.assert_array_equal(array, arrays[0], err_msg=series.slices[0].transfer_syntax.name)
        number = series.metadata["series_number"]
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(real_data / "dcm_qa_ts" / "Ref" / f"{number}.nii")))
        np.testing.assert_array_equal(demosaic(array[0], 64, ref.shape[0]), ref)


def test_dcm_qa_12bit_against_reference(real_data):
    found = dicom.find_series(real_data / "dcm_qa_12bit" / "In")
    assert sorted(s.metadata["series_number"] for s in found) == [2, 3, 4]
    for series in found:
        volume = dicom.read_series(series)
        number = series.metadata["series_number"]
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(real_data / "dcm_qa_12bit" / "Ref" / f"{number}.nii")))
        np.testing.assert_array_equal(demosaic(volume.array[0], 64, ref.shape[0]), ref)
        assert volume.array.dtype == (np.int16 if number == 4 else np.uint16)
    lows = {s.metadata["series_number"]: dicom.read_series(s).array.min() for s in found}
    assert lows[4] == -2048  # signed 12 bit with HighBit 11: sign-extended, not read as large positive


def test_real_chest_ct_matches_expected_values(real_data):
    expected = json.loads((real_data / "expected_values.json").read_text())["ct_chest_tcia_lung_pet_ct_dx_A0002/dicom"]
    series = only_series(real_data / "ct_chest_tcia_lung_pet_ct_dx_A0002" / "dicom")
    assert series.problems == [] and series.warnings == []
    volume = dicom.read_series(series)
    assert len(volume.metadata["files"]) == expected["n_files"]
    assert list(volume.shape_kji[::-1]) == expected["sitk_size_xyz"]
    np.testing.assert_allclose(volume.geometry.spacing_mm, expected["sitk_spacing_xyz"], atol=1e-4)
    np.testing.assert_allclose(volume.geometry.origin_lps_mm, expected["sitk_origin_lps"], atol=1e-3)
    np.testing.assert_allclose(volume.geometry.direction.ravel(), expected["sitk_direction"], atol=1e-9)
    np.testing.assert_allclose(series.layout.gaps_mm.min(), expected["true_slice_gap_min_max_mm"][0], atol=1e-4)
    np.testing.assert_allclose(series.layout.gaps_mm.max(), expected["true_slice_gap_min_max_mm"][1], atol=1e-4)
    low, high, median = expected["modality_lut_value_min_max_median"]
    assert (volume.array.min(), volume.array.max(), np.median(volume.array)) == (low, high, median)
    assert volume.metadata["modality"] == expected["Modality"] and volume.metadata["units"] == "HU"
    assert volume.metadata["window_center"] == [40.0, -600.0] and volume.metadata["window_width"] == [350.0, 1200.0]


# ------------------------------------------------------------------------------------------------ fallbacks
def test_missing_positions_fall_back_on_slice_location(tmp_path):
    phantom = random_volume()
    dicomwrite.write_series(tmp_path, phantom, extra={"ImagePositionPatient": None})
    series = only_series(tmp_path)
    volume = dicom.read_series(series)
    np.testing.assert_array_equal(volume.array, phantom.array)
    assert volume.geometry.spacing_mm[2] == pytest.approx(2.5)
    assert any("ordered and spaced by SliceLocation" in w for w in volume.metadata["warnings"])


def test_no_positions_at_all_is_refused(tmp_path):
    dicomwrite.write_series(tmp_path, random_volume(), extra={"ImagePositionPatient": None, "SliceLocation": None})
    with pytest.raises(DicomError, match=r"no ImagePositionPatient \(0020,0032\).*slice order is unknown"):
        dicom.read_dicom_folder(tmp_path)


def test_single_slice_spacing_from_slice_thickness(tmp_path):
    phantom = random_volume(shape=(1, 32, 32))
    dicomwrite.write_series(tmp_path, phantom, extra={"SliceThickness": "3.5"})
    volume = dicom.read_dicom_folder(tmp_path)
    assert volume.geometry.spacing_mm == pytest.approx((0.7, 0.9, 3.5))
    assert any("slice spacing 3.5 mm taken from SliceThickness (0018,0050)" in w for w in volume.metadata["warnings"])


# ------------------------------------------------------------------------------------------------ errors
def test_empty_folder(tmp_path):
    with pytest.raises(DicomError, match="no DICOM image series found"):
        dicom.read_dicom_folder(tmp_path)


def test_folder_without_dicom_names_what_was_skipped(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DicomError, match=r"no DICOM image series found; 1 files skipped, e.g. notes.txt: not a DICOM"):
        dicom.read_dicom_folder(tmp_path)


def test_non_dicom_files_beside_a_series_are_skipped_and_reported(tmp_path):
    phantom = random_volume()
    dicomwrite.write_series(tmp_path, phantom)
    (tmp_path / "README.txt").write_text("hello")
    found = dicom.find_series(tmp_path)
    assert found.skipped == [(tmp_path / "README.txt", "not a DICOM file (no DICM prefix)")]
    np.testing.assert_array_equal(dicom.read_series(found[0]).array, phantom.array)
    entries = dicom.inspect_folder(tmp_path)
    assert entries[-1]["skipped"][0]["path"] == str(tmp_path / "README.txt")


def test_corrupt_file_is_named(tmp_path):
    files = dicomwrite.write_series(tmp_path, random_volume())
    data = files[3].read_bytes()
    files[3].write_bytes(data[:132] + os.urandom(200))  # DICM, then garbage
    with pytest.raises(DicomError, match=f"{files[3].name}: corrupt DICOM"):
        dicom.read_dicom_folder(tmp_path)


def test_file_cut_inside_its_header_is_named(tmp_path):
    files = dicomwrite.write_series(tmp_path, random_volume())
    files[6].write_bytes(files[6].read_bytes()[:700])  # before Rows/Columns: a slice must not silently vanish
    found = dicom.find_series(tmp_path)
    assert [p for p, _ in found.corrupt] == [files[6]]
    with pytest.raises(DicomError, match=f"{files[6].name}: corrupt DICOM.*truncated"):
        dicom.read_dicom_folder(tmp_path)


def test_truncated_pixel_data_is_named(tmp_path):
    files = dicomwrite.write_series(tmp_path, random_volume())
    files[5].write_bytes(files[5].read_bytes()[:-100])
    with pytest.raises(DicomError, match=rf"{files[5].name}: Pixel Data \(7FE0,0010\) is truncated"):
        dicom.read_dicom_folder(tmp_path)


def test_missing_pixel_data_is_named(tmp_path):
    files = dicomwrite.write_series(tmp_path, random_volume())
    ds = pydicom.dcmread(files[2])
    del ds.PixelData
    ds.save_as(files[2])
    series = only_series(tmp_path)
    assert any(files[2].name in p and "no Pixel Data (7FE0,0010)" in p for p in series.problems)
    with pytest.raises(DicomError, match=rf"{files[2].name}: no Pixel Data \(7FE0,0010\) element"):
        dicom.read_series(series)


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")  # pydicom reading the malformed value
def test_malformed_number_of_frames_is_a_problem_of_that_file(tmp_path):
    files = dicomwrite.write_series(tmp_path, random_volume())
    set_raw(files[4], "NumberOfFrames", "1A")
    series = only_series(tmp_path)  # the scan goes on
    text = rf"{files[4].name}: NumberOfFrames \(0028,0008\) is '1A', not a whole number"
    assert sum(bool(re.search(text, p)) for p in series.problems) == 1
    assert dicom.inspect_folder(tmp_path)[0]["files"] == 8
    with pytest.raises(DicomError, match=text):
        dicom.read_series(series)


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")  # pydicom reading the malformed value
def test_malformed_series_number_is_ignored(tmp_path):
    phantom = random_volume()
    files = dicomwrite.write_series(tmp_path / "all", phantom)
    for path in files:
        set_raw(path, "SeriesNumber", "3A")
    series = only_series(tmp_path / "all")
    assert series.metadata["series_number"] is None and series.problems == []
    assert series.warnings == [f"{min(files)}: SeriesNumber (0020,0011) is '3A', not a whole number: ignored"]
    np.testing.assert_array_equal(dicom.read_series(series).array, phantom.array)
    files = dicomwrite.write_series(tmp_path / "one", phantom)
    set_raw(files[2], "SeriesNumber", "3A")
    entries = dicom.inspect_folder(tmp_path / "one")  # no crash: that file is told apart by its SeriesNumber
    assert sorted(e["series_number"] is None for e in entries) == [False, True]


@pytest.mark.parametrize("iop", [(1, 0, 0, 0.2, 0.98, 0), (1, 0, 0, 1, 0, 0), (0, 0, 0, 0, 0, 0), (2, 0, 0, 0, 1, 0)],
                         ids=["not_orthogonal", "parallel", "zero", "not_unit"])
def test_invalid_image_orientation_is_named(tmp_path, iop):
    files = dicomwrite.write_series(tmp_path, random_volume(), file_names="instance",
                                    extra={"ImageOrientationPatient": [str(v) for v in iop]})
    series = only_series(tmp_path)
    text = (rf"{files[0].name}: ImageOrientationPatient \(0020,0037\) = .* the row and column direction cosines "
            "must be unit length and orthogonal")
    assert [p for p in series.problems if re.search(text, p)] == series.problems
    assert len(series.problems) == 1 and not series.layout.order_known
    assert json.loads(json.dumps(dicom.inspect_folder(tmp_path)))[0]["orientation"] == "unknown"
    with pytest.raises(DicomError, match=text):
        dicom.read_series(series)


def test_unsupported_transfer_syntax_is_named(tmp_path):
    files = dicomwrite.write_series(tmp_path, random_volume(shape=(1, 32, 32)))
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom has no decoder for it
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
    ds.save_as(files[0], enforce_file_format=True)
    with pytest.raises(DicomError, match=rf"{files[0].name}: transfer syntax MPEG2.*not supported"):
        dicom.read_dicom_folder(tmp_path)


def test_inspect_states_problems_plainly(tmp_path):
    template = Volume(np.zeros((6, 32, 32)), Geometry((1.0, 1.0, 2.0)))
    dicomwrite.write_series(tmp_path / "tilt", template, gantry_tilt_deg=20, series_description="tilted")
    dicomwrite.write_series(tmp_path / "gaps", template, slice_offsets_mm=[0, 2, 4, 7, 9, 11],
                            series_description="gaps")
    dicomwrite.write_series(tmp_path / "plain", template, series_description="plain")
    entries = {e["description"]: e for e in dicom.inspect_folder(tmp_path)}
    assert entries["plain"]["problems"] == [] and entries["plain"]["regular"]
    assert entries["tilted"]["tilt_deg"] == pytest.approx(20, abs=1e-3) and not entries["tilted"]["regular"]
    assert entries["tilted"]["problems"][0].startswith("gantry tilt: the slices are sheared by 20.00 deg")
    assert entries["gaps"]["gap_min_max_mm"] == [2.0, 3.0]
    assert entries["gaps"]["problems"][0].startswith("uneven slice gaps: 2.000 to 3.000 mm")
    json.dumps(list(entries.values()))  # JSON-ready


def test_dicomwrite_rejects_values_that_do_not_fit(tmp_path):
    with pytest.raises(ValueError, match="do not fit 12 bits"):
        dicomwrite.write_series(tmp_path, random_volume(low=0, high=5000), bits_stored=12, rescale_intercept=0)
    assert not any(tmp_path.iterdir())


def test_read_series_rejects_unknown_irregular_mode(tmp_path):
    dicomwrite.write_series(tmp_path, random_volume())
    with pytest.raises(ValueError, match="irregular"):
        dicom.read_series(only_series(tmp_path), irregular="ignore")


def test_copy_of_real_series_with_shuffled_names(real_data, tmp_path):
    """The real CT copied under names that sort in another order reads identically."""
    source = real_data / "ct_chest_tcia_lung_pet_ct_dx_A0002" / "dicom"
    reference = dicom.read_dicom_folder(source)
    rng = np.random.default_rng(0)
    for path in sorted(source.glob("*.dcm")):
        shutil.copy(path, tmp_path / f"x{rng.integers(1e9):09d}")
    volume = dicom.read_dicom_folder(tmp_path)
    np.testing.assert_array_equal(volume.array, reference.array)
    assert volume.geometry == reference.geometry
