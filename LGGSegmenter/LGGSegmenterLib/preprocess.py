"""Preprocessing of a brain MRI study for the 2D segmentation networks, and its inverse.

A study is ``image (K, C, H, W)`` (K slices along the acquisition axis, C channels) on a :class:`Geometry`.
:func:`prepare` turns it into the network input ``(K, C, S, S)``:

* ``seed`` recipe: the whole slice, intensities divided by 255 (the kaggle .tif range);
* ``improved`` recipe (Buda et al. 2019): crop to the brain's bounding square (same box on every slice),
  p10-p99 normalisation of each channel over the brain voxels (:func:`MedDLLib.intensity.normalize_percentile`);
* ``buda-unet`` (Buda et al.'s published weights): crop to the square around the non-zero voxels, each channel
  p10-p99 to [0, 1] then z-scored over the volume, as upstream ``normalize_volume``.

Both then resize each slice to ``S x S`` (bilinear). :class:`Crop` remembers the box so that network outputs
go back onto the input grid (:func:`to_input_grid`), and :func:`network_grid_geometry` gives the geometry of the
network input grid (for :func:`MedDLLib.gradcam.heatmap_to_reference`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.intensity import CT_AIR_FRACTION, CT_AIR_HU, ct_air_fraction, normalize_percentile, normalize_zscore
from MedDLLib.resample import resize_slices

RECIPE_NORMALISATION = {"seed": "scale255", "improved": "p10p99", "buda-unet": "p10p99-zscore"}


def check_mri(volume: Volume, name: str) -> None:
    """Refuse a volume that cannot be brain MRI: a DICOM modality other than MR, or, when no modality is known
    (NRRD/NIfTI files, kaggle_3m .tif slices), values like CT Hounsfield units (:func:`ct_air_fraction` >=
    :data:`CT_AIR_FRACTION`). ``name`` (e.g. the node's name) starts the message.

    Raises:
        InputError: naming the volume and the problem.
    """
    modality = str(volume.metadata.get("modality") or volume.metadata.get("DICOM.Modality") or "").upper()
    if modality and modality != "MR":
        raise InputError(f"{name}: modality {modality!r}; the LGG segmenter needs brain MRI (MR)")
    air = ct_air_fraction(volume.array) if not modality else 0.0
    if air >= CT_AIR_FRACTION:
        raise InputError(f"{name}: {100 * air:.0f} % of the voxels are at or below {CT_AIR_HU:g}, like air in a CT "
                         "in Hounsfield units (no modality is known for this volume); the LGG segmenter needs brain "
                         "MRI (MR values are not negative)")


@dataclasses.dataclass(frozen=True)
class Crop:
    """An in-plane box ``rows j0:j1, columns i0:i1`` of an ``H x W`` slice, resized to ``size x size``."""

    j0: int
    j1: int
    i0: int
    i1: int
    size: int

    @property
    def box_hw(self) -> tuple[int, int]:
        return self.j1 - self.j0, self.i1 - self.i0


@dataclasses.dataclass
class Prepared:
    """Network input of one study: ``x (K, C, S, S)`` float32, the crop, and the input's ``(H, W)``."""

    x: np.ndarray
    crop: Crop
    input_hw: tuple[int, int]


def head_mask(image: np.ndarray) -> np.ndarray:
    """Head/brain foreground ``(K, H, W)`` bool: channel mean above 10 % of its 99th percentile.

    Args:
        image: ``(K, C, H, W)`` intensities (any scale).
    """
    mean = np.asarray(image).mean(axis=1, dtype=np.float32)  # float32 sums, no float32 copy of an integer image
    high = float(np.percentile(mean, 99))
    if high <= 0:
        return np.zeros(mean.shape, dtype=bool)
    return mean > 0.1 * high


def brain_crop(mask: np.ndarray, size: int, margin_px: int = 2) -> Crop:
    """The square box (clipped to the slice) holding the foreground of every slice plus ``margin_px``.

    An empty mask gives the whole slice.
    """
    _, h, w = mask.shape
    rows, cols = np.nonzero(mask.any(axis=0))
    if len(rows) == 0:
        return Crop(0, h, 0, w, size)
    j0, j1 = max(int(rows.min()) - margin_px, 0), min(int(rows.max()) + 1 + margin_px, h)
    i0, i1 = max(int(cols.min()) - margin_px, 0), min(int(cols.max()) + 1 + margin_px, w)
    side = min(max(j1 - j0, i1 - i0), h, w)  # square, so pixels stay square after resizing

    def fit(a0: int, a1: int, n: int) -> tuple[int, int]:
        start = int(round((a0 + a1 - side) / 2))
        start = min(max(start, 0), n - side)
        return start, start + side

    j0, j1 = fit(j0, j1, h)
    i0, i1 = fit(i0, i1, w)
    return Crop(j0, j1, i0, i1, size)


def prepare(image: np.ndarray, recipe: str, size: int) -> Prepared:
    """Network input of a study (see the module docstring).

    Args:
        image: ``(K, C, H, W)`` intensities.
        recipe: ``"seed"`` or ``"improved"``.
        size: network input side S in pixels.

    Raises:
        InputError: wrong dimensions, non-finite values, or unknown recipe.
    """
    image = np.asarray(image)
    if image.ndim != 4 or min(image.shape) < 1:
        raise InputError(f"expected a study image (K slices, C channels, H, W), got shape {image.shape}")
    if recipe not in RECIPE_NORMALISATION:
        raise InputError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPE_NORMALISATION)}")
    # No float32 copy of the whole study: integer values are finite, float values are checked 8 slices at a time;
    # only the crop becomes float32 (each channel as its normalisation returns it), then it is resized 8 slices at
    # a time straight into the network input (the same values as one float32 copy of everything: each step is per
    # voxel or per slice).
    if image.dtype.kind not in "biu" and not all(np.isfinite(image[k:k + 8]).all() for k in range(0, len(image), 8)):
        raise InputError("the study image has non-finite values (NaN or infinity)")
    k, c, h, w = image.shape
    if recipe == "seed":
        crop = Crop(0, h, 0, w, size)
        x = np.true_divide(image, np.float32(255.0), dtype=np.float32)  # float32(value) / 255, as x / 255.0
    elif recipe == "buda-unet":  # upstream: non-zero box, per channel p10-p99 -> [0, 1], then z-score (volume)
        crop = brain_crop((image != 0).any(axis=1), size, margin_px=0)  # |x| summed over channels > 0
        x = np.empty((k, c, *crop.box_hw), dtype=np.float32)
        for ch in range(c):
            x[:, ch] = normalize_zscore(normalize_percentile(image[:, ch, crop.j0:crop.j1, crop.i0:crop.i1],
                                                             10.0, 99.0))
    else:
        mask = head_mask(image)
        crop = brain_crop(mask, size)
        x = np.empty((k, c, *crop.box_hw), dtype=np.float32)
        m = mask[:, crop.j0:crop.j1, crop.i0:crop.i1]
        for ch in range(c):
            x[:, ch] = normalize_percentile(image[:, ch, crop.j0:crop.j1, crop.i0:crop.i1], 10.0, 99.0,
                                            mask=m if m.any() else None)
        del mask, m
    return Prepared(x if x.shape[-2:] == (size, size) else _resized(x, (size, size)), crop, (h, w))


def _resized(x: np.ndarray, size_hw: tuple[int, int], out: np.ndarray | None = None,
             mode: str = "bilinear") -> np.ndarray:
    """:func:`~MedDLLib.resample.resize_slices` of ``x (K, ..., H, W)`` done 8 slices at a time into ``out``
    (float32 ``(K, ..., *size_hw)``, a new array when None): the same values, without the full-size temporaries
    of one call (the resize holds about five arrays of the output's size while it runs)."""
    if out is None:
        out = np.empty((*x.shape[:-2], *size_hw), dtype=np.float32)
    for k in range(0, len(x), 8):
        out[k:k + 8] = resize_slices(x[k:k + 8], size_hw, mode=mode)
    return out


def target_on_grid(mask: np.ndarray, crop: Crop) -> np.ndarray:
    """A ``(K, H, W)`` mask cropped and resized (nearest) like the image: ``(K, S, S)`` uint8."""
    m = np.asarray(mask, dtype=np.float32)[:, None, crop.j0:crop.j1, crop.i0:crop.i1]
    return resize_slices(m, (crop.size, crop.size), mode="nearest")[:, 0].astype(np.uint8)


def to_input_grid(maps: np.ndarray, crop: Crop, input_hw: tuple[int, int]) -> np.ndarray:
    """Maps ``(K, S, S)`` on the network grid back onto the input slices ``(K, H, W)`` (bilinear; 0 outside)."""
    maps = np.asarray(maps)
    out = np.zeros((maps.shape[0], *input_hw), dtype=np.float32)
    _resized(maps, crop.box_hw, out[:, crop.j0:crop.j1, crop.i0:crop.i1])
    return out


def network_grid_geometry(geometry: Geometry, crop: Crop) -> Geometry:
    """Geometry of the network-input grid ``(K, S, S)`` given the input study's ``geometry``.

    Pixel ``u`` of the resized box has its centre at input index ``i0 - 0.5 + (u + 0.5) * box / S``
    (bilinear resizing with ``align_corners=False``).
    """
    box_h, box_w = crop.box_hw
    scale_i, scale_j = box_w / crop.size, box_h / crop.size
    first_ijk = np.array([crop.i0 - 0.5 + 0.5 * scale_i, crop.j0 - 0.5 + 0.5 * scale_j, 0.0, 1.0])
    origin = geometry.ijk_to_lps() @ first_ijk
    sx, sy, sz = geometry.spacing_mm
    return Geometry((sx * scale_i, sy * scale_j, sz), tuple(origin[:3]), geometry.direction)
