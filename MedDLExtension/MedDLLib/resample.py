"""Resampling of :class:`~MedDLLib.geometry.Volume` with SimpleITK, keeping the physical geometry consistent.

One resampler for the whole project: images use linear interpolation, label maps nearest neighbour. The output
grid covers the same physical extent as the input (same origin corner and directions), so a voxel keeps its
physical position; :func:`resample_to_reference` maps any volume (e.g. a network output) back onto another
volume's grid.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Geometry, Volume


def to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image with the volume's voxels and geometry (LPS, as SimpleITK uses)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing(volume.geometry.spacing_mm)
    image.SetOrigin(volume.geometry.origin_lps_mm)
    image.SetDirection(volume.geometry.direction.flatten().tolist())
    return image


def from_sitk(image: sitk.Image, metadata: dict | None = None) -> Volume:
    """The :class:`Volume` of a SimpleITK image (array ``[k, j, i]``, geometry in LPS)."""
    geometry = Geometry(image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(3, 3))
    return Volume(sitk.GetArrayFromImage(image), geometry, dict(metadata or {}))


def _interpolator(is_label: bool) -> int:
    return sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear


def resample(
    volume: Volume,
    spacing_mm: Sequence[float] | None = None,
    size: Sequence[int] | None = None,
    *,
    is_label: bool = False,
    default_value: float = 0.0,
) -> Volume:
    """Resample to a new voxel spacing and/or size over the same physical extent.

    Args:
        volume: input volume.
        spacing_mm: target spacing (i, j, k) in mm; ``None`` keeps it, or it is derived from ``size``.
        size: target size (i, j, k) in voxels; ``None`` keeps the physical extent at the new spacing.
            Given both, the grid is centred on the input's extent.
        is_label: nearest-neighbour interpolation (labels) instead of linear (images).
        default_value: value for output voxels outside the input (e.g. -1000 HU for CT air).
    Returns:
        a new Volume; the input's dtype is kept for labels, float32 for images.
    """
    in_spacing = np.array(volume.geometry.spacing_mm)
    in_size = np.array(volume.array.shape[::-1], dtype=float)
    extent = in_spacing * in_size  # mm covered by the input along i, j, k (voxel edges)
    if spacing_mm is None and size is None:
        raise InputError("resample needs a target spacing_mm and/or size")
    if spacing_mm is not None and (len(spacing_mm) != 3 or min(spacing_mm) <= 0):
        raise InputError(f"spacing_mm must be 3 positive numbers (i, j, k), got {spacing_mm}")
    if size is not None and (len(size) != 3 or min(size) < 1):
        raise InputError(f"size must be 3 positive integers (i, j, k), got {size}")
    if spacing_mm is None:
        out_size = np.array(size, dtype=int)
        out_spacing = extent / out_size
    else:
        out_spacing = np.array(spacing_mm, dtype=float)
        out_size = np.array(size, dtype=int) if size is not None else np.maximum(1, np.round(extent / out_spacing)).astype(int)
    # Keep the centre of the covered extent fixed: origin is the centre of the first output voxel.
    direction = volume.geometry.direction
    centre_ijk_mm = (in_size - 1) * in_spacing / 2.0
    first_in = np.array(volume.geometry.origin_lps_mm)
    centre = first_in + direction @ centre_ijk_mm
    out_origin = centre - direction @ ((out_size - 1) * out_spacing / 2.0)
    out_geometry = Geometry(tuple(out_spacing), tuple(out_origin), volume.geometry.direction_lps)
    return resample_to_geometry(volume, out_geometry, tuple(int(s) for s in out_size),
                                is_label=is_label, default_value=default_value)


def resample_to_geometry(
    volume: Volume, geometry: Geometry, size_ijk: Sequence[int], *, is_label: bool = False,
    default_value: float = 0.0,
) -> Volume:
    """Resample ``volume`` onto the grid ``geometry`` x ``size_ijk`` (voxels (i, j, k))."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(geometry.spacing_mm)
    resampler.SetOutputOrigin(geometry.origin_lps_mm)
    resampler.SetOutputDirection(geometry.direction.flatten().tolist())
    resampler.SetSize([int(s) for s in size_ijk])
    resampler.SetInterpolator(_interpolator(is_label))
    resampler.SetDefaultPixelValue(float(default_value))
    image = to_sitk(volume)
    if not is_label and image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    result = from_sitk(resampler.Execute(image), volume.metadata)
    return result


def resample_to_reference(
    volume: Volume, reference: Volume, *, is_label: bool = False, default_value: float = 0.0
) -> Volume:
    """Resample ``volume`` onto ``reference``'s voxel grid (e.g. a heatmap back into the input geometry)."""
    return resample_to_geometry(volume, reference.geometry, reference.array.shape[::-1],
                                is_label=is_label, default_value=default_value)


def covering_box(shape_kji: Sequence[int], grid: Geometry, reference: Geometry, reference_shape_kji: Sequence[int],
                 margin: int = 1) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """The voxels of a reference grid that an array of ``shape_kji`` on ``grid`` can touch when either is
    resampled onto the other (linear interpolation): ``((k0, k1), (j0, j1), (i0, i1))`` (end exclusive), the
    extent of ``grid`` up to its voxel edges plus ``margin`` voxels, clipped to ``reference_shape_kji``; None when
    it lies outside the reference. Resampling only that box gives the values of a whole-volume resample there.
    """
    size_ijk = np.array(list(shape_kji)[::-1], dtype=float)
    corners = np.array([[a, b, c, 1.0] for a in (-0.5, size_ijk[0] - 0.5) for b in (-0.5, size_ijk[1] - 0.5)
                        for c in (-0.5, size_ijk[2] - 0.5)])
    in_reference = (np.linalg.inv(reference.ijk_to_lps()) @ (grid.ijk_to_lps() @ corners.T))[:3]
    low = np.floor(in_reference.min(axis=1)).astype(int) - margin
    high = np.ceil(in_reference.max(axis=1)).astype(int) + 1 + margin
    ref_ijk = np.array(list(reference_shape_kji)[::-1])
    low, high = np.clip(low, 0, ref_ijk), np.clip(high, 0, ref_ijk)
    if np.any(high <= low):
        return None
    return tuple((int(low[a]), int(high[a])) for a in (2, 1, 0))  # type: ignore[return-value]


def crop_volume(volume: Volume, box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]) -> Volume:
    """The part ``box`` (``((k0, k1), (j0, j1), (i0, i1))``) of ``volume`` with its geometry (a view, no copy)."""
    (k0, k1), (j0, j1), (i0, i1) = box
    origin = volume.geometry.ijk_to_lps() @ np.array([i0, j0, k0, 1.0])
    geometry = Geometry(volume.geometry.spacing_mm, tuple(float(v) for v in origin[:3]), volume.geometry.direction_lps)
    return Volume(volume.array[k0:k1, j0:j1, i0:i1], geometry, dict(volume.metadata))


def resize_slices(slices: np.ndarray, size: int | tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize the last two axes ``(..., H, W)`` to ``size`` (an int for a square) over the same field of view,
    each slice on its own (float32): ``bilinear`` (pixel centres as ``align_corners=False``) or ``nearest``;
    the values of torch's ``F.interpolate`` in those modes (:func:`resize_axis`), without torch.

    The in-plane resize of the 2D networks' inputs (ICH slices ``(N, H, W)``, LGG channels ``(K, C, H, W)``).
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    size_hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    arr = np.asarray(slices, dtype=np.float32)
    if arr.shape[-2:] == size_hw:
        return arr.copy()
    axis_mode = "linear" if mode == "bilinear" else "nearest"
    out = resize_axis(arr, arr.ndim - 1, size_hw[1], axis_mode)  # the last axis first, as torch's bilinear
    return resize_axis(out, arr.ndim - 2, size_hw[0], axis_mode)


def resize_axis(array: np.ndarray, axis: int, size: int, mode: str = "linear") -> np.ndarray:
    """``array`` (float32) resampled along ``axis`` to ``size`` samples over the same extent, as torch's
    ``F.interpolate`` does along one axis:

    - ``linear`` (``align_corners=False``): sample ``o`` reads position ``(o + 0.5) * n / size - 0.5``, clamped at
      0, between its two neighbours (the edge repeats). Applied to one axis after the other, the last first, it
      is torch's bilinear and trilinear, in the same order of operations (float32).
    - ``nearest`` (torch's legacy ``nearest``): sample ``o`` takes index ``floor(o * n / size)`` (at most n - 1).

    Returns the array itself when ``size`` equals its length along ``axis``.
    """
    array = np.asarray(array, dtype=np.float32)
    n = array.shape[axis]
    if n == size:
        return array
    scale = np.float32(n / size)
    if mode == "nearest":
        index = np.minimum(np.floor(np.arange(size, dtype=np.float32) * scale).astype(np.int64), n - 1)
        return array.take(index, axis=axis)
    if mode != "linear":
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    # the position rounded once, as torch's compiled (fused multiply-add) kernels round it
    position = np.maximum((np.float64(scale) * (np.arange(size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32),
                          np.float32(0.0))
    low = position.astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    shape = [1] * array.ndim
    shape[axis] = size
    weight_high = (position - low).astype(np.float32).reshape(shape)
    return (np.float32(1.0) - weight_high) * array.take(low, axis=axis) + weight_high * array.take(high, axis=axis)
