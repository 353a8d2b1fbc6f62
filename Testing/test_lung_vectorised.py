"""LungSurvival preprocessing on whole volumes at once gives what the per-slice loops gave: hole filling and the
largest component of every axial slice, and the network input resampled from the grid's box only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from LungSurvivalLib import preprocess as pp
from MedDLLib.geometry import Geometry, Volume


def _random_masks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.binary_opening(rng.random((9, 40, 36)) > 0.45, iterations=1) | (rng.random((9, 40, 36)) > 0.97)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fill_holes_per_slice_equals_the_slice_loop(seed):
    mask = ~_random_masks(seed)  # many holes, some touching the slice edges, first and last slices included
    expected = np.stack([ndimage.binary_fill_holes(m) for m in mask])
    assert np.array_equal(pp.fill_holes_per_slice(mask), expected)
    assert not pp.fill_holes_per_slice(np.zeros((3, 5, 5), bool)).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_largest_component_per_slice_equals_the_slice_loop(seed):
    mask = _random_masks(seed)
    mask[4] = False  # an empty slice
    expected = np.stack([pp._largest_component(m) for m in mask])
    assert np.array_equal(pp._largest_component_per_slice(mask), expected)


def test_network_input_from_the_grid_box_equals_the_whole_volume(tmp_path):
    """The crop box of the network grid is cleaned and resampled; values equal a whole-volume resample."""
    from MedDLLib.resample import resample_to_geometry

    rng = np.random.default_rng(5)
    hu = rng.integers(-1100, 300, size=(40, 64, 64)).astype(np.int16)
    hu[:, :4] = -2000  # padding outside the field of view
    geometry = Geometry((0.7, 0.7, 2.0), (-20.0, -30.0, -50.0))
    volume = Volume(hu, geometry)
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[10:30, 10:50, 8:30] = 1
    lungs[10:30, 10:50, 34:58] = 2
    for spec in (pp.InputSpec("crop", 16, crop_mm=20.0), pp.InputSpec("crop", 16, crop_mm=500.0),
                 pp.InputSpec("middle", 16, 8)):
        x, grid, info = pp.network_input(volume, lungs, spec)
        size = spec.shape_kji[::-1]
        image = resample_to_geometry(Volume(pp.clean_hu(hu), geometry), grid, size, default_value=pp.AIR_HU).array
        mask = resample_to_geometry(Volume((lungs > 0).astype(np.uint8), geometry), grid, size, is_label=True).array
        expected = np.clip((np.where(mask > 0, image, pp.AIR_HU) + 1000.0) / 1400.0, 0.0, 1.0)
        assert x.shape == (1, *spec.shape_kji)
        assert np.abs(x[0] - expected).max() < 1e-6, spec
    assert not np.shares_memory(pp.clean_hu(hu), hu) and hu.min() == -2000  # the input is never modified
