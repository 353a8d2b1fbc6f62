"""Preprocessing of head CT for the ICH networks: HU (with the RSNA bad-intercept fix), windows, 2.5D, resize.

One :class:`InputSpec` (stored in the model package's ``input`` metadata) says what the network sees; the same
functions build training samples from single DICOM files (:func:`slice_stack_input`) and inference inputs from
a whole volume (:func:`volume_input`), so training and inference cannot drift apart.

* ``mode="windows"`` (improved recipe): HU -> brain/subdural/bone windows as channels
  (:func:`MedDLLib.intensity.window_channels`), for the slice and ``context`` neighbours on each side
  (2.5D, neighbours clamped at the ends of the stack): ``3 * (2 * context + 1)`` channels.
* ``mode="maxabs"`` (seed recipe): HU divided by the slice's maximum absolute value, one channel.

Slices are resized to ``size x size`` with bilinear interpolation over the same field of view
(pixel-centre aligned, as :func:`MedDLLib.resample.resample` does), and :func:`network_grid` gives the
:class:`Geometry` of that grid so Grad-CAM maps can be put back into the input volume.

The RSNA bad-intercept fix for 12-bit unsigned files is a DICOM reading fix: :func:`MedDLLib.dicom.fix_bad_intercept`
(``read_dicom_folder(..., fix_bad_intercept=True)`` for whole series).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import pydicom

from MedDLLib import dicom
from MedDLLib.errors import DicomError, InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.intensity import normalize_max_abs, window_channels

#: The three windows of the improved recipe (names of :data:`MedDLLib.intensity.WINDOWS`).
WINDOWS: tuple[str, ...] = ("brain", "subdural", "bone")


# -------------------------------------------------------------------------------------------- HU
def read_slice_hu(path: str | os.PathLike, fix: bool = True) -> np.ndarray:
    """One DICOM slice in HU (float32 ``(rows, cols)``), with the bad-intercept fix unless ``fix`` is False."""
    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any reading problem becomes a message naming the file
        raise DicomError(f"{path}: cannot read the slice ({type(exc).__name__}: {exc})") from exc
    if stored.ndim != 2:
        raise DicomError(f"{path}: expected one greyscale frame, got pixel array of shape {stored.shape}")
    if fix:
        stored, intercept = dicom.fix_bad_intercept(stored, ds)
    else:
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    return (np.asarray(stored, dtype=np.float32) * slope + intercept).astype(np.float32)


# ---------------------------------------------------------------------------------------------- input checks
def check_head_ct(volume: Volume) -> None:
    """Refuse what is not a head CT in HU, with the reason.

    Raises:
        InputError: modality other than CT; values that are not HU (no air below -500 HU, e.g. stored
            values or an MR); a chest CT (much lung-density tissue: more than 15 % of the body between
            -950 and -400 HU).
    """
    modality = str(volume.metadata.get("modality") or volume.metadata.get("DICOM.Modality") or "").upper()
    if modality and modality != "CT":
        raise InputError(f"ICH detection needs a head CT; this volume's modality is {modality!r}, not 'CT'")
    array = np.asarray(volume.array)
    if array.size == 0:
        raise InputError("the volume is empty")
    low, high = float(array.min()), float(array.max())
    if low > -500 or high > 4000:
        raise InputError(
            f"the volume's values ({low:g}..{high:g}) are not Hounsfield units of a CT "
            "(expected air near -1000 HU and bone near +1000 HU): give a CT in HU (stored values need the "
            "DICOM rescale; 12-bit RSNA files need the bad-intercept fix)")
    if array.shape[0] < 1 or min(array.shape[1:]) < 16:
        raise InputError(f"the volume of shape {array.shape} is too small for a head CT (slices of >= 16 x 16)")
    step = max(1, int(round(array.size / 2_000_000)))  # subsample large volumes for the statistics
    sample = array.reshape(-1)[::step]
    body = sample > -400
    lung = (sample > -950) & (sample <= -400)
    fraction = float(lung.sum()) / max(int(body.sum()), 1)
    if fraction > 0.15:
        raise InputError(
            f"this does not look like a head CT: {100 * fraction:.0f} % of the body has lung density "
            "(-950..-400 HU), as in a chest CT; ICH detection needs a non-contrast head CT")


# ---------------------------------------------------------------------------------------------- the input spec
@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the network sees (stored as the ``input`` section of the model package metadata).

    Attributes:
        mode: ``"windows"`` (three windows as channels) or ``"maxabs"`` (HU / max |HU| per slice).
        windows: window names for ``mode="windows"``.
        context: neighbouring slices on each side (2.5D); 0 = the slice alone.
        size: network input size (pixels, square).
        fix_bad_intercept: apply :func:`MedDLLib.dicom.fix_bad_intercept` when reading DICOM files for training.
    """

    mode: str = "windows"
    windows: tuple[str, ...] = WINDOWS
    context: int = 1
    size: int = 64
    fix_bad_intercept: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("windows", "maxabs"):
            raise InputError(f"input mode must be 'windows' or 'maxabs', got {self.mode!r}")
        if self.context < 0 or self.size < 8:
            raise InputError(f"invalid input spec: context {self.context} (>= 0), size {self.size} (>= 8)")
        object.__setattr__(self, "windows", tuple(self.windows))

    @property
    def n_neighbours(self) -> int:
        """Slices per sample: ``2 * context + 1``."""
        return 2 * self.context + 1

    @property
    def channels(self) -> list[str]:
        """Channel names in order, e.g. ``["k-1:brain", ..., "k+1:bone"]``."""
        if self.mode == "maxabs":
            return [f"k{o:+d}:hu_maxabs" if o else "hu_maxabs" for o in range(-self.context, self.context + 1)]
        return [f"k{o:+d}:{w}" if o else w for o in range(-self.context, self.context + 1) for w in self.windows]

    def to_metadata(self) -> dict[str, Any]:
        """The ``input`` section of a model package."""
        return {"channels": self.channels, "mode": self.mode, "windows": list(self.windows),
                "context": self.context, "size": self.size, "fix_bad_intercept": self.fix_bad_intercept,
                "units": "HU"}

    @classmethod
    def from_metadata(cls, section: dict[str, Any]) -> "InputSpec":
        """The spec of a model package's ``input`` section."""
        try:
            return cls(mode=section["mode"], windows=tuple(section.get("windows") or WINDOWS),
                       context=int(section["context"]), size=int(section["size"]),
                       fix_bad_intercept=bool(section.get("fix_bad_intercept", True)))
        except KeyError as exc:
            raise InputError(f"model input metadata lacks {exc.args[0]!r} (not an ICH model?)") from None


# ---------------------------------------------------------------------------------------------- array pieces
def resize_slices(slices: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``(N, H, W)`` slices to ``(N, size, size)`` over the same field of view (float32)."""
    import torch
    import torch.nn.functional as F

    arr = np.asarray(slices, dtype=np.float32)
    if arr.shape[1:] == (size, size):
        return arr.copy()
    with torch.no_grad():
        out = F.interpolate(torch.from_numpy(np.ascontiguousarray(arr))[:, None], size=(size, size),
                            mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def network_grid(geometry: Geometry, shape_kji: Sequence[int], size: int) -> Geometry:
    """Geometry of the ``size x size`` grid :func:`resize_slices` makes from slices of ``geometry``/``shape_kji``.

    Same field of view and centre, same slices (k unchanged); pixel centres as ``align_corners=False``.
    """
    nk, nj, ni = (int(v) for v in shape_kji)
    sx, sy, sz = geometry.spacing_mm
    out_spacing = np.array([sx * ni / size, sy * nj / size, sz])
    in_spacing = np.array([sx, sy, sz])
    direction = geometry.direction
    centre = np.array(geometry.origin_lps_mm) + direction @ ((np.array([ni, nj, nk]) - 1) * in_spacing / 2.0)
    origin = centre - direction @ ((np.array([size, size, nk]) - 1) * out_spacing / 2.0)
    return Geometry(tuple(out_spacing), tuple(origin), geometry.direction_lps)


def channels_from_hu(hu_stack: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Network channels from the HU of one slice and its neighbours.

    Args:
        hu_stack: ``(2 * context + 1, H, W)`` HU, slice order (the centre slice in the middle).
        spec: the input spec.
    Returns:
        float32 ``(C, size, size)`` with C = ``len(spec.channels)``.
    """
    if hu_stack.shape[0] != spec.n_neighbours:
        raise InputError(f"expected {spec.n_neighbours} slices (context {spec.context}), got {hu_stack.shape[0]}")
    resized = resize_slices(hu_stack, spec.size)
    if spec.mode == "maxabs":
        return np.stack([normalize_max_abs(s) for s in resized]).astype(np.float32)
    chans = [window_channels(s, spec.windows) for s in resized]  # each (3, S, S)
    return np.concatenate(chans, axis=0).astype(np.float32)


def neighbour_indices(n_slices: int, k: int, context: int) -> list[int]:
    """Indices of slice ``k`` and its ``context`` neighbours on each side, clamped to ``[0, n_slices)``."""
    return [min(max(k + o, 0), n_slices - 1) for o in range(-context, context + 1)]


def slice_stack_input(paths: Sequence[str | os.PathLike], spec: InputSpec) -> np.ndarray:
    """Network input ``(C, size, size)`` of one training slice from its (neighbour) DICOM files."""
    hu = [read_slice_hu(p, fix=spec.fix_bad_intercept) for p in paths]
    shapes = {h.shape for h in hu}
    if len(shapes) > 1:
        raise InputError(f"neighbouring slices have different sizes {sorted(shapes)}: {[str(p) for p in paths]}")
    return channels_from_hu(np.stack(hu), spec)


def volume_input(volume: Volume, spec: InputSpec) -> tuple[np.ndarray, Geometry]:
    """Network inputs of every slice of a HU volume and the geometry of the network grid.

    Returns:
        ``(inputs, grid)``: float32 ``(K, C, size, size)`` (one sample per slice k) and the :class:`Geometry`
        of the ``[k, size, size]`` grid (for :func:`MedDLLib.gradcam.heatmap_to_reference`).
    """
    hu = np.asarray(volume.array, dtype=np.float32)
    nk = hu.shape[0]
    resized = resize_slices(hu, spec.size)
    if spec.mode == "maxabs":
        per_slice = np.stack([normalize_max_abs(s) for s in resized])[:, None]  # (K, 1, S, S)
    else:
        per_slice = np.stack([window_channels(s, spec.windows) for s in resized])  # (K, 3, S, S)
    inputs = np.stack([per_slice[neighbour_indices(nk, k, spec.context)].reshape(-1, spec.size, spec.size)
                       for k in range(nk)])
    return inputs.astype(np.float32), network_grid(volume.geometry, hu.shape, spec.size)
