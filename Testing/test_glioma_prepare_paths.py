"""Glioma preprocessing's fast paths give what the general ones give, value for value (bit for bit):

- :func:`~GliomaClassifierLib.preprocess.orient_axial` (a numpy view) against SimpleITK ``DICOMOrient`` of the whole
  volume, geometry included, for axis-aligned, tilted, oblique and mirrored grids;
- :func:`MedDLLib.dicom.apply_voi` through its table (8/16-bit arrays) against the VOI of each voxel, for windows,
  a MONOCHROME1 inversion, a VOI LUT Sequence and a real CT's two windows;
- :func:`~GliomaClassifierLib.preprocess.prepare`'s window-limited resampling and normalisation of the other
  sequences against whole-stack resampling, normalisation and :func:`~GliomaClassifierLib.preprocess.take_window`;
- :func:`MedDLLib.intensity.normalize_minmax` into ``out`` against a fresh result;
- :func:`~GliomaClassifierLib.preprocess.check_mri`'s one min/max pass still refuses NaN and infinite values.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from GliomaClassifierLib import phantom, preprocess
from MedDLLib import dicom
from MedDLLib.dicomwrite import write_series
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.intensity import normalize_minmax
from MedDLLib.phantoms import as_plane
from MedDLLib.resample import from_sitk, resample_to_reference, to_sitk


def _bits(array: np.ndarray) -> np.ndarray:
    """The array's bytes as unsigned integers (so -0.0 differs from 0.0 and NaN equals the same NaN)."""
    array = np.ascontiguousarray(array)
    return array.view(f"u{array.dtype.itemsize}")


def _assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype, (got.shape, got.dtype, expected.dtype)
    np.testing.assert_array_equal(_bits(got), _bits(expected))


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    angle = np.radians(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _directions(rng: np.random.Generator):
    """Signed permutations (mirrored ones too), slightly tilted ones, and arbitrary oblique directions."""
    for _ in range(12):
        signed = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)
        yield signed
        yield signed @ _rotation(rng.normal(size=3), rng.normal(0, 4))
        yield _rotation(rng.normal(size=3), rng.uniform(0, 360)) * np.array([1.0, 1.0, rng.choice([-1.0, 1.0])])


@pytest.mark.parametrize("seed", range(3))
def test_orient_axial_is_dicomorient_of_the_whole_volume(seed):
    rng = np.random.default_rng(seed)
    for direction in _directions(rng):
        shape = tuple(int(s) for s in rng.integers(1, 7, 3))
        geometry = Geometry(tuple(rng.uniform(0.3, 4.0, 3)), tuple(rng.normal(0, 80, 3)), direction)
        volume = Volume(rng.normal(size=shape).astype(np.float32), geometry, {"modality": "MR"})
        expected = from_sitk(sitk.DICOMOrient(to_sitk(volume), "LPS"), volume.metadata)
        got = preprocess.orient_axial(volume)
        _assert_same(got.array, expected.array)
        assert got.geometry.spacing_mm == expected.geometry.spacing_mm
        assert got.geometry.origin_lps_mm == expected.geometry.origin_lps_mm
        assert got.geometry.direction_lps == expected.geometry.direction_lps
        assert got.metadata == volume.metadata and np.shares_memory(got.array, volume.array)  # a view


def _written_header(folder, **options) -> str:
    """The first file of a small series written with ``options`` (its header is the VOI source)."""
    volume = Volume(np.full((2, 8, 8), 100, np.int32), Geometry((1.0, 1.0, 2.0)))
    write_series(folder, volume, **options)
    return str(sorted(folder.iterdir())[0])


def _headers(tmp_path) -> dict[str, str]:
    headers = {
        "window": _written_header(tmp_path / "w", modality="MR", rescale_slope=None, rescale_intercept=None,
                                  window=[(600.0, 1000.0), (300.0, 2.0)]),
        "monochrome1": _written_header(tmp_path / "m1", modality="CR", rescale_slope=None, rescale_intercept=None,
                                       bits_stored=12, photometric="MONOCHROME1", window=(1000.0, 500.0)),
        "ct_rescaled": _written_header(tmp_path / "ct", window=(40.0, 400.0)),
    }
    lut = pydicom.data.get_testdata_file("vlut_04.dcm", download=False)  # a VOI LUT Sequence (pydicom-data)
    if lut is not None:
        headers["voi_lut_sequence"] = lut
    return headers


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.int8])
def test_apply_voi_table_gives_the_voi_of_each_voxel(tmp_path, dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(4)
    values = rng.integers(info.min, int(info.max) + 1, size=(3, 150, 160)).astype(dtype)  # > 65536 voxels
    every = np.arange(2**info.bits, dtype=f"u{info.bits // 8}").view(dtype)  # every value of the type
    values.reshape(-1)[:every.size] = every
    chunks = -(-values.size // every.size)  # of at most a table's size: no table for them
    for name, header in _headers(tmp_path).items():
        for index in (0, 1) if name == "window" else (0,):
            # the per-voxel arithmetic: rows no larger than a table, one at a time (MONOCHROME1's 4095 - values in
            # uint8 included: widened, not overflowing)
            rows = [dicom.apply_voi(row, header, index) for row in np.array_split(values.reshape(-1), chunks)]
            expected = np.concatenate(rows).reshape(values.shape)
            got = dicom.apply_voi(values, header, index)
            _assert_same(got, expected)
            _assert_same(dicom.apply_voi(values, header, index, dtype=np.float32), expected.astype(np.float32))
            if name == "monochrome1" and info.bits == 8:  # 4095 - (0..255) lies above its 750-1250 window
                assert not got.any(), name
            elif index == 0:
                assert len(np.unique(got)) > 2, name  # the VOI really maps values (not a copy, not two levels)


def test_apply_voi_table_on_a_real_ct_with_two_windows(real_data):
    folder = real_data / "ct_chest_tcia_lung_pet_ct_dx_A0002" / "dicom"
    volume = dicom.read_dicom_folder(folder)
    assert volume.array.dtype == np.int16
    source = volume.metadata["files"][0]
    for index in (0, 1):
        got = dicom.apply_voi(volume.array, source, index, dtype=np.float32)
        expected = np.concatenate([dicom.apply_voi(rows, source, index) for rows in volume.array.reshape(-1, 2**15)])
        _assert_same(got, expected.reshape(volume.array.shape).astype(np.float32))


def test_apply_voi_without_a_window_returns_the_values(tmp_path):
    header = _written_header(tmp_path / "plain", modality="MR", rescale_slope=None, rescale_intercept=None)
    values = np.random.default_rng(0).integers(0, 4096, (2, 200, 200)).astype(np.uint16)
    assert dicom.apply_voi(values, header) is values
    _assert_same(dicom.apply_voi(values, header, dtype=np.float32), values.astype(np.float32))


def _long_study() -> tuple[dict[str, Volume], dict[str, Volume]]:
    """Four sequences of 40 slices, three stored in other planes or tilted (so resampling interpolates)."""
    volumes, _, _ = phantom.brain_mri(np.random.default_rng(6), size=24, n_slices=40)
    grid = Geometry((0.8593, 0.8594, 2.3437), (-109.571, -107.3, -61.13))  # spacings and origin not binary fractions
    volumes = {name: Volume(v.array, grid, dict(v.metadata)) for name, v in volumes.items()}
    tilted = volumes["T2w"]
    tilt = Geometry(tilted.geometry.spacing_mm, tuple(np.add(tilted.geometry.origin_lps_mm, (0.3, -0.2, 0.7))),
                    _rotation((1.0, 0.4, 0.0), 7.0))
    stored = {"T1wCE": volumes["T1wCE"], "FLAIR": as_plane(volumes["FLAIR"], "sagittal"),
              "T1w": as_plane(volumes["T1w"], "coronal"), "T2w": Volume(tilted.array, tilt, dict(tilted.metadata))}
    return volumes, stored


@pytest.mark.parametrize("centre", [20, 2, 37, 100, None])
def test_prepare_window_equals_whole_stack_resampling_and_normalisation(centre):
    _, stored = _long_study()
    spec = preprocess.InputSpec(("T1wCE", "FLAIR", "T1w", "T2w"), size=20, depth=8, voi=False)
    prepared = preprocess.prepare(stored, spec, ("test slice", lambda grid, n: centre))
    resized = preprocess.resize_inplane(preprocess.orient_axial(stored["T1wCE"]), spec.size)
    expected = [normalize_minmax(resized.array, axis=(1, 2))]
    for name in spec.sequences[1:]:  # the general path: whole stacks, then the window
        on_grid = resample_to_reference(preprocess.orient_axial(stored[name]), resized)
        expected.append(normalize_minmax(on_grid.array, axis=(1, 2)))
    whole = np.stack([preprocess.take_window(s, prepared.first, spec.depth) for s in expected])
    _assert_same(prepared.array, whole)
    assert prepared.n_slices == 40 and (prepared.centre == centre if centre is not None else True)
    if centre == 20:  # a window inside the stack: the other sequences resampled up to slice 23 only
        assert (prepared.first, prepared.last) == (16, 23) and np.all(prepared.array.max(axis=(2, 3)) > 0.99)
    if centre == 100:  # a window past the stack: all padding
        assert not prepared.array.any()


def test_normalize_minmax_into_out_is_the_fresh_result():
    rng = np.random.default_rng(1)
    array = rng.normal(100, 30, (5, 6, 7)).astype(np.float32)
    array[1] = 4.0  # a constant slice
    array[2, 3, 3] = np.nan  # a slice with NaN
    fresh = normalize_minmax(array, axis=(1, 2))
    assert not fresh[1].any() and not fresh[2].any() and fresh[0].min() == 0 and fresh[0].max() == 1
    batch = np.full((2, 5, 6, 7), 9.0, np.float32)
    part = batch[1]
    assert normalize_minmax(array, axis=(1, 2), out=part) is part
    _assert_same(batch[1], fresh)
    assert np.all(batch[0] == 9.0)  # nothing written elsewhere
    _assert_same(normalize_minmax(array.astype(np.float64)), normalize_minmax(array))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_mri_refuses_nan_and_infinite_values(bad):
    array = np.random.default_rng(0).uniform(10, 500, (4, 16, 16)).astype(np.float32)
    array[2, 5, 7] = bad
    with pytest.raises(InputError, match="T1wCE: the volume has NaN or infinite values"):
        preprocess.check_mri(Volume(array, Geometry(), {"modality": "MR"}), "T1wCE")
    preprocess.check_mri(Volume(np.nan_to_num(array, posinf=1.0, neginf=1.0), Geometry(), {"modality": "MR"}), "T1wCE")
    with pytest.raises(InputError, match=r"constant \(7\)"):
        preprocess.check_mri(Volume(np.full((4, 16, 16), 7, np.uint16), Geometry(), {"modality": "MR"}), "T1wCE")
