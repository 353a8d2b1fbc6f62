"""Zoo bundles used by the tasks: wholeBody lobes as LungSurvival's lungs, BraTS regions for GliomaClassifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedDLLib import bundles, models
from MedDLLib.geometry import Geometry, Volume
from test_bundles import needs_zoo, zoo_copy

from GliomaClassifierLib import tumour
from LungSurvivalLib import lobes
from LungSurvivalLib.preprocess import LEFT_LUNG, RIGHT_LUNG


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _chest(direction=((1, 0, 0), (0, 1, 0), (0, 0, 1)), shape=(16, 24, 24), spacing=(3.0, 3.0, 3.0)) -> Volume:
    """A crude chest: body of soft tissue with two air-filled lungs."""
    array = np.full(shape, -1000.0, dtype=np.float32)
    array[:, 3:-3, 3:-3] = 40.0
    array[3:-3, 7:-7, 5:11] = -850.0
    array[3:-3, 7:-7, 13:19] = -850.0
    return Volume(array, Geometry(spacing, (-30.0, -40.0, -20.0), direction))


def test_lobes_from_labels_volumes_in_ml():
    ct = _chest()
    masks = {name: np.zeros(ct.array.shape, np.uint8) for name, _, _ in lobes.LOBES.values()}
    masks["lung_upper_lobe_right"][2:5, 8:12, 5:11] = 1   # 3*4*6 = 72 voxels of 27 mm^3
    masks["lung_lower_lobe_left"][5:9, 8:12, 13:19] = 1   # 96 voxels
    result = lobes.lobes_from_labels(ct, lambda n: masks.get(n, np.zeros(ct.array.shape, np.uint8)))
    assert result.lobe_ml["Right upper lobe"] == pytest.approx(72 * 0.027)
    assert result.lobe_ml["Left lower lobe"] == pytest.approx(96 * 0.027)
    assert result.lungs.right_ml == pytest.approx(72 * 0.027) and result.lungs.left_ml == pytest.approx(96 * 0.027)
    assert set(np.unique(result.lungs.labels)) == {0, RIGHT_LUNG, LEFT_LUNG}
    row = result.volumes_row()
    assert list(row)[:2] == ["Right lung mL", "Left lung mL"] and "Right middle lobe mL" in row


class _SideProbe(torch.nn.Module):
    """wholeBody stand-in: right upper lobe (class 15) at high i of the RAS array it sees, left upper lobe (13) at
    low i, inside the lungs (air)."""

    def forward(self, x):
        out = torch.full((x.shape[0], 105, *x.shape[2:]), -5.0)
        air = x[:, 0] < x[:, 0].mean() - 0.5 * x[:, 0].std()
        i = torch.arange(x.shape[2]).view(1, -1, 1, 1).expand_as(air)
        centre = (x.shape[2] - 1) / 2
        out[:, 15] = torch.where(air & (i > centre), 5.0, -5.0)
        out[:, 13] = torch.where(air & (i <= centre), 5.0, -5.0)
        return out


@needs_zoo
@pytest.mark.parametrize("direction", [((1, 0, 0), (0, 1, 0), (0, 0, 1)), ((-1, 0, 0), (0, 1, 0), (0, 0, -1))])
def test_lobes_left_is_the_patients_left(direction, tmp_path, home, monkeypatch):
    name = bundles.import_bundle(zoo_copy("wholeBody_ct_segmentation", tmp_path)).name
    monkeypatch.setattr(models.ModelPackage, "network", lambda self, device=None: _SideProbe())
    ct = _chest(direction)
    result = lobes.segment_lobes(ct, name, roi_size=(64, 64, 64))
    labels = result.lungs.labels
    assert result.lungs.left_ml > 5 and result.lungs.right_ml > 5
    # LPS x of every labelled voxel: left lung at larger x (L = +x) than right lung
    k, j, i = np.nonzero(labels)
    x = (ct.geometry.ijk_to_lps() @ np.stack([i, j, k, np.ones_like(i)]))[0]
    assert x[labels[k, j, i] == LEFT_LUNG].min() > x[labels[k, j, i] == RIGHT_LUNG].max()


@needs_zoo
def test_wholebody_segresnet_random_weights_whole_path(tmp_path, home):
    name = bundles.import_bundle(zoo_copy("wholeBody_ct_segmentation", tmp_path)).name
    ct = _chest(((0, 1, 0), (1, 0, 0), (0, 0, -1)), shape=(12, 16, 16))
    result = lobes.segment_lobes(ct, name, roi_size=(32, 32, 32))
    assert result.lobes.shape == ct.array.shape and result.lungs.labels.shape == ct.array.shape
    total = sum(result.lobe_ml.values())
    assert total == pytest.approx(result.lungs.left_ml + result.lungs.right_ml)


def _brain(geometry: Geometry, shape=(24, 28, 28), value=300.0) -> tuple[Volume, np.ndarray]:
    k, j, i = np.indices(shape)
    head = ((k - 12) / 11) ** 2 + ((j - 14) / 13) ** 2 + ((i - 14) / 13) ** 2 < 1
    lesion = (k >= 14) & (k < 20) & (j >= 6) & (j < 12) & (i >= 16) & (i < 22)
    array = np.where(head, 100.0, 0.0) + np.where(lesion, value, 0.0)
    return Volume(array.astype(np.float32), geometry), lesion


class _BrightProbe(torch.nn.Module):
    def forward(self, x):
        bright = (x[:, :1] > 1.0).float()  # z-scored inside the head: the lesion is > 1 sd above
        return torch.cat([bright * 8 - 4] * 3, 1)


@needs_zoo
def test_tumour_regions_and_window_centre(tmp_path, home, monkeypatch):
    name = bundles.import_bundle(zoo_copy("brats_mri_segmentation", tmp_path)).name
    monkeypatch.setattr(models.ModelPackage, "network", lambda self, device=None: _BrightProbe())
    grid = Geometry((1.0, 1.0, 1.0), (-14.0, -14.0, -12.0))
    volumes = {}
    for rsna in tumour.SEQUENCES.values():
        volumes[rsna], lesion = _brain(grid)
    # T2w on another grid (2 mm slices): resampled onto the T1wCE grid in patient space
    from MedDLLib.resample import resample

    volumes["T2w"] = resample(volumes["T2w"], spacing_mm=(1.0, 1.0, 2.0))
    regions = tumour.segment_tumour(volumes, name, roi_size=(32, 32, 32))
    whole = regions.masks["whole tumour"].astype(bool)
    dice = 2 * (whole & lesion).sum() / (whole.sum() + lesion.sum())
    assert dice > 0.9 and regions.volumes_ml["whole tumour"] == pytest.approx(whole.sum() / 1000)
    assert any("Lambdad" in n for n in regions.notes)
    assert regions.labelmap().max() == 3
    # the classifier's stack: the same grid -> the lesion's centre slice (k 14..19 -> 16.5)
    assert tumour.window_centre_slice(regions, grid, 24) in (16, 17)


@needs_zoo
def test_brats_segresnet_random_weights_whole_path(tmp_path, home):
    name = bundles.import_bundle(zoo_copy("brats_mri_segmentation", tmp_path)).name
    grid = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), ((0, 1, 0), (1, 0, 0), (0, 0, -1)))
    volumes = {rsna: _brain(grid, shape=(16, 24, 24))[0] for rsna in tumour.SEQUENCES.values()}
    regions = tumour.segment_tumour(volumes, name, roi_size=(16, 24, 24))
    assert set(regions.masks) == {"tumour core", "whole tumour", "enhancing tumour"}
    assert all(m.shape == (16, 24, 24) for m in regions.masks.values()) and regions.geometry == grid


def test_tumour_needs_all_four_sequences():
    from MedDLLib.errors import InputError

    with pytest.raises(InputError, match="missing T2w, FLAIR"):
        tumour.bundle_inputs({"T1wCE": _brain(Geometry())[0], "T1w": _brain(Geometry())[0]})
