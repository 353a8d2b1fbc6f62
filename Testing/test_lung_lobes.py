"""LungSurvivalLib.lobes: wholeBody_ct_segmentation's lungs and five lobes as LungSurvival's lung segmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedDLLib import bundles, models
from MedDLLib.geometry import Geometry, Volume
from test_bundles import needs_zoo, zoo_copy

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
