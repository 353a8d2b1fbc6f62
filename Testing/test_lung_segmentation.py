"""LungSurvival: lung segmentation on the real chest CT (TCIA Lung-PET-CT-Dx A0002) and geometry invariance."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LungSurvivalLib import preprocess
from LungSurvivalLib.preprocess import LEFT_LUNG, RIGHT_LUNG
from MedDLLib.dicom import read_dicom_folder
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.resample import to_sitk

CHEST = "ct_chest_tcia_lung_pet_ct_dx_A0002/dicom"


@pytest.fixture(scope="module")
def chest(real_data):
    volume = read_dicom_folder(real_data / CHEST)
    return volume, preprocess.segment_lungs(volume)


def _centroid_lps(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    kji = np.argwhere(mask).mean(axis=0)
    return (geometry.ijk_to_lps() @ np.r_[kji[::-1], 1.0])[:3]


def test_real_chest_ct_two_lungs_of_plausible_volume(chest):
    volume, seg = chest
    assert set(np.unique(seg.labels)) == {0, RIGHT_LUNG, LEFT_LUNG}
    # the scan (30 x 8 mm = 24 cm) covers the lungs from the bases to the apices, so whole-lung volumes apply:
    # an adult lung on inspiration CT holds roughly 1-4 L of air-density tissue, both together 2-8 L
    assert 700 < seg.right_ml < 4000 and 700 < seg.left_ml < 4000, (seg.right_ml, seg.left_ml)
    assert 2000 < seg.total_ml < 8000
    assert 0.5 < seg.right_ml / seg.left_ml < 2.0
    # each label is one large connected air-density region
    for value in (RIGHT_LUNG, LEFT_LUNG):
        mask = seg.labels == value
        from scipy import ndimage

        comps, n = ndimage.label(mask)
        sizes = np.bincount(comps.ravel())[1:]
        assert sizes.max() > 0.95 * mask.sum()
        assert np.median(volume.array[mask]) < -600  # air-density lung, not soft tissue
    # the stated volumes are voxel counts times the voxel volume
    voxel_ml = np.prod(volume.geometry.spacing_mm) / 1000.0
    assert seg.right_ml == pytest.approx((seg.labels == RIGHT_LUNG).sum() * voxel_ml)


def test_real_chest_ct_left_lung_is_on_the_patients_left(chest):
    volume, seg = chest
    g = volume.geometry
    x_left = _centroid_lps(seg.labels == LEFT_LUNG, g)[0]
    x_right = _centroid_lps(seg.labels == RIGHT_LUNG, g)[0]
    x_body = _centroid_lps(seg.body, g)[0]
    assert x_right < x_body - 40 and x_left > x_body + 40  # LPS: x grows towards the patient's left
    # in this (identity-direction) series the patient's left is the high-column side of the image
    assert np.argwhere(seg.labels == LEFT_LUNG)[:, 2].mean() > 256 > np.argwhere(seg.labels == RIGHT_LUNG)[:, 2].mean()


def test_real_chest_ct_mask_inside_body_bed_and_airway_excluded(chest):
    volume, seg = chest
    hu = volume.array
    lungs = seg.labels > 0
    assert not (lungs & ~seg.body).any()
    # the table is in the image (dense voxels below the body's posterior edge) and outside the body and lungs
    bed_voxels = 0
    for k in range(hu.shape[0]):
        rows = np.flatnonzero(seg.body[k].any(axis=1))
        posterior = rows.max()
        assert not lungs[k, posterior + 1:].any()
        bed_voxels += int((hu[k, posterior + 1:] > -500).sum())
    assert bed_voxels > 10_000
    assert not (seg.body & (hu < -900)).sum() > 0.8 * lungs.sum()  # outside air is not in the body
    # the trachea (midline air tube in the upper slices) was found and is not lung
    assert 5.0 < seg.airway.sum() * volume.geometry.voxel_volume_ml() < 150.0
    airway_x = _centroid_lps(seg.airway, volume.geometry)[0]
    assert abs(airway_x - _centroid_lps(seg.body, volume.geometry)[0]) < 30.0
    assert not (seg.airway & lungs).any()
    top = max(k for k in range(hu.shape[0]) if seg.airway[k].any())
    assert (seg.airway[top] & (hu[top] < -900)).sum() > 0.5 * seg.airway[top].sum()


def test_real_chest_ct_total_matches_an_independent_simpleitk_count(chest):
    """SimpleITK: air below -400 HU, connected components; the largest one not touching the image border is the
    lungs plus airways. Ours = that minus the airway plus filled vessels/nodules: equal within 3 %."""
    volume, seg = chest
    image = to_sitk(volume)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.BinaryThreshold(image, -3000, -400, 1, 0)))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(components)
    size = image.GetSize()
    inner = [lab for lab in stats.GetLabels()
             if all(b > 0 and b + n < s for b, n, s in zip(stats.GetBoundingBox(lab)[:2], stats.GetBoundingBox(lab)[3:5], size[:2]))]
    reference_ml = stats.GetPhysicalSize(inner[0]) / 1000.0
    assert seg.total_ml == pytest.approx(reference_ml, rel=0.03)
    assert seg.total_ml + seg.airway.sum() * volume.geometry.voxel_volume_ml() >= reference_ml


def test_segmentation_follows_geometry_not_array_order(chest):
    """The same scan stored mirrored (i axis pointing right) and with the slices reversed gives the same lungs."""
    volume, seg = chest
    g = volume.geometry
    n_k, _, n_i = volume.array.shape
    # new voxel (i', j, k') = old (n_i-1-i, j, n_k-1-k): direction columns for i and k flip, origin moves
    origin = g.ijk_to_lps() @ np.array([n_i - 1, 0, n_k - 1, 1.0])
    direction = g.direction @ np.diag([-1.0, 1.0, -1.0])
    flipped = Volume(np.ascontiguousarray(volume.array[::-1, :, ::-1]), Geometry(g.spacing_mm, tuple(origin[:3]), direction))
    seg2 = preprocess.segment_lungs(flipped)
    np.testing.assert_array_equal(seg2.labels[::-1, :, ::-1], seg.labels)
    assert seg2.left_ml == pytest.approx(seg.left_ml)


def test_padding_becomes_air_and_non_chest_input_is_refused():
    hu = np.array([[-2000, -3024, -1024, 40]], dtype=np.int16)
    np.testing.assert_array_equal(preprocess.clean_hu(hu), [[-1000, -1000, -1024, 40]])
    # a water cylinder (no air inside the body): no lungs
    shape = (12, 64, 64)
    yy, xx = np.mgrid[:64, :64]
    body = ((yy - 32) ** 2 + (xx - 32) ** 2 < 25 ** 2)
    hu = np.where(body[None], 20.0, -1000.0) * np.ones(shape)
    with pytest.raises(InputError, match="no lungs found"):
        preprocess.segment_lungs(Volume(hu.astype(np.float32), Geometry((5.0, 5.0, 5.0))))
    sag = Geometry((1.0, 1.0, 1.0), direction_lps=((0, 0, 1), (1, 0, 0), (0, 1, 0)))
    with pytest.raises(InputError, match="axial"):
        preprocess.segment_lungs(Volume(hu.astype(np.float32), sag))


def test_large_volumes_are_segmented_on_a_coarser_grid_with_the_same_result(chest):
    """The coarse path (used above MAX_SEGMENT_VOXELS, e.g. 300 x 512 x 512) agrees with full resolution on the
    real chest CT: here forced by a small voxel limit (2 x 2 in-plane blocks, 1.29 mm)."""
    volume, full = chest
    assert preprocess.working_factors(volume.array.shape, volume.geometry.spacing_mm, 2_000_000) == (1, 2, 2)
    assert preprocess.working_factors((300, 512, 512), (0.7, 0.7, 1.0)) == (1, 2, 2)  # 1.4 x 1.4 x 1 mm
    assert preprocess.working_factors((600, 512, 512), (0.7, 0.7, 0.5)) == (2, 2, 2)
    coarse = preprocess.segment_lungs(volume, max_voxels=2_000_000)
    assert coarse.labels.shape == full.labels.shape and coarse.body.shape == full.body.shape
    assert any("coarser" in n or "segmented on a" in n for n in coarse.notes)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        a, b = full.labels == value, coarse.labels == value
        assert 2.0 * (a & b).sum() / (a.sum() + b.sum()) > 0.97  # measured 0.991 (right), 0.994 (left)
    assert coarse.right_ml == pytest.approx(full.right_ml, rel=0.03)
    assert coarse.left_ml == pytest.approx(full.left_ml, rel=0.03)
    assert not (coarse.labels.astype(bool) & ~coarse.body).any()
