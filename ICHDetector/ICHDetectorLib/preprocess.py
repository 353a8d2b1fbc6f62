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
from MedDLLib.resample import resize_slices

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
#: Head vs chest from anatomy (:func:`head_or_chest`). Tissue is above this (HU); the body outline of a slice is
#: its largest tissue region with its holes filled (a head rest, cushions and padding lie outside it).
TISSUE_HU = -300.0
#: Bone (HU) for the skull ring; air inside the body outline (lungs, or the air of an empty skull phantom) below.
BONE_HU, AIR_HU = 200.0, -400.0
#: A slice is a skull slice when bone surrounds the outline's centre over this fraction of directions ...
SKULL_COVERAGE = 0.85
#: ... and a lung slice when air fills more than this fraction of its body outline and no bone ring surrounds it.
LUNG_AIR_FRACTION = 0.15
#: Slices whose body outline is smaller than this (mm^2) are not judged (top of the head, tails of a scan).
MIN_BODY_AREA_MM2 = 1000.0


@dataclasses.dataclass(frozen=True)
class AnatomyCheck:
    """What :func:`head_or_chest` found: counts of slices, and the verdict.

    Attributes:
        body_slices: slices with a body outline of at least :data:`MIN_BODY_AREA_MM2`.
        skull_slices: those where bone surrounds the outline's centre (a skull ring).
        lung_slices: those with large air regions inside the outline and no skull ring (lungs).
        air_fraction: air (< :data:`AIR_HU`) inside the body outlines / their area, over the body slices.
        looks_like: "head", "chest" or "unknown" (no body found).
    """

    body_slices: int
    skull_slices: int
    lung_slices: int
    air_fraction: float
    looks_like: str

    def reason(self) -> str:
        """The verdict in a sentence (for refusals and the result's note)."""
        if self.looks_like == "unknown":
            return f"no body (tissue above {TISSUE_HU:g} HU over {MIN_BODY_AREA_MM2:g} mm^2) in any slice"
        return (f"{self.lung_slices} of {self.body_slices} slices hold large air-filled regions of lung density "
                f"inside the body outline (lungs; {100 * self.air_fraction:.0f} % of the body outline is below "
                f"{AIR_HU:g} HU) and {self.skull_slices} show a skull ring")


def head_or_chest(volume: Volume) -> AnatomyCheck:
    """Decide from anatomy whether an HU volume shows a head or a chest, slice by slice (axial slices along k).

    Per slice: the body outline (largest region above :data:`TISSUE_HU`, holes filled, so a head rest, cushions and
    padding outside the head do not count), whether bone (> :data:`BONE_HU`) surrounds its centre in at least
    :data:`SKULL_COVERAGE` of 180 directions (skull), and the fraction of the outline that is air (< :data:`AIR_HU`):
    a lung slice has more than :data:`LUNG_AIR_FRACTION` air and no skull ring. A chest has more lung slices than
    skull slices, and lung slices in at least a fifth of the body slices. In-plane, slices are subsampled to at most
    256 pixels.
    """
    from scipy import ndimage as ndi

    array = np.asarray(volume.array)
    step = max(1, int(np.ceil(max(array.shape[1:]) / 256)))
    sx, sy = volume.geometry.spacing_mm[0] * step, volume.geometry.spacing_mm[1] * step
    body_slices = skull = lungs = 0
    air_area = body_area = 0.0
    for hu in array[:, ::step, ::step]:
        tissue = hu > TISSUE_HU
        labels, count = ndi.label(tissue)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        outline = fill_holes_in_plane(labels == int(np.argmax(sizes)) + 1)
        area = float(outline.sum())
        if area * sx * sy < MIN_BODY_AREA_MM2:
            continue
        body_slices += 1
        air = float((outline & (hu < AIR_HU)).sum())
        air_area += air
        body_area += area
        cj, ci = ndi.center_of_mass(outline)
        jj, ii = np.nonzero(outline & (hu > BONE_HU))
        coverage = 0.0
        if len(jj):
            angles = np.arctan2((jj - cj) * sy, (ii - ci) * sx)
            bins = ((angles + np.pi) / (2 * np.pi) * 180).astype(int) % 180
            coverage = float(np.unique(bins).size) / 180
        if coverage >= SKULL_COVERAGE:
            skull += 1
        elif air / area > LUNG_AIR_FRACTION:
            lungs += 1
    if body_slices == 0:
        return AnatomyCheck(0, 0, 0, 0.0, "unknown")
    chest = lungs > skull and lungs >= 0.2 * body_slices
    return AnatomyCheck(body_slices, skull, lungs, air_area / max(body_area, 1.0), "chest" if chest else "head")


@dataclasses.dataclass(frozen=True)
class HeadCTCheck:
    """What :func:`check_head_ct` returned for a volume (it passed): ``note`` with option ``accept_non_head``.

    ``meddl infer ich`` runs the check where it reads the study (the forked reader, while torch loads) and
    records it in the volume's ``metadata[HEAD_CT_CHECK]``; the computation then takes it instead of running
    the check again (see :meth:`ICHDetectorLib.cli.ICHTask.read_study`).
    """

    accept_non_head: bool
    note: str | None


#: ``metadata`` key of a volume's :class:`HeadCTCheck`.
HEAD_CT_CHECK = "ich_head_ct_check"


def check_head_ct(volume: Volume, *, accept_non_head: bool = False) -> str | None:
    """Refuse what is not a head CT in HU, with the reason; ``accept_non_head`` lets a user run it anyway.

    Args:
        volume: ``[k, j, i]`` values with geometry and metadata (``modality``).
        accept_non_head: the user's explicit override (``meddl infer ich --accept-non-head``): a CT in HU that
            does not look like a head (:func:`head_or_chest`) is accepted, and the returned note says so.
    Returns:
        None for a head CT; with ``accept_non_head``, the note (to record in the result) for a CT accepted though
        its anatomy is not a head's.
    Raises:
        InputError: modality other than CT; values that are not HU (no air below -500 HU, e.g. stored
            values or an MR); a chest (lungs: air-filled regions inside the body outline, no skull ring) or no
            body at all, unless ``accept_non_head``.
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
    anatomy = head_or_chest(volume)
    if anatomy.looks_like == "head":
        return None
    what = "a chest CT" if anatomy.looks_like == "chest" else "no body"
    text = f"this does not look like a head CT: {anatomy.reason()}, as in {what}"
    if accept_non_head:
        return f"{text}; run anyway as the user asked (--accept-non-head): the result is not validated for it"
    raise InputError(f"{text}; ICH detection needs a non-contrast head CT (to run it anyway, give --accept-non-head)")


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
def intracranial_mask(hu: np.ndarray) -> np.ndarray:
    """Intracranial voxels ``[k, j, i]`` of a head CT in HU: inside the skull ring (bone > 300 HU), soft-tissue
    density (-20..120 HU), per slice: the bone's holes filled (:func:`fill_holes_in_plane`), less the bone grown
    by one pixel in-plane (``scipy.ndimage.binary_dilation`` with its default cross, once)."""
    bone = hu > 300.0
    grown = bone.copy()
    grown[:, 1:] |= bone[:, :-1]
    grown[:, :-1] |= bone[:, 1:]
    grown[:, :, 1:] |= bone[:, :, :-1]
    grown[:, :, :-1] |= bone[:, :, 1:]
    inside = fill_holes_in_plane(bone)
    inside &= ~grown
    return inside & (hu > -20.0) & (hu < 120.0)


#: The in-plane cross (4-neighbourhood) of a 3D array: every axial slice on its own.
_IN_PLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_CROSS[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def fill_holes_in_plane(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` of each slice of ``mask`` (``(K, H, W)`` or one ``(H, W)`` slice), the
    same pixels: the background 4-connected to a slice's edge stays background, the rest is filled. One labelling
    of the background of all slices and a look-up (4-7x faster than the fill's repeated erosions on 512 x 512)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    slices = mask[None] if mask.ndim == 2 else mask
    background, n = ndimage.label(~slices, structure=_IN_PLANE_CROSS)
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (background[:, 0], background[:, -1], background[:, :, 0], background[:, :, -1]):
        outside[edge] = True
    outside[0] = False  # the mask itself
    filled = ~outside[background]
    return filled[0] if mask.ndim == 2 else filled


def network_grid(geometry: Geometry, shape_kji: Sequence[int], size: int) -> Geometry:
    """Geometry of the ``size x size`` grid :func:`MedDLLib.resample.resize_slices` makes from slices of
    ``geometry``/``shape_kji``.

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
    hu = np.asarray(volume.array)
    nk = hu.shape[0]
    resized = np.empty((nk, spec.size, spec.size), dtype=np.float32)
    for k in range(0, nk, 8):  # 8 slices at a time: no float32 copy of the whole (integer) HU volume
        resized[k:k + 8] = resize_slices(hu[k:k + 8], spec.size)
    if spec.mode == "maxabs":
        per_slice = np.stack([normalize_max_abs(s) for s in resized])[:, None]  # (K, 1, S, S)
    else:
        per_slice = np.stack([window_channels(s, spec.windows) for s in resized])  # (K, 3, S, S)
    inputs = np.stack([per_slice[neighbour_indices(nk, k, spec.context)].reshape(-1, spec.size, spec.size)
                       for k in range(nk)])
    return inputs.astype(np.float32, copy=False), network_grid(volume.geometry, hu.shape, spec.size)
