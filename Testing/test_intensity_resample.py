"""Windows, normalisation and the SimpleITK resampler (geometry kept consistent)."""

from __future__ import annotations

import numpy as np
import pytest

from MedDLLib import intensity
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.resample import resample, resample_to_reference, to_sitk


def test_named_windows_map_edges_to_0_and_1():
    assert intensity.WINDOWS["brain"] == (40.0, 80.0) and intensity.WINDOWS["bone"] == (600.0, 2800.0)
    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 1000.0])
    np.testing.assert_allclose(intensity.apply_window(hu, "brain"), [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(intensity.apply_window(hu, (-600, 1500)), np.clip((hu + 1350) / 1500, 0, 1), rtol=1e-6)
    channels = intensity.window_channels(np.zeros((4, 5)), ("brain", "subdural", "bone"))
    assert channels.shape == (3, 4, 5) and channels.dtype == np.float32
    with pytest.raises(InputError, match="unknown window 'liver'"):
        intensity.apply_window(hu, "liver")


def test_normalisations():
    a = np.array([[0.0, 5.0, 10.0], [3.0, 3.0, 3.0]])
    np.testing.assert_allclose(intensity.normalize_minmax(a, axis=-1), [[0, 0.5, 1], [0, 0, 0]])
    z = intensity.normalize_zscore(np.arange(10.0))
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-6
    p = intensity.normalize_percentile(np.arange(101.0), 10, 90)
    assert p[10] == 0 and p[90] == 1 and p[0] == 0 and p[100] == 1
    np.testing.assert_allclose(intensity.normalize_max_abs(np.array([-4.0, 2.0])), [-1.0, 0.5])
    np.testing.assert_allclose(intensity.clip_and_scale(np.array([-2000, -1000, 400, 900]), -1000, 400), [0, 0, 1, 1])


def _ramp_volume(geometry: Geometry, shape=(8, 12, 16)) -> Volume:
    """Values = L+P+S coordinate sum (linear in physical space, so linear interpolation is exact)."""
    k, j, i = np.indices(shape)
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    lps = (geometry.ijk_to_lps()[:3, :3] @ ijk.T).T + geometry.origin_lps_mm
    return Volume(lps.sum(axis=1).reshape(shape).astype(np.float32), geometry)


def test_resample_to_spacing_keeps_physical_positions():
    c, s = np.cos(0.4), np.sin(0.4)
    geometry = Geometry((1.0, 1.5, 3.0), (10.0, -20.0, 5.0), ((c, -s, 0), (s, c, 0), (0, 0, 1)))
    vol = _ramp_volume(geometry)
    out = resample(vol, spacing_mm=(0.5, 0.75, 1.5))
    assert out.array.shape == (16, 24, 32)
    assert out.geometry.direction_lps == geometry.direction_lps
    # same physical extent: centres of the grids coincide
    centre = lambda v: v.geometry.ijk_to_lps() @ np.r_[(np.array(v.array.shape[::-1]) - 1) / 2.0, 1.0]
    np.testing.assert_allclose(centre(out), centre(vol), atol=1e-6)
    # interior voxels carry the value of their physical position (exact for a linear ramp)
    expected = _ramp_volume(out.geometry, out.array.shape).array
    np.testing.assert_allclose(out.array[1:-1, 1:-1, 1:-1], expected[1:-1, 1:-1, 1:-1], atol=1e-3)


def test_resample_to_size_and_labels_use_nearest():
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:8, 5:15, 5:15] = 3
    vol = Volume(labels, Geometry((1.0, 1.0, 2.0)))
    out = resample(vol, size=(40, 40, 20), is_label=True)
    assert out.array.shape == (20, 40, 40) and out.array.dtype == np.uint8
    assert set(np.unique(out.array)) == {0, 3}
    np.testing.assert_allclose(out.geometry.spacing_mm, (0.5, 0.5, 1.0))
    # volume in mm^3 of the label is preserved (up to one voxel layer)
    before = (labels == 3).sum() * np.prod(vol.geometry.spacing_mm)
    after = (out.array == 3).sum() * np.prod(out.geometry.spacing_mm)
    assert abs(after - before) / before < 0.15


def test_resample_back_to_reference_round_trip():
    geometry = Geometry((0.8, 0.8, 2.5), (-30.0, 10.0, 40.0))
    vol = _ramp_volume(geometry)
    small = resample(vol, spacing_mm=(1.6, 1.6, 5.0))
    back = resample_to_reference(small, vol)
    assert back.array.shape == vol.array.shape and back.geometry.allclose(vol.geometry)
    inner = (slice(2, -2), slice(3, -3), slice(3, -3))
    np.testing.assert_allclose(back.array[inner], vol.array[inner], atol=1e-2)
    assert to_sitk(back).GetSize() == to_sitk(vol).GetSize()


def test_resample_rejects_bad_targets():
    vol = Volume(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(InputError):
        resample(vol)
    with pytest.raises(InputError):
        resample(vol, spacing_mm=(1, 0, 1))


# ---------------------------------------------------------------------------------------------- torch-free resizing
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("shape, size", [((3, 2, 17, 23), (64, 64)), ((2, 100, 100), (33, 67)), ((1, 7, 7), (7, 9)),
                                         ((2, 64, 64), (256, 200)), ((2, 512, 512), (256, 256)),
                                         ((4, 30, 31), (31, 30))])
def test_resize_slices_gives_torchs_interpolate_without_torch(shape, size, mode):
    """Up and down, odd ratios: the values of ``F.interpolate`` (a few float32 rounding steps at most)."""
    import torch
    import torch.nn.functional as F

    from MedDLLib.resample import resize_slices

    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    expected = F.interpolate(torch.from_numpy(array.reshape(-1, 1, *shape[-2:])), size=size, mode=mode,
                             **kwargs).numpy().reshape(*shape[:-2], *size)
    got = resize_slices(array, size, mode)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() <= (1e-6 if mode == "bilinear" else 0.0)


@pytest.mark.parametrize("cells, spatial", [((2, 1, 4, 16, 16), (64, 256, 256)), ((1, 1, 5, 9, 13), (37, 101, 77)),
                                            ((3, 1, 5, 7), (40, 33)), ((1, 1, 9), (20,)), ((1, 1, 4, 4, 4), (2, 3, 9))])
def test_cam_maps_upsample_as_torchs_linear_modes(cells, spatial):
    import torch
    import torch.nn.functional as F

    from MedDLLib.gradcam import cam_maps

    cam = np.random.default_rng(1).normal(size=cells).astype(np.float32)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
    expected = F.interpolate(F.relu(torch.from_numpy(cam)), size=spatial, mode=mode, align_corners=False)[:, 0].numpy()
    got = cam_maps(cam, spatial)
    assert got.dtype == np.float32 and np.abs(got - expected / expected.max()).max() <= 1e-6
    assert not cam_maps(-np.abs(cam), spatial).any()  # no positive cell: all zeros
