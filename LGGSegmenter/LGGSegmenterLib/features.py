"""Tumour features from a 3D mask in physical units, and the death01 model built on them.

Features (Buda et al. 2019; shape features after Mazurowski et al. 2017):

* ``volume_ml``: voxel count x voxel volume;
* ``area_mm2`` per slice (k) and its maximum;
* ``centroid_ras_mm``: mean RAS position of the tumour voxel centres;
* ``spread_mm``: standard deviation of the tumour voxel positions along R, A and S (mm); a solid ellipsoid
  with semi-axis a along an axis has spread a / sqrt(5);
* ``ellipsoid_ratio``: tumour volume / volume of its bounding ellipsoid (principal axes from the second moments,
  scaled to enclose every voxel centre): about 1 for an ellipsoid, lower for irregular shapes (0.37 for a cube);
* ``margin_fluctuation_mm``: on the slice of largest area, the standard deviation of (distance from the
  centroid to each boundary point) minus its moving average along the boundary: 0 for a circle, larger for a
  ragged margin.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry

FEATURE_COLUMNS = ("tumour_volume_ml", "max_area_mm2", "spread_r_mm", "spread_a_mm", "spread_s_mm",
                   "ellipsoid_ratio", "margin_fluctuation_mm")


@dataclasses.dataclass
class TumourFeatures:
    """Features of one tumour mask (NaN where undefined, e.g. an empty mask)."""

    n_voxels: int
    volume_ml: float
    area_mm2: list[float]
    centroid_ras_mm: tuple[float, float, float]
    spread_mm: tuple[float, float, float]
    ellipsoid_ratio: float
    margin_fluctuation_mm: float

    @property
    def max_area_mm2(self) -> float:
        return max(self.area_mm2, default=0.0)

    def row(self) -> dict[str, float]:
        """Flat feature row (the columns of :data:`FEATURE_COLUMNS` plus the centroid)."""
        r, a, s = self.spread_mm
        cr, ca, cs = self.centroid_ras_mm
        return {"tumour_volume_ml": self.volume_ml, "max_area_mm2": self.max_area_mm2, "spread_r_mm": r,
                "spread_a_mm": a, "spread_s_mm": s, "ellipsoid_ratio": self.ellipsoid_ratio,
                "margin_fluctuation_mm": self.margin_fluctuation_mm, "centroid_r_mm": cr, "centroid_a_mm": ca,
                "centroid_s_mm": cs}


def tumour_features(mask: np.ndarray, geometry: Geometry) -> TumourFeatures:
    """Features of ``mask`` ``(K, J, I)`` (bool/0-1) on ``geometry`` (see the module docstring).

    Memory: about 56 bytes per tumour voxel at the peak (its RAS positions, float64, and one array of their
    size at a time), not a copy of the mask; the values are those of the plain numpy expressions (same
    operations in the same order).

    Raises:
        InputError: the mask is not 3D.
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 3:
        raise InputError(f"tumour mask must be 3D (K, J, I), got shape {mask.shape}")
    nan3 = (math.nan, math.nan, math.nan)
    sx, sy, sz = geometry.spacing_mm
    counts = mask.reshape(len(mask), -1).sum(axis=1)  # tumour voxels per slice
    area = (counts * sx * sy).astype(float).tolist()
    n = int(counts.sum())
    volume = n * geometry.voxel_volume_ml()
    if n == 0:
        return TumourFeatures(0, 0.0, area, nan3, nan3, math.nan, math.nan)
    ras = _ras_points(mask, geometry, n)
    centroid = ras.mean(axis=0)
    centred = ras
    centred -= centroid  # in place: the positions are not needed again, only their offsets from the centroid
    spread = np.sqrt(np.add.reduce(np.square(centred), axis=0) / n)  # ras.std(axis=0)
    return TumourFeatures(n, volume, area, tuple(map(float, centroid)), tuple(map(float, spread)),
                          _ellipsoid_ratio(centred, volume, geometry),
                          _margin_fluctuation(mask, (sy, sx), int(np.argmax(counts))))


def _ras_points(mask: np.ndarray, geometry: Geometry, n: int, slices_per_step: int = 8) -> np.ndarray:
    """RAS positions (mm, float64 ``(n, 3)``, in ``np.argwhere`` order) of the ``n`` voxels of ``mask``:
    :meth:`Geometry.ijk_to_ras_points` of ``np.argwhere(mask)[:, ::-1]``, the indices gathered ``slices_per_step``
    slices at a time (no int64 copy of them all) and the translation added in place."""
    ijk = np.empty((n, 3), dtype=float)
    row = 0
    for k0 in range(0, len(mask), slices_per_step):
        kk, jj, ii = np.nonzero(mask[k0:k0 + slices_per_step])
        end = row + len(kk)
        ijk[row:end, 0], ijk[row:end, 1], ijk[row:end, 2] = ii, jj, kk + k0
        row = end
    to_ras = geometry.ijk_to_ras()
    ras = ijk @ to_ras[:3, :3].T
    del ijk
    ras += to_ras[:3, 3]
    return ras


def _ellipsoid_ratio(centred_mm: np.ndarray, volume_ml: float, geometry: Geometry) -> float:
    """Tumour volume / volume of the moment ellipsoid scaled to enclose all voxel centres.

    ``centred_mm``: the voxel positions minus their mean, ``(n, 3)`` mm."""
    rot = geometry.ijk_to_ras()[:3, :3]  # columns: the voxel's edge vectors in RAS mm
    voxel_cov = rot @ rot.T / 12.0  # a voxel is a uniform box: keeps one-voxel-thin masks non-degenerate
    n = len(centred_mm)
    if n > 1:  # np.cov(points.T, bias=True) of the centred points, without its copy of them
        x = centred_mm.T
        cov = np.dot(x, x.T.conj())
        cov *= np.true_divide(1, n)
        cov = cov + voxel_cov
    else:
        cov = voxel_cov
    eigval, eigvec = np.linalg.eigh(cov)
    radii = np.sqrt(5.0 * np.maximum(eigval, 1e-12))  # solid ellipsoid: variance = radius^2 / 5
    local = centred_mm @ eigvec
    local /= radii
    norm = np.square(local, out=local).sum(axis=1)
    del local
    scale = max(1.0, float(np.sqrt(norm, out=norm).max()))
    ellipsoid_ml = 4.0 / 3.0 * math.pi * float(np.prod(radii)) * scale ** 3 / 1000.0
    return float(volume_ml / ellipsoid_ml)


def _margin_fluctuation(mask: np.ndarray, spacing_ji_mm: tuple[float, float], k: int,
                        window_fraction: float = 0.1) -> float:
    """Margin fluctuation (mm) on slice ``k`` (the slice of largest area)."""
    from scipy.ndimage import uniform_filter1d
    from skimage.measure import find_contours

    plane = np.pad(mask[k].astype(float), 1)
    contours = find_contours(plane, 0.5)
    if not contours:
        return math.nan
    contour = max(contours, key=len) * np.asarray(spacing_ji_mm)
    if len(contour) < 8:
        return 0.0
    rows, cols = np.nonzero(plane)
    centre = np.array([rows.mean(), cols.mean()]) * np.asarray(spacing_ji_mm)
    radius = np.linalg.norm(contour - centre, axis=1)
    window = max(3, int(round(window_fraction * len(radius))) | 1)
    smooth = uniform_filter1d(radius, size=window, mode="wrap")
    return float(np.std(radius - smooth))


# ------------------------------------------------------------------------------------------ death01 model
def death_model_auroc(features: "Any", clinical: "Any", *, n_splits: int = 5, seed: int = 0,
                      feature_columns: tuple[str, ...] = FEATURE_COLUMNS) -> dict[str, float]:
    """Cross-validated AUROC (with bootstrap CI) of death01 from tumour features + data.csv, and clinical only.

    Each model is ``Pipeline(KNNImputer(n_neighbors=4), StandardScaler, LogisticRegression)``, refitted in every
    fold of a stratified K-fold (so the imputer and scaler never see the held-out patients); the out-of-fold
    probabilities give one AUROC per model.

    Args:
        features: DataFrame indexed by patient id with :data:`FEATURE_COLUMNS`.
        clinical: data.csv as a DataFrame indexed by ``Patient`` with a ``death01`` column.

    Returns:
        ``death01_auroc_features``, ``death01_auroc_clinical`` (each with ``_ci_low``/``_ci_high``) and
        ``death01_n``.

    Raises:
        InputError: no death01 column, too few patients or only one outcome class.
    """
    import pandas as pd
    from sklearn.impute import KNNImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from MedDLLib.evaluation import auroc_with_ci

    if "death01" not in clinical.columns:
        raise InputError("data.csv has no death01 column: no outcome model")
    table = clinical.join(features[list(feature_columns)], how="inner")
    table = table[table["death01"].notna()]
    y = table["death01"].astype(int).to_numpy()
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2 or len(y) < 8:
        raise InputError(f"death01 model needs at least 8 patients and 2 of each outcome, got {counts.tolist()}")
    clinical_cols = [c for c in clinical.columns if c != "death01" and pd.api.types.is_numeric_dtype(clinical[c])]
    cv = StratifiedKFold(n_splits=min(n_splits, int(counts.min())), shuffle=True, random_state=seed)
    result: dict[str, float] = {"death01_n": int(len(y))}
    for name, cols in (("features", clinical_cols + list(feature_columns)), ("clinical", clinical_cols)):
        x = table[cols].astype(float).to_numpy()
        model = Pipeline([("impute", KNNImputer(n_neighbors=4)), ("scale", StandardScaler()),
                          ("classify", LogisticRegression(C=0.5, max_iter=2000))])
        scores = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
        auc, low, high = auroc_with_ci(y, scores, seed=seed)
        result.update({f"death01_auroc_{name}": auc, f"death01_auroc_{name}_ci_low": low,
                       f"death01_auroc_{name}_ci_high": high})
    return result
