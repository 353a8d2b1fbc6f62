"""ICH dataset reader (RSNA 2019 layout), phantoms and preprocessing."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from ICHDetectorLib import dataset, phantom, preprocess
from MedDLLib import dicom
from MedDLLib.dicomwrite import write_series
from MedDLLib.errors import InputError
from MedDLLib.geometry import Volume
from MedDLLib.resample import resample


@pytest.fixture(scope="module")
def rsna(tmp_path_factory):
    out = tmp_path_factory.mktemp("rsna")
    manifest = phantom.write_dataset(out, 6, seed=3, size=48, n_slices=8, bad_intercept_fraction=0.5)
    return out, manifest


def test_studies_rebuilt_from_headers(rsna):
    out, manifest = rsna
    data = dataset.scan_dataset(out)
    assert data.problems == []
    assert len(data.studies) == 6 and data.n_slices == 48
    by_patient = {s.patient_id: s for s in data.studies}
    for truth in manifest["truth"]:
        study = by_patient[truth["patient_id"]]
        assert study.slice_ids == truth["slice_ids"]  # position order, although file names are random
        np.testing.assert_array_equal(study.labels, np.array(truth["labels"]))
        assert study.any_label == int(bool(truth["subtypes"]) and np.array(truth["labels"])[:, 0].any())
    assert any(t["bad_intercept"] for t in manifest["truth"]) and any(t["subtypes"] for t in manifest["truth"])


def test_problems_reported_not_fatal(rsna, tmp_path):
    import shutil

    out, manifest = rsna
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    first = manifest["truth"][0]["slice_ids"]
    lines = (copy / dataset.LABELS_CSV).read_text().splitlines()
    kept = [line for line in lines if not line.startswith(f"{first[0]}_epidural")]  # a missing label
    kept.append(f"{first[1]}_any,{1 - int(manifest['truth'][0]['labels'][1][0])}")  # a conflicting duplicate
    kept.append(f"{first[2]}_any,{manifest['truth'][0]['labels'][2][0]}")  # a plain duplicate
    kept.append("ID_000000000_any,0")  # a label without a file
    (copy / dataset.LABELS_CSV).write_text("\n".join(kept) + "\n")
    (copy / dataset.IMAGE_FOLDER / "ID_broken.dcm").write_bytes(b"not a dicom file")
    data = dataset.scan_dataset(copy)
    text = "\n".join(data.problems)
    assert "ID_broken.dcm: unreadable" in text
    assert "repeated with a different label" in text and "2 duplicate rows (1 conflicting)" in text
    assert "1 of 8 slices lack some labels" in text
    assert "1 labelled slice ids have no image file" in text
    study = next(s for s in data.studies if s.slice_ids[0] == first[0])
    assert not study.labelled[0] and study.labelled[1:].all()
    items = dataset.training_items([study], context=1)
    assert len(items) == 7 and all(len(i.paths) == 3 for i in items)


def test_bad_intercept_fix_recovers_hu(tmp_path):
    rng = np.random.default_rng(0)
    volume, _, _ = phantom.head_ct(rng, 32, 6, ("epidural",))
    paths = write_series(tmp_path, volume.with_array(phantom.encode_bad_intercept(volume.array)),
                         rescale_intercept=0.0, bits_stored=12, pixel_representation=0, file_names="instance")
    ds = pydicom.dcmread(paths[1])
    assert dicom.has_bad_intercept(ds)
    np.testing.assert_allclose(preprocess.read_slice_hu(paths[1]), np.rint(volume.array[1]), atol=0.5)
    raw = preprocess.read_slice_hu(paths[1], fix=False)
    assert raw.min() >= 0  # without the fix, air reads as +3096
    # the fix as specified: +1000, wrap >= 4096, intercept -1000
    fixed, intercept = dicom.fix_bad_intercept(np.array([3096, 0, 1000, 4000]), ds)
    assert intercept == -1000.0 and (fixed + intercept).tolist() == [-1000, 0, 1000, -96]
    normal = write_series(tmp_path / "ok", volume, file_names="instance")
    assert not dicom.has_bad_intercept(pydicom.dcmread(normal[0]))
    fixed_volume = dicom.read_dicom_folder(tmp_path, series_uid=ds.SeriesInstanceUID, fix_bad_intercept=True)
    np.testing.assert_allclose(fixed_volume.array, np.rint(volume.array), atol=0.5)
    assert any("bad-intercept fix applied to 6 of 6 files" in w for w in fixed_volume.metadata["warnings"])
    unfixed = dicom.read_dicom_folder(tmp_path, series_uid=ds.SeriesInstanceUID)  # off by default: stored as read
    assert unfixed.array.min() >= 0
    kept = dicom.read_dicom_folder(tmp_path / "ok", fix_bad_intercept=True)  # a correct file is left alone
    np.testing.assert_allclose(kept.array, np.rint(volume.array), atol=0.5)


def test_channels_windows_context_and_grid():
    rng = np.random.default_rng(1)
    volume, _, _ = phantom.head_ct(rng, 40, 5, ())
    spec = preprocess.InputSpec(context=1, size=32)
    inputs, grid = preprocess.volume_input(volume, spec)
    assert inputs.shape == (5, 9, 32, 32) and inputs.min() >= 0 and inputs.max() <= 1
    assert len(spec.channels) == 9 and spec.channels[3:6] == ["brain", "subdural", "bone"]
    # channel block 0 of slice 0 is slice 0 itself (clamped); block 2 of slice 4 is slice 4 (clamped)
    np.testing.assert_allclose(inputs[0, 0:3], inputs[0, 3:6])
    np.testing.assert_allclose(inputs[2, 6:9], inputs[3, 3:6])
    # the brain window of the centre block equals intensity.window_channels on the resized HU
    from MedDLLib.intensity import apply_window

    resized = preprocess.resize_slices(volume.array, 32)
    np.testing.assert_allclose(inputs[2, 3], apply_window(resized[2], (40, 80)), atol=1e-6)
    # the network grid is the grid MedDLLib.resample makes for the same size and extent
    reference = resample(volume, size=(32, 32, 5))
    assert grid.allclose(reference.geometry)
    np.testing.assert_allclose(resized, reference.array, atol=1.0)
    seed = preprocess.InputSpec(mode="maxabs", context=0, size=32)
    x, _ = preprocess.volume_input(volume, seed)
    assert x.shape == (5, 1, 32, 32) and np.isclose(np.abs(x).max(), 1.0)


def test_check_head_ct_refusals():
    volume, _, _ = phantom.head_ct(np.random.default_rng(2), 32, 4, ())
    preprocess.check_head_ct(volume)
    with pytest.raises(InputError, match="modality is 'MR'"):
        preprocess.check_head_ct(Volume(volume.array, volume.geometry, {"modality": "MR"}))
    with pytest.raises(InputError, match="not Hounsfield units"):
        preprocess.check_head_ct(volume.with_array(volume.array + 1024))
    chest = np.where(volume.array > 0, -850.0, volume.array).astype(np.float32)
    with pytest.raises(InputError, match="does not look like a head CT"):
        preprocess.check_head_ct(volume.with_array(chest))


def test_slice_labels_use_a_physical_bleed_area(tmp_path):
    """A slice is positive from MIN_LABEL_AREA_MM2 of bleed (4 pixels at 64 px); a small phantom (16 px, pixels
    of 207 mm^2) labels a one-pixel bleed, so it still writes positive studies."""
    mask = np.zeros((2, 8, 8), dtype=bool)
    mask[0, 0, :3] = True  # 3 pixels on slice 0
    mask[1, 0, :4] = True  # 4 pixels on slice 1
    at64 = phantom.slice_labels({"subdural": mask}, 2, (phantom.FOV_MM / 64) ** 2)
    assert at64[:, 0].tolist() == [0, 1] and at64[:, dataset.LABELS.index("subdural")].tolist() == [0, 1]
    assert phantom.slice_labels({"subdural": mask}, 2, (phantom.FOV_MM / 16) ** 2)[:, 0].tolist() == [1, 1]
    manifest = phantom.write_dataset(tmp_path, 6, seed=0, size=16, n_slices=8, positive_fraction=1.0)
    positive = [np.array(t["labels"])[:, 0].any() for t in manifest["truth"]]
    assert sum(positive) >= 5, positive


def test_in_plane_hole_filling_and_the_suspected_region_equal_scipys_per_slice_masks():
    """fill_holes_in_plane (one labelling of all slices' background) fills what ndimage.binary_fill_holes fills in
    each slice, holes touching nothing but the edge and a slice of nothing but holes included; intracranial_mask
    and suspected_region (only the slices with hot blood-density voxels get a skull fill) equal the per-slice
    scipy expressions they replaced, on a phantom head CT."""
    from scipy import ndimage

    from ICHDetectorLib.logic import BLOOD_HU, suspected_region

    rng = np.random.default_rng(4)
    masks = ndimage.binary_opening(rng.random((5, 37, 41)) < 0.55)
    masks[2] = True
    masks[2, 10:14, 10:14] = False  # a closed hole
    masks[3] = False
    masks[4, 0, :] = True  # a ring on the edge row
    expected = np.stack([ndimage.binary_fill_holes(m) for m in masks])
    assert np.array_equal(preprocess.fill_holes_in_plane(masks), expected)
    assert np.array_equal(preprocess.fill_holes_in_plane(masks[2]), expected[2])

    volume, _, _ = phantom.head_ct(np.random.default_rng(1), 96, 19, ("intraparenchymal", "subdural"))
    hu = np.round(volume.array).astype(np.int16)
    hu32 = hu.astype(np.float32)
    bone = hu32 > 300.0
    plain = np.stack([ndimage.binary_fill_holes(b) & ~ndimage.binary_dilation(b, iterations=1) for b in bone])
    plain &= (hu32 > -20.0) & (hu32 < 120.0)
    assert plain.any() and np.array_equal(preprocess.intracranial_mask(hu32), plain)
    heat = np.zeros(hu.shape, np.float32)
    heat[3:15] = rng.random((12, *hu.shape[1:]))  # slices 0-2 and 15-18: a negative slice's zero heatmap
    region = suspected_region(hu, heat, 0.4)
    blood = (hu32 >= BLOOD_HU[0]) & (hu32 <= BLOOD_HU[1])
    assert region.dtype == np.uint8 and region.any()
    assert np.array_equal(region, (blood & plain & (heat >= 0.4)).astype(np.uint8))
