"""LGGSegmenter: tumour features against analytic values, and the death01 model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from LGGSegmenterLib.features import FEATURE_COLUMNS, death_model_auroc, tumour_features
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry


def _ellipsoid(shape, centre_kji, radii_mm, spacing_ijk):
    """Voxel-centre sampled ellipsoid with semi-axes ``radii_mm`` along (k, j, i)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    spacing_kji = spacing_ijk[::-1]
    dist = sum(((g - c) * s / r) ** 2 for g, c, s, r in zip(grids, centre_kji, spacing_kji, radii_mm))
    return dist <= 1.0


ROTATION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # i -> LPS y, j -> -x


@pytest.mark.parametrize("radii_mm", [(15.0, 15.0, 15.0), (12.0, 20.0, 9.0)])
def test_volume_centroid_spread_match_the_analytic_ellipsoid_within_2_percent(radii_mm):
    spacing = (0.8, 0.9, 1.5)  # i, j, k (anisotropic)
    geometry = Geometry(spacing, (-30.0, 12.0, 40.0), ROTATION)
    shape, centre = (30, 60, 60), (14.3, 29.6, 30.2)
    mask = _ellipsoid(shape, centre, radii_mm, spacing)
    f = tumour_features(mask, geometry)
    rk, rj, ri = radii_mm
    assert f.volume_ml == pytest.approx(4.0 / 3.0 * math.pi * rk * rj * ri / 1000.0, rel=0.02)
    expected_centroid = geometry.ijk_to_ras_points(np.array([centre[::-1]]))[0]
    size_mm = np.linalg.norm(radii_mm)
    assert np.abs(np.array(f.centroid_ras_mm) - expected_centroid).max() < 0.02 * size_mm
    # spread along R, A, S: the i axis runs along A (LPS y), j along R, k along S
    expected_spread = np.array([rj, ri, rk]) / math.sqrt(5.0)
    assert np.allclose(f.spread_mm, expected_spread, rtol=0.02)
    assert 0.85 < f.ellipsoid_ratio <= 1.0
    assert sum(f.area_mm2) * spacing[2] / 1000.0 == pytest.approx(f.volume_ml)


def test_shape_features_separate_regular_from_irregular():
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    cube = np.zeros((30, 30, 30), bool)
    cube[5:25, 5:25, 5:25] = True
    # continuous cube: 2 / (pi sqrt 3) = 0.37 of its circumscribed sphere; voxel centres give a bit more
    assert 0.35 < tumour_features(cube, geometry).ellipsoid_ratio < 0.5
    disc = _ellipsoid((3, 61, 61), (1, 30, 30), (1.5, 20, 20), (1.0, 1.0, 1.0))
    yy, xx = np.mgrid[:61, :61]
    angle = np.arctan2(yy - 30, xx - 30)
    radius = np.hypot(yy - 30, xx - 30)
    star = np.broadcast_to(radius <= 17 + 4 * np.sin(12 * angle), (3, 61, 61)) & disc.any(axis=(1, 2))[:, None, None]
    smooth = tumour_features(disc, geometry).margin_fluctuation_mm
    ragged = tumour_features(star, geometry).margin_fluctuation_mm
    assert smooth < 0.5 < 1.5 < ragged


def test_empty_mask_gives_zero_volume_and_undefined_position():
    f = tumour_features(np.zeros((4, 8, 8), bool), Geometry())
    assert f.volume_ml == 0.0 and f.n_voxels == 0 and all(math.isnan(v) for v in f.centroid_ras_mm)
    with pytest.raises(InputError, match="3D"):
        tumour_features(np.zeros((8, 8), bool), Geometry())


def test_death_model_finds_the_size_signal_and_beats_clinical_only():
    rng = np.random.default_rng(0)
    n = 80
    patients = [f"TCGA_PH_{i:04d}" for i in range(n)]
    volume = rng.lognormal(1.0, 0.6, n)
    death = (rng.random(n) < 1 / (1 + np.exp(-3 * (volume - np.median(volume)) / volume.std()))).astype(int)
    features = pd.DataFrame({c: rng.normal(size=n) for c in FEATURE_COLUMNS}, index=patients)
    features["tumour_volume_ml"] = volume
    clinical = pd.DataFrame({"age_at_initial_pathologic": rng.normal(45, 12, n),
                             "RNASeqCluster": np.where(rng.random(n) < 0.2, np.nan, rng.integers(1, 5, n)),
                             "death01": death}, index=pd.Index(patients, name="Patient"))
    result = death_model_auroc(features, clinical)
    assert result["death01_n"] == n
    assert result["death01_auroc_features"] > 0.75
    assert result["death01_auroc_features_ci_low"] > 0.5
    assert result["death01_auroc_clinical"] < result["death01_auroc_features_ci_low"]
    with pytest.raises(InputError, match="death01"):
        death_model_auroc(features, clinical.drop(columns="death01"))


def test_features_equal_the_plain_numpy_expressions_bit_for_bit():
    """tumour_features keeps one float64 array of the tumour's positions (about 56 bytes per tumour voxel at its
    peak, not 120, issue 20): every value equals, bit for bit, the plain expressions it replaced (argwhere,
    ijk_to_ras_points, mean, std, np.cov), on oblique anisotropic grids, one voxel and thin masks included."""
    def plain(mask, geometry):
        ras = geometry.ijk_to_ras_points(np.argwhere(mask)[:, ::-1].astype(float))
        rot = geometry.ijk_to_ras()[:3, :3]
        voxel_cov = rot @ rot.T / 12.0
        cov = np.cov(ras.T, bias=True) + voxel_cov if len(ras) > 1 else voxel_cov
        eigval, eigvec = np.linalg.eigh(cov)
        radii = np.sqrt(5.0 * np.maximum(eigval, 1e-12))
        local = (ras - ras.mean(axis=0)) @ eigvec / radii
        scale = max(1.0, float(np.sqrt((local ** 2).sum(axis=1)).max()))
        ratio = mask.sum() * geometry.voxel_volume_ml() / (4.0 / 3.0 * math.pi * float(np.prod(radii)) * scale ** 3
                                                           / 1000.0)
        return tuple(map(float, ras.mean(axis=0))), tuple(map(float, ras.std(axis=0))), float(ratio)

    rng = np.random.default_rng(7)
    tilt = np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])
    geometries = [Geometry((0.8, 0.9, 1.5), (-30.0, 12.0, 40.0), ROTATION),
                  Geometry((0.4688, 0.4688, 3.3), (101.3, -7.7, 12.9), tilt)]
    masks = [rng.random((21, 30, 34)) < 0.3, np.zeros((21, 30, 34), bool), np.zeros((3, 9, 9), bool)]
    masks[1][10, 3:27, 5] = True  # a line
    masks[2][1, 4, 6] = True  # one voxel
    for geometry in geometries:
        for mask in masks:
            f = tumour_features(mask.astype(np.uint8), geometry)
            centroid, spread, ratio = plain(mask, geometry)
            assert f.centroid_ras_mm == centroid and f.spread_mm == spread and f.ellipsoid_ratio == ratio
