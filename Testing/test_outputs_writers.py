"""Output writers: check_labels' range test refuses exactly what the scan of the values refuses; the NRRD volume
writer gives SimpleITK's header and the same voxels and geometry read back."""

from __future__ import annotations

import gzip
import math
import re

import numpy as np
import pytest

from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib import outputs
from MedDLLib.outputs import _write_image, check_labels, write_segmentation, write_volume


def _spec(values):
    return {int(v): (f"segment {v}", (1.0, 0.0, 0.0)) for v in values}


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64])
@pytest.mark.parametrize("seed", range(6))
def test_check_labels_refuses_exactly_the_values_without_a_segment(dtype, seed):
    rng = np.random.default_rng(seed)
    low = -3 if np.issubdtype(dtype, np.signedinteger) else 0
    labels = rng.integers(low, 6, size=(4, 7, 5)).astype(dtype)
    segments = _spec(v for v in range(1, 7) if rng.random() < 0.7)
    unknown = sorted(set(np.unique(labels).tolist()) - {0} - set(segments))
    if unknown:
        with pytest.raises(InputError, match=re.escape(f"label values {unknown} have no segment")):
            check_labels(labels, segments, "x")
    else:
        out = check_labels(labels, segments, "x")
        assert out.dtype == np.uint8 and np.array_equal(out, labels)
        assert np.shares_memory(out, labels) == (labels.dtype == np.uint8)  # no copy of uint8 labels


def test_check_labels_values_far_apart_and_gaps():
    labels = np.zeros((2, 3, 4), np.int32)
    labels[0, 0, 0], labels[1, 2, 3] = 1, 9000  # a range too wide for the range test: the values are scanned
    assert check_labels(labels, _spec([1, 9000]), "x").dtype == np.uint16
    with pytest.raises(InputError, match=r"\[9000\]"):
        check_labels(labels, _spec([1]), "x")
    labels[1, 2, 3] = 3  # 2 missing from the segments but absent from the labels: accepted
    assert np.array_equal(check_labels(labels, _spec([1, 3]), "x"), labels)
    with pytest.raises(InputError, match=r"\[-1\]"):
        check_labels(np.full((2, 2), -1, np.int8), _spec([1]), "x")
    assert check_labels(np.zeros((0, 3), np.uint8), _spec([1]), "x").shape == (0, 3)
    assert check_labels(np.ones((2, 2), bool), _spec([1]), "x").dtype == np.uint8


def _sitk_written(tmp_path, array, geometry):
    """The file SimpleITK's own writer makes of ``array`` on ``geometry`` (the writer before the NRRD one)."""
    from MedDLLib.resample import to_sitk

    return _write_image(to_sitk(Volume(np.ascontiguousarray(array), geometry, {})), tmp_path / "sitk.nrrd")


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
                                   np.float32, np.float64, bool])
def test_nrrd_volume_reads_back_as_simpleitk_wrote_it(tmp_path, dtype):
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    array = (rng.random((5, 6, 7)) * 90 - (0 if np.dtype(dtype).kind in "ub" else 40)).astype(dtype)
    array[[0, 2, 4]] = 0  # all-zero slices (the shared deflate segment), first and last included
    if array.dtype.kind == "f":
        array[3] = -0.0  # zero values, not zero bits: written as they are
    c, s = math.cos(0.3), math.sin(0.3)
    geometry = Geometry((1 / 3, 0.1 + 0.2, 2.0000000000000004), (-179.648438, -0.0, 123456789.123456789),
                        ((c, -s, 0.0), (s, c, -0.0), (0.0, 0.0, -1.0)))
    ours = write_volume(tmp_path / "ours.nrrd", Volume(array, geometry, {}))
    reference = _sitk_written(tmp_path, array.astype(np.uint8) if array.dtype == bool else array, geometry)
    a, b = ours.read_bytes(), reference.read_bytes()
    header_a, header_b = a[: a.index(b"\n\n") + 2], b[: b.index(b"\n\n") + 2]
    assert header_a == header_b
    assert gzip.decompress(a[len(header_a):]) == gzip.decompress(b[len(header_b):])
    back, expected = sitk.ReadImage(str(ours)), sitk.ReadImage(str(reference))
    assert back.GetPixelID() == expected.GetPixelID()
    assert (back.GetSpacing(), back.GetOrigin(), back.GetDirection()) == (
        expected.GetSpacing(), expected.GetOrigin(), expected.GetDirection())
    assert sitk.GetArrayFromImage(back).tobytes() == array.astype(array.dtype.newbyteorder("=")).tobytes()
    assert not list(tmp_path.glob(".*partial*"))


def test_volumes_the_nrrd_writer_does_not_take_still_go_through_simpleitk(tmp_path):
    import SimpleITK as sitk

    geometry = Geometry((0.5, 0.5, 2.0), (1.0, 2.0, 3.0))
    array = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    nifti = write_volume(tmp_path / "v.nii.gz", Volume(array, geometry, {}))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(nifti))), array)
    with pytest.raises(TypeError):  # a type SimpleITK has no pixel type for: its own refusal, as before
        write_volume(tmp_path / "h.nrrd", Volume(array.astype(np.float16), geometry, {}))


def _same_nrrd(ours, reference):
    """Same header bytes and the same decompressed voxel bytes."""
    a, b = ours.read_bytes(), reference.read_bytes()
    header_a, header_b = a[: a.index(b"\n\n") + 2], b[: b.index(b"\n\n") + 2]
    assert header_a.decode() == header_b.decode()
    assert gzip.decompress(a[len(header_a):]) == gzip.decompress(b[len(header_b):])


def test_segmentation_file_is_simpleitks_header_and_voxels(tmp_path, monkeypatch):
    """.seg.nrrd written without SimpleITK: the header (segment fields in ITK's key order, twelve segments so that
    Segment10_ sorts before Segment1_) and voxels equal SimpleITK's file, and it reads back as written."""
    from MedDLLib.outputs import read_segmentation_labels

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 13, size=(4, 9, 7)).astype(np.uint8)
    labels[1] = 0
    segments = {v: (f"Région {v}", (v / 13, 0.5, 0.25)) for v in range(1, 13)}
    geometry = Geometry((0.7, 0.8, 2.5), (-10.5, 20.25, -0.0), ((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)))
    ours = write_segmentation(tmp_path / "ours.seg.nrrd", labels, geometry, segments)
    monkeypatch.setattr(outputs, "_nrrd_writable", lambda array, geometry: False)  # SimpleITK's writer, as before
    reference = write_segmentation(tmp_path / "sitk.seg.nrrd", labels, geometry, segments)
    _same_nrrd(ours, reference)
    volume, read_segments = read_segmentation_labels(ours)
    assert np.array_equal(volume.array, labels) and read_segments == read_segmentation_labels(reference)[1]
