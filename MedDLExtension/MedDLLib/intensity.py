"""Intensity operations on plain arrays: CT windows (HU), clipping and normalisation.

All functions take and return numpy arrays of any shape (float32 out), never modify their input, and
document their units. Windows are (centre, width) in HU, as in DICOM WindowCenter/WindowWidth.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .errors import InputError

#: Named CT windows: name -> (centre HU, width HU).
WINDOWS: Mapping[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "bone": (600.0, 2800.0),
    "lung": (-600.0, 1500.0),
    "soft_tissue": (40.0, 400.0),
}


def get_window(window: str | tuple[float, float]) -> tuple[float, float]:
    """(centre, width) in HU of a named preset (see :data:`WINDOWS`) or of an explicit pair."""
    if isinstance(window, str):
        try:
            return WINDOWS[window]
        except KeyError:
            raise InputError(f"unknown window {window!r}; presets: {', '.join(WINDOWS)}") from None
    centre, width = (float(v) for v in window)
    if width <= 0:
        raise InputError(f"window width must be > 0 HU, got {width}")
    return centre, width


def apply_window(hu: np.ndarray, window: str | tuple[float, float]) -> np.ndarray:
    """Map HU through a linear window to [0, 1]: ``centre - width/2`` -> 0, ``centre + width/2`` -> 1, clipped.

    Args:
        hu: array in Hounsfield units, any shape.
        window: preset name (``"brain"``, ``"subdural"``, ``"bone"``, ``"lung"``, ``"soft_tissue"``) or
            (centre HU, width HU).
    Returns:
        float32 array of the same shape in [0, 1].
    """
    centre, width = get_window(window)
    low = centre - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - low) / width, 0.0, 1.0).astype(np.float32)


def window_channels(hu: np.ndarray, windows: tuple[str | tuple[float, float], ...]) -> np.ndarray:
    """Stack several windows as channels: ``(*shape)`` HU -> ``(len(windows), *shape)`` float32 in [0, 1]."""
    return np.stack([apply_window(hu, w) for w in windows], axis=0)


def clip_and_scale(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to [low, high] (array units, e.g. HU) and scale linearly to [0, 1] (float32)."""
    if high <= low:
        raise InputError(f"clip range must have high > low, got [{low}, {high}]")
    return ((np.clip(np.asarray(array, dtype=np.float32), low, high) - low) / (high - low)).astype(np.float32)


def normalize_minmax(array: np.ndarray, axis: int | tuple[int, ...] | None = None, *,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Scale to [0, 1] by the min and max over ``axis`` (all of it by default; e.g. ``(-2, -1)`` per slice).

    A constant array (or slice, or one with NaN) maps to 0. ``out``: a float32 array of ``array``'s shape (not
    ``array`` itself) to write the result into, e.g. a part of a batch; returned. In float32 throughout, one
    result array and no other full-size temporary.
    """
    a = np.asarray(array, dtype=np.float32)
    lo = a.min(axis=axis, keepdims=True)
    span = a.max(axis=axis, keepdims=True) - lo
    varying = span > 0
    scaled = np.subtract(a, lo, out=out)
    np.divide(scaled, np.where(varying, span, np.float32(1.0)), out=scaled)
    if not varying.all():
        np.copyto(scaled, np.float32(0.0), where=~varying)
    return scaled


def normalize_percentile(
    array: np.ndarray, low_pct: float = 10.0, high_pct: float = 99.0, mask: np.ndarray | None = None
) -> np.ndarray:
    """Clip to the [low_pct, high_pct] percentiles (of ``mask`` voxels if given) and scale to [0, 1]."""
    a = np.asarray(array, dtype=np.float32)
    values = a[mask.astype(bool)] if mask is not None else a
    if values.size == 0:
        raise InputError("normalize_percentile: the mask selects no voxels")
    low, high = np.percentile(values, [low_pct, high_pct])
    if high <= low:
        return np.zeros_like(a)
    return clip_and_scale(a, float(low), float(high))


def normalize_zscore(array: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Subtract the mean and divide by the standard deviation (of ``mask`` voxels if given)."""
    a = np.asarray(array, dtype=np.float32)
    values = a[mask.astype(bool)] if mask is not None else a
    if values.size == 0:
        raise InputError("normalize_zscore: the mask selects no voxels")
    std = float(values.std())
    return ((a - float(values.mean())) / (std if std > 0 else 1.0)).astype(np.float32)


def normalize_max_abs(array: np.ndarray) -> np.ndarray:
    """Divide by the maximum absolute value (the ICH seed recipe's normalisation); zeros stay zeros."""
    a = np.asarray(array, dtype=np.float32)
    peak = float(np.abs(a).max(initial=0.0))
    return (a / peak).astype(np.float32) if peak > 0 else a.copy()


#: Values at or below this (in the volume's units) count as air of a CT in Hounsfield units (air: -1000 HU).
CT_AIR_HU = -500.0
#: A volume without a modality is taken for a CT in HU when at least this fraction of its voxels is "air"
#: (:data:`CT_AIR_HU`): head and chest CT have 20-60 % air around and in the body, MR magnitude values are >= 0.
CT_AIR_FRACTION = 0.1


def ct_air_fraction(array: np.ndarray) -> float:
    """Fraction (0..1) of the finite voxels at or below :data:`CT_AIR_HU`, i.e. air if the values are CT HU.

    Large volumes are subsampled (about 2 million voxels) for the count. 0.0 for an array without finite values.
    Used by the MR tasks to refuse a CT given without a modality (an NRRD/NIfTI file in HU).
    """
    flat = np.asarray(array).reshape(-1)
    flat = flat[:: max(1, flat.size // 2_000_000)]
    finite = flat[np.isfinite(flat)]
    return float((finite <= CT_AIR_HU).mean()) if finite.size else 0.0
