"""Glioma phantom, RSNA-MICCAI reader and preprocessing: layout, flagged cases, reorientation, window, signal."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest

from GliomaClassifierLib import dataset, phantom, preprocess
from MedDLLib.dicomwrite import write_series
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.phantoms import as_plane


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("glioma")
    manifest = phantom.write_dataset(root, 8, seed=3, size=24, n_slices=12)
    return root, manifest


def test_layout_labels_and_flagged_cases(small_dataset):
    root, manifest = small_dataset
    rows = list(csv.DictReader((root / "train_labels.csv").open()))
    assert [r["BraTS21ID"] for r in rows] == [t["BraTS21ID"] for t in manifest["truth"]]
    assert {r["MGMT_value"] for r in rows} <= {"0", "1"}
    data = dataset.scan_dataset(root)
    assert sorted(data.excluded) == ["00109", "00123", "00709"]  # the flagged ids are in the phantom, left out
    assert [c.case_id for c in data.cases] == ["00000", "00001", "00002", "00003", "00004"]
    assert all(set(c.folders) == set(dataset.SEQUENCES) for c in data.cases)
    assert len(dataset.scan_dataset(root, exclude=()).cases) == 8
    # file numbers are InstanceNumbers unrelated to the slice position: a file-name sort scrambles the stack
    folder = data.cases[0].folders["T1wCE"]
    by_name = sorted(folder.iterdir(), key=lambda p: preprocess.natural_key(p.name))
    assert by_name[0].name == "Image-1.dcm"
    ds = [pydicom.dcmread(p, stop_before_pixels=True) for p in by_name]
    assert [int(d.InstanceNumber) for d in ds] == list(range(1, len(ds) + 1))
    normal = np.cross(*np.reshape(np.array(ds[0].ImageOrientationPatient, float), (2, 3)))
    along = [float(np.dot(normal, np.array(d.ImagePositionPatient, float))) for d in ds]
    assert along != sorted(along) and along != sorted(along, reverse=True)


def test_labels_csv_problems_are_collected(tmp_path):
    (tmp_path / "train" / "00007" / "T1wCE").mkdir(parents=True)
    (tmp_path / "train" / "00008" / "T1wCE").mkdir(parents=True)
    (tmp_path / "train_labels.csv").write_text("BraTS21ID,MGMT_value\n7,1\n8,2\nxx,0\n12,0\n")
    data = dataset.scan_dataset(tmp_path)
    assert [(c.case_id, c.label) for c in data.cases] == [("00007", 1)]  # "7" is case 00007
    text = " | ".join(data.problems)
    assert "MGMT_value 2" in text and "'xx'" in text and "00008: no label" in text and "no folder" in text
    assert "2 cases (00007, 00008): no FLAIR, T1w, T2w folder" in text  # one line for all, not one per case
    (tmp_path / "train_labels.csv").write_text("id,label\n")
    with pytest.raises(InputError, match="BraTS21ID,MGMT_value"):
        dataset.scan_dataset(tmp_path)


@pytest.mark.parametrize("plane", ["sagittal", "coronal"])
def test_any_plane_is_read_in_position_order_and_reoriented(tmp_path, plane):
    volumes, _, _ = phantom.brain_mri(np.random.default_rng(1), size=24, n_slices=12)
    axial = volumes["T1wCE"].with_array(np.rint(volumes["T1wCE"].array).astype(np.float32))
    stored = as_plane(axial, plane)
    write_series(tmp_path / plane, stored, modality="MR", rescale_slope=None, rescale_intercept=None,
                 file_names="shuffled")
    read = dataset.read_sequence(tmp_path / plane)  # sorted along the DICOM normal (row x column)
    assert read.array.shape == stored.array.shape
    oriented = preprocess.orient_axial(read)
    assert oriented.geometry.allclose(axial.geometry), (oriented.geometry, axial.geometry)
    np.testing.assert_array_equal(oriented.array, axial.array)


def _blob_volume(n_slices: int, centre_k: int, size: int = 16) -> Volume:
    """Slices whose bright disc is largest at ``centre_k`` (radius falls off with distance)."""
    array = np.zeros((n_slices, size, size), np.float32)
    jj, ii = np.mgrid[:size, :size]
    for k in range(n_slices):
        radius = max(7.0 - abs(k - centre_k), 1.0)
        array[k][(jj - size / 2) ** 2 + (ii - size / 2) ** 2 <= radius**2] = 100.0 + k
    return Volume(array, Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 10.0)), {"modality": "MR"})


def test_window_is_centred_on_the_largest_brain_slice_and_zero_padded():
    volume = _blob_volume(10, centre_k=2)
    spec = preprocess.InputSpec(size=8, depth=8, reorient=True, voi=False)
    prepared = preprocess.prepare({"T1wCE": volume}, spec)
    assert prepared.centre == 2 and (prepared.first, prepared.last) == (-2, 5)
    x = prepared.array[0]
    assert x.shape == (8, 8, 8) and x.dtype == np.float32
    assert not x[:2].any()  # two padded slices before slice 0
    for k in range(2, 8):  # every real slice is min-max normalised to [0, 1]
        assert x[k].min() == pytest.approx(0.0) and x[k].max() == pytest.approx(1.0)
    # the network grid's slice 2 is the input's slice 0, at the same physical position; in-plane 16 -> 8 pixels
    assert prepared.grid.spacing_mm == pytest.approx((2.0, 2.0, 2.0))
    lps = prepared.grid.ijk_to_lps() @ np.array([3.5, 3.5, 2.0, 1.0])
    assert lps[:3] == pytest.approx((volume.geometry.ijk_to_lps() @ np.array([7.5, 7.5, 0.0, 1.0]))[:3])
    # a window past the end pads after the stack
    late = preprocess.prepare({"T1wCE": _blob_volume(10, centre_k=8)}, spec)
    assert (late.first, late.last) == (4, 11) and not late.array[0, 6:].any() and late.array[0, 5].any()


def test_multi_sequence_channels_align_across_planes():
    volumes, _, _ = phantom.brain_mri(np.random.default_rng(2), size=24, n_slices=12)
    stored = {"T1wCE": volumes["T1wCE"], "FLAIR": as_plane(volumes["FLAIR"], "coronal")}
    spec = preprocess.InputSpec(("T1wCE", "FLAIR"), size=24, depth=12, voi=False)
    prepared = preprocess.prepare(stored, spec)
    from MedDLLib.intensity import normalize_minmax

    expected = preprocess.take_window(normalize_minmax(volumes["FLAIR"].array, axis=(1, 2)), prepared.first, 12)
    np.testing.assert_allclose(prepared.array[1], expected, atol=1e-4)  # coronal FLAIR lands on the axial grid


def test_seed_order_scrambles_and_improved_order_does_not(small_dataset):
    root, _ = small_dataset
    case = dataset.scan_dataset(root).cases[0]
    read = dataset.read_sequence(case.folders["T1wCE"])
    scrambled = preprocess.filename_order(read)
    assert sorted(map(str, scrambled.metadata["files"])) == sorted(map(str, read.metadata["files"]))
    assert not np.array_equal(scrambled.array, read.array)
    assert [int(f.split("Image-")[1][:-4]) for f in scrambled.metadata["files"]] == list(range(1, 13))


def test_refusals_name_the_problem():
    good = _blob_volume(6, 3)
    with pytest.raises(InputError, match="modality 'CT'"):
        preprocess.prepare({"T1wCE": Volume(good.array, good.geometry, {"modality": "CT"})}, preprocess.InputSpec())
    with pytest.raises(InputError, match="constant"):
        preprocess.prepare({"T1wCE": good.with_array(np.ones_like(good.array))}, preprocess.InputSpec())
    with pytest.raises(InputError, match="missing FLAIR"):
        preprocess.prepare({"T1wCE": good}, preprocess.InputSpec(("T1wCE", "FLAIR")))
    with pytest.raises(InputError, match="sequences"):
        preprocess.InputSpec(("T1wCE", "DWI"))


def test_planted_signal_strength_sets_the_achievable_auroc():
    from sklearn.metrics import roc_auc_score

    assert phantom.achievable_auroc(0.0) == pytest.approx(0.5)
    assert phantom.achievable_auroc(1.0) == pytest.approx(0.973, abs=0.002)
    labels = np.arange(4000) % 2
    for signal in (0.0, 0.5, 1.0):
        rng = np.random.default_rng(0)
        e = [phantom.enhancement(y, signal, rng) for y in labels]
        assert roc_auc_score(labels, e) == pytest.approx(phantom.achievable_auroc(signal), abs=0.02)
    # the enhancement is what the T1wCE rim shows; the other sequences do not carry it
    lo, _, _ = phantom.brain_mri(np.random.default_rng(4), 32, 16, label=0, signal=1.0)
    hi, masks, _ = phantom.brain_mri(np.random.default_rng(4), 32, 16, label=1, signal=1.0)
    rim = masks["rim"]
    assert hi["T1wCE"].array[rim].mean() > 1.3 * lo["T1wCE"].array[rim].mean()
    assert hi["FLAIR"].array[rim].mean() == pytest.approx(lo["FLAIR"].array[rim].mean(), rel=1e-6)


@pytest.mark.parametrize("flip", [False, True])
def test_window_box_is_the_oblique_network_grid_and_the_roi_shows_it(headless_scene, flip):
    """The window ROI is the network grid's block (voxel edges), oblique when the input is, not its bounding box."""
    from types import SimpleNamespace

    from GliomaClassifierLib import logic
    from MedDLLib import nodes
    from scipy.spatial.transform import Rotation

    direction = Rotation.from_euler("xyz", [0.25, 0.1, 0.35]).as_matrix() @ np.diag([1.0, 1.0, -1.0 if flip else 1.0])
    grid = Geometry((6.875, 6.875, 9.375), (-100.0, -90.0, 40.0), tuple(map(tuple, direction)))
    prepared = SimpleNamespace(array=np.zeros((1, 16, 32, 32), np.float32), grid=grid)
    box = logic.window_box(prepared)
    np.testing.assert_allclose(box["size_mm"], (32 * 6.875, 32 * 6.875, 16 * 9.375))
    corners_ijk = np.array([[i, j, k] for i in (-0.5, 31.5) for j in (-0.5, 31.5) for k in (-0.5, 15.5)])
    expected = grid.ijk_to_ras_points(corners_ijk)

    window = {**box, "first": 0, "last": 15, "centre": 7, "depth": 16, "n_slices": 16}
    result = logic.GliomaResult(0.5, 0.5, "model", "improved", ["T1wCE"], "card", window, None)
    reference = nodes.add_scalar_volume(headless_scene, Volume(np.zeros((4, 4, 4), np.float32), grid, {}), "T1wCE")
    roi = logic.GliomaClassifierLogic().write_outputs(reference, result).nodes["window"]
    m = nodes._numpy_matrix(roi.GetObjectToWorldMatrix())
    half = np.asarray(roi.GetSize()) / 2.0
    shown = np.array([(m @ np.array([sx * half[0], sy * half[1], sz * half[2], 1.0]))[:3]
                      for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    # the same 8 corners (in some order), and the box is far from the axis-aligned bounding box's size
    assert np.abs(shown[:, None, :] - expected[None, :, :]).sum(axis=2).min(axis=1).max() < 1e-3  # mm
    bounding = expected.max(axis=0) - expected.min(axis=0)
    assert np.all(np.sort(roi.GetSize()) < np.sort(bounding) - 20.0)


def _head_ct_hu(n_slices: int = 6, size: int = 16) -> np.ndarray:
    """A small head CT in HU: air -1000 around, skull 1000 HU, brain 40 HU."""
    jj, ii = np.mgrid[:size, :size]
    r = np.hypot(jj - size / 2, ii - size / 2)
    slice_ = np.where(r < 0.35 * size, 40.0, np.where(r < 0.45 * size, 1000.0, -1000.0))
    return np.repeat(slice_[None], n_slices, axis=0).astype(np.float32)


def test_headerless_ct_values_are_refused_and_an_mr_header_is_trusted():
    good = _blob_volume(6, 3)
    spec = preprocess.InputSpec(size=8, depth=8, voi=False)
    ct = Volume(_head_ct_hu(), good.geometry, {"source": "/data/ct.nrrd"})  # a volume file: no modality
    with pytest.raises(InputError, match=r"T1wCE \(/data/ct\.nrrd\): \d+ % of the voxels .* like air in a CT"):
        preprocess.prepare({"T1wCE": ct}, spec)
    preprocess.check_mri(Volume(ct.array, ct.geometry, {"modality": "MR"}), "T1wCE")  # the DICOM header decides
    zscored = (good.array - good.array.mean()) / good.array.std()  # normalised MR: a few negative values
    preprocess.prepare({"T1wCE": good.with_array(zscored.astype(np.float32))}, spec)
    assert preprocess.ct_air_fraction(ct.array) > 0.3 and preprocess.ct_air_fraction(zscored) == 0.0


def test_a_single_slice_or_thin_slab_is_refused_not_padded():
    spec = preprocess.InputSpec(size=8, depth=8, voi=False)
    assert preprocess.min_slices(8) == 2 and preprocess.min_slices(64) == 16 and preprocess.min_slices(1) == 1
    with pytest.raises(InputError, match=r"T1wCE: 1 slice\(s\); the model's window is 8 slices and needs at least 2"):
        preprocess.prepare({"T1wCE": _blob_volume(1, 0)}, spec)
    prepared = preprocess.prepare({"T1wCE": _blob_volume(2, 1)}, spec)  # a quarter of the window is enough
    assert prepared.n_slices == 2
    # one sagittal slice becomes an axial stack one pixel wide: refused as well
    sagittal = as_plane(_blob_volume(16, 8), "sagittal")
    one = Volume(sagittal.array[7:8], sagittal.geometry, {"modality": "MR"})
    with pytest.raises(InputError, match="a single slice or a thin slab"):
        preprocess.prepare({"T1wCE": one}, spec)
    # a second sequence is held to the same rule
    with pytest.raises(InputError, match=r"FLAIR: 1 slice\(s\)"):
        preprocess.prepare({"T1wCE": _blob_volume(8, 4), "FLAIR": _blob_volume(1, 0)},
                           preprocess.InputSpec(("T1wCE", "FLAIR"), size=8, depth=8, voi=False))


def test_phantom_generator_refuses_impossible_parameters_before_writing(tmp_path):
    for kwargs, message in ((dict(size=0), "need size >= 8 pixels"), (dict(n_slices=4), ">= 8 slices"),
                            (dict(signal=5.0), "signal must be in"), (dict(positive_fraction=-0.1), "positive_frac"),
                            (dict(plane_weights=(0.0, 0.0, 0.0)), "plane_weights"), (dict(sequences=("DWI",)), "DWI")):
        with pytest.raises(InputError, match=message):
            phantom.write_dataset(tmp_path / "x", 2, 0, **kwargs)
    with pytest.raises(InputError, match="cases must be >= 1"):
        phantom.write_dataset(tmp_path / "x", 0, 0)
    assert not (tmp_path / "x").exists()
