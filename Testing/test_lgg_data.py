"""LGGSegmenter: kaggle_3m reader, phantoms, preprocessing geometry."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from LGGSegmenterLib import dataset, preprocess
from LGGSegmenterLib.phantom import LGGPhantomGenerator, write_dataset
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume


def _write_case(root, case_id, n_slices, with_masks=True):
    folder = root / case_id
    folder.mkdir(parents=True)
    for n in range(1, n_slices + 1):  # slice n has value n in every channel
        tifffile.imwrite(folder / f"{case_id}_{n}.tif", np.full((8, 8, 3), n, np.uint8))
        if with_masks:
            tifffile.imwrite(folder / f"{case_id}_{n}_mask.tif", np.full((8, 8), 255 * (n % 2), np.uint8))
    return folder


def test_slices_are_ordered_numerically_and_patient_id_strips_the_date(tmp_path):
    _write_case(tmp_path, "TCGA_CS_4941_19960909", 12)
    (case,) = dataset.scan_dataset(tmp_path)
    assert case.patient_id == "TCGA_CS_4941"
    image = dataset.read_slices(case)
    assert image.shape == (12, 3, 8, 8)
    assert image[:, 1, 0, 0].tolist() == list(range(1, 13))  # 1, 2, ..., 10, 11, 12: not 1, 10, 11, 12, 2
    assert dataset.read_masks(case)[:, 0, 0].tolist() == [bool(n % 2) for n in range(1, 13)]


def test_clear_errors_for_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="TCGA_XX_XXXX_YYYYMMDD"):
        dataset.patient_id_of("patient7")
    folder = _write_case(tmp_path, "TCGA_CS_0001_20000101", 3, with_masks=False)
    with pytest.raises(InputError, match="no mask file"):
        dataset.read_masks(dataset.read_case_folder(folder))
    tifffile.imwrite(folder / "TCGA_CS_0001_20000101_4.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="RGB"):
        dataset.read_slices(dataset.read_case_folder(folder))
    with pytest.raises(InputError, match="data.csv"):
        dataset.read_clinical(tmp_path)


def test_phantom_layout_masks_and_clinical_table(tmp_path):
    manifest = write_dataset(tmp_path, 6, seed=3, size=48, n_slices=10, dicom=True)
    cases = dataset.scan_dataset(tmp_path)
    assert len(cases) == 6 and (tmp_path / "kaggle_3m").is_dir()
    clinical = dataset.read_clinical(tmp_path)
    assert set(clinical.index) == {c.patient_id for c in cases}
    assert set(clinical["death01"]) == {0, 1}
    assert clinical["RNASeqCluster"].isna().any() or clinical["ethnicity"].isna().any()
    for case, truth in zip(cases, manifest["truth"]):
        image, mask = dataset.read_slices(case), dataset.read_masks(case)
        assert image.shape == (10, 3, 48, 48) and mask.sum() == truth["tumour_voxels"] > 0
        flair = image[:, 1].astype(float)
        assert flair[mask].mean() > flair[~mask & (flair > 20)].mean() + 30  # the planted signal
    # death01 is linked to tumour size
    vol = {t["patient_id"]: t["tumour_volume_ml"] for t in manifest["truth"]}
    dead = [vol[p] for p in clinical.index[clinical["death01"] == 1]]
    alive = [vol[p] for p in clinical.index[clinical["death01"] == 0]]
    assert np.mean(dead) > np.mean(alive)
    # the DICOM copy reads back as the same voxels on the nominal grid
    from MedDLLib.dicom import find_series, read_series

    series = find_series(tmp_path / "dicom" / cases[0].case_id)
    flair_series = [s for s in series if s.description == "FLAIR"][0]
    vol_dcm = read_series(flair_series)
    assert np.array_equal(vol_dcm.array, dataset.read_slices(cases[0])[:, 1])
    assert vol_dcm.geometry.allclose(dataset.nominal_geometry(vol_dcm.array.shape))


def test_phantom_is_reproducible():
    a = LGGPhantomGenerator(48, 8).make_case(np.random.default_rng(5))
    b = LGGPhantomGenerator(48, 8).make_case(np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_improved_preprocessing_crops_brain_and_normalises():
    image, mask = LGGPhantomGenerator(64, 8).make_case(np.random.default_rng(0))
    prepared = preprocess.prepare(image, "improved", 32)
    crop = prepared.crop
    assert prepared.x.shape == (8, 3, 32, 32)
    assert crop.box_hw[0] == crop.box_hw[1] < 64  # square box, smaller than the slice
    brain = preprocess.head_mask(image.astype(np.float32))
    assert brain[:, crop.j0:crop.j1, crop.i0:crop.i1].sum() == brain.sum()  # no brain voxel lost
    assert prepared.x.min() >= 0.0 and prepared.x.max() <= 1.0
    seed = preprocess.prepare(image, "seed", 64)
    assert np.allclose(seed.x, image / 255.0, atol=1e-6)
    with pytest.raises(InputError, match="recipe"):
        preprocess.prepare(image, "fancy", 32)


def test_network_grid_geometry_matches_the_inverse_resize():
    """Grad-CAM goes back through the network-grid geometry; probabilities through to_input_grid: same place."""
    from MedDLLib.gradcam import heatmap_to_reference

    crop = preprocess.Crop(6, 46, 10, 50, 20)  # 40 x 40 box -> 20 x 20
    rng = np.random.default_rng(0)
    grid_map = np.zeros((3, 20, 20), np.float32)
    grid_map[:, 5:12, 8:15] = 1.0
    grid_map += 0.01 * rng.random(grid_map.shape).astype(np.float32)
    geometry = Geometry((0.9, 1.1, 3.0), (10.0, -5.0, 2.0), np.eye(3))
    direct = preprocess.to_input_grid(grid_map, crop, (56, 60))
    via_geometry = heatmap_to_reference(grid_map, preprocess.network_grid_geometry(geometry, crop),
                                        Volume(np.zeros((3, 56, 60), np.float32), geometry, {})).array
    inside = np.zeros_like(direct, dtype=bool)
    inside[:, crop.j0 + 1:crop.j1 - 1, crop.i0 + 1:crop.i1 - 1] = True
    assert np.abs(direct - via_geometry)[inside].max() < 0.05
    assert np.array_equal(direct > 0.5, via_geometry > 0.5)


@pytest.mark.parametrize("recipe", ["improved", "seed", "buda-unet"])
def test_prepare_gives_an_integer_study_the_network_input_of_its_float32_copy(recipe):
    """prepare takes an integer study as it is (no float32 copy of all of it, issue 20): the network input is,
    bit for bit, that of the study converted to float32 first (what it computed from before); 8-slice steps
    with a remainder (19 slices) and a resize."""
    image, _ = LGGPhantomGenerator(64, 19).make_case(np.random.default_rng(3))
    image = (image.astype(np.uint16) * 13 + 7).astype(np.uint16)  # 16-bit MR values
    for size in (48, 64):
        from_int = preprocess.prepare(image, recipe, size)
        from_float = preprocess.prepare(image.astype(np.float32), recipe, size)
        assert from_int.x.dtype == np.float32 and from_int.crop == from_float.crop
        assert np.array_equal(from_int.x, from_float.x)


def test_to_input_grid_equals_one_resize_of_all_slices():
    """The probabilities go back onto the input grid 8 slices at a time: the values of one resize of all."""
    from MedDLLib.resample import resize_slices

    crop = preprocess.Crop(6, 46, 10, 50, 32)
    maps = np.random.default_rng(1).random((19, 32, 32)).astype(np.float32)
    expected = np.zeros((19, 56, 60), np.float32)
    expected[:, 6:46, 10:50] = resize_slices(maps[:, None], (40, 40))[:, 0]
    assert np.array_equal(preprocess.to_input_grid(maps, crop, (56, 60)), expected)


def test_largest_component_equals_labelling_the_whole_volume():
    """postprocess labels only the mask's bounding box and counts in chunks: the component MONAI's rule keeps
    (the largest, of equal sizes the last label) is the one a labelling of the whole volume keeps."""
    from scipy import ndimage

    from LGGSegmenterLib.model import postprocess

    def plain(mask):
        labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
        if n <= 1:
            return mask
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        return labels == int(np.flatnonzero(sizes == sizes.max())[-1])

    rng = np.random.default_rng(2)
    for fraction in (0.002, 0.05, 0.3):
        probability = np.zeros((12, 40, 44), np.float32)
        probability[2:11, 5:33, 9:41] = rng.random((9, 28, 32)) < fraction
        assert np.array_equal(postprocess(probability), plain(probability >= 0.5))
    ties = np.zeros((6, 20, 20), np.float32)
    ties[1, 2:4, 2:4] = ties[4, 12:14, 15:17] = 1.0  # two components of 4 voxels: the later one is kept
    kept = postprocess(ties)
    assert np.array_equal(kept, plain(ties >= 0.5)) and kept[4].sum() == 4 and not kept[1].any()
