"""GliomaClassifierLib.tumour: brats_mri_segmentation's tumour regions and the classifier window's centre."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedDLLib import bundles, models
from MedDLLib.geometry import Geometry, Volume
from test_bundles import needs_zoo, zoo_copy

from GliomaClassifierLib import tumour


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


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
