"""Preprocessing of brain MRI for the MGMT classifier (the seed recipe's steps, with its ordering bug optional).

:func:`prepare` turns one study (one or several sequences as :class:`~MedDLLib.geometry.Volume`) into the
network input:

1. slice order: by position along the normal (what :func:`MedDLLib.dicom.read_dicom_folder` returns), or, for
   the ``seed`` recipe, by natural sort of the file names as the published solution did
   (:func:`filename_order`; ``Image-N`` numbers are not positions, so this scrambles the stack);
2. VOI LUT of the DICOM header (:func:`MedDLLib.dicom.apply_voi`, i.e. ``pydicom.pixels.apply_voi_lut``);
3. reorientation to axial LPS (:func:`orient_axial`, SimpleITK ``DICOMOrient``'s re-indexing) so that sagittal
   and coronal series become axial stacks (improved recipe; the seed takes the stack as stored). The VOI is per
   voxel, so it is applied after this re-indexing (a view), writing the stack in axial order: the same values;
4. in-plane resize to ``size x size`` over the same field of view (:func:`MedDLLib.resample.resample`, linear);
   the other sequences are resampled onto this grid of the first (reference) sequence, so channels align;
5. min-max normalisation of every slice to [0, 1] (:func:`MedDLLib.intensity.normalize_minmax`);
6. the slice with the largest brain area (pixels above ``brain_threshold`` after step 5, reference sequence)
   is the centre of a window of ``depth`` slices, zero-padded where it runs past the stack. The other sequences
   are resampled (step 4) up to the window's last slice and normalised (step 5) over its slices only, straight
   into the network input: what the whole stacks would give there.

Before step 1 every series is checked (:func:`check_mri`: MR modality, or MR-like values when no modality is
known); after step 3 every oriented stack needs at least a quarter of the window in slices (:func:`check_slices`),
so a single 2D slice is refused rather than classified from a window of zero padding.

:class:`Prepared` keeps the :class:`Geometry` of the network-input grid (``[depth, size, size]``, padded slices
included) so a Grad-CAM map goes back into the input volume with :func:`MedDLLib.gradcam.heatmap_to_reference`,
and the window (first and last slice index of the oriented stack) that was used.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.intensity import CT_AIR_FRACTION, CT_AIR_HU, ct_air_fraction, normalize_minmax

from .dataset import SEQUENCES

SLICE_ORDERS = ("position", "filename")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the network sees (the ``input`` section of a model package's metadata).

    Attributes:
        sequences: input sequences in channel order (names of :data:`~GliomaClassifierLib.dataset.SEQUENCES`);
            the first is the reference (grid, window).
        size: in-plane network input size (pixels, square).
        depth: slices in the window.
        reorient: reorient every series to axial LPS before slice selection.
        slice_order: ``"position"`` or ``"filename"`` (the seed's natural file-name sort; DICOM input only).
        voi: apply the VOI LUT (window) of the DICOM header when the files are known.
        brain_threshold: a pixel counts as brain when its min-max normalised value exceeds this.
    """

    sequences: tuple[str, ...] = ("T1wCE",)
    size: int = 256
    depth: int = 64
    reorient: bool = True
    slice_order: str = "position"
    voi: bool = True
    brain_threshold: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "sequences", tuple(self.sequences))
        unknown = [s for s in self.sequences if s not in SEQUENCES]
        if not self.sequences or unknown or len(set(self.sequences)) != len(self.sequences):
            raise InputError(f"input sequences must be distinct names of {', '.join(SEQUENCES)}; got {self.sequences}")
        if self.size < 8 or self.depth < 1:
            raise InputError(f"invalid input size {self.size} (>= 8) or depth {self.depth} (>= 1)")
        if self.slice_order not in SLICE_ORDERS:
            raise InputError(f"slice_order must be one of {SLICE_ORDERS}, got {self.slice_order!r}")

    @property
    def channels(self) -> list[str]:
        return list(self.sequences)

    def to_metadata(self) -> dict[str, Any]:
        return {"channels": self.channels, "size": self.size, "depth": self.depth, "reorient": self.reorient,
                "slice_order": self.slice_order, "voi": self.voi, "brain_threshold": self.brain_threshold,
                "normalisation": "min-max per slice", "orientation": "LPS axial" if self.reorient else "as stored"}

    @classmethod
    def from_metadata(cls, section: Mapping[str, Any]) -> "InputSpec":
        try:
            return cls(sequences=tuple(section["channels"]), size=int(section["size"]), depth=int(section["depth"]),
                       reorient=bool(section.get("reorient", True)),
                       slice_order=str(section.get("slice_order", "position")), voi=bool(section.get("voi", True)),
                       brain_threshold=float(section.get("brain_threshold", 0.1)))
        except KeyError as exc:
            raise InputError(f"model input metadata lacks {exc.args[0]!r} (not a glioma model?)") from None


@dataclasses.dataclass
class Prepared:
    """The network input of one study and where it lies.

    Attributes:
        array: float32 ``(C, depth, size, size)`` in [0, 1] (zeros in padded slices).
        grid: :class:`Geometry` of the ``[depth, size, size]`` network grid (LPS).
        reference: the reference sequence as given (input geometry: where heatmaps go back to).
        centre: index of the slice the window is centred on in the oriented reference stack: the one
            ``prepare``'s ``centre`` chose (e.g. the segmented tumour's), else the largest-brain-area slice.
        first, last: window of slice indices of the oriented stack (may extend past ``[0, n_slices)``: padding).
        n_slices: slices of the oriented reference stack.
        brain_area: pixels above the brain threshold, per oriented slice (at the network size).
    """

    array: np.ndarray
    grid: Geometry
    reference: Volume
    centre: int
    first: int
    last: int
    n_slices: int
    brain_area: np.ndarray
    #: what the window is centred on: "brain" (largest brain area) or what ``prepare``'s ``centre`` names
    centred_on: str = "brain"


# -------------------------------------------------------------------------------------------------- pieces
def natural_key(name: str) -> list[Any]:
    """Sort key of a file name with its numbers compared as numbers (``Image-2`` before ``Image-10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def filename_order(volume: Volume) -> Volume:
    """The slices of a DICOM-read volume re-stacked in natural file-name order (the seed recipe's reading).

    The geometry is kept as it was (it no longer describes the slices: that is the seed's bug). Volumes not
    read from DICOM files are returned unchanged.
    """
    files = volume.metadata.get("files") or []
    if len(files) != volume.array.shape[0]:
        return volume
    order = sorted(range(len(files)), key=lambda k: natural_key(Path(files[k]).name))
    return Volume(volume.array[order], volume.geometry,
                  {**volume.metadata, "files": [files[k] for k in order], "slice_order": "filename"})


def voi_source(volume: Volume) -> str | None:
    """The DICOM file whose header gives the volume's VOI LUT: ``metadata["voi_source"]`` (a volume that came
    from a Slicer node or a NRRD, with its DICOM file named by the caller), else its first DICOM file, else None."""
    files = volume.metadata.get("files") or []
    return volume.metadata.get("voi_source") or (str(files[0]) if files else None)


def with_voi_sources(volumes: Mapping[str, Volume], files: Mapping[str, str]) -> dict[str, Volume]:
    """``volumes`` with ``metadata["voi_source"]`` set to ``files[name]`` where given (see :func:`voi_source`)."""
    return {name: volume.with_array(volume.array, voi_source=str(files[name])) if name in files else volume
            for name, volume in volumes.items()}


def apply_voi_volume(volume: Volume) -> Volume:
    """The VOI LUT (window) of the volume's DICOM header (:func:`voi_source`) applied to its values; unchanged
    when no header is known."""
    from MedDLLib.dicom import apply_voi

    source = voi_source(volume)
    if source is None:
        return volume
    return volume.with_array(apply_voi(np.asarray(volume.array), source, dtype=np.float32), voi_applied=True)


def orient_axial(volume: Volume) -> Volume:
    """The volume re-indexed to axial LPS (i -> L, j -> P, k -> S) with SimpleITK ``DICOMOrient``.

    A permutation and flips of the voxel axes (no interpolation) for volumes whose axes are along the patient
    axes; an oblique volume gets the closest orientation.

    The array is a view of ``volume``'s (transposed and flipped, no copy: do not write into it). The permutation,
    flips and geometry are ``DICOMOrient``'s, found on one-voxel images of the volume's geometry (the new origin
    is the flipped corner's position by ITK's own arithmetic), so the result is ``DICOMOrient``'s of the whole
    volume, value for value.
    """
    import SimpleITK as sitk

    geometry = volume.geometry

    def probe(spacing_mm: tuple[float, ...], direction: np.ndarray) -> sitk.Image:
        image = sitk.Image([1, 1, 1], sitk.sitkUInt8)
        image.SetSpacing(spacing_mm)
        image.SetOrigin(geometry.origin_lps_mm)
        image.SetDirection(direction.flatten().tolist())
        return image

    orienter = sitk.DICOMOrientImageFilter()
    orienter.SetDesiredCoordinateOrientation("LPS")
    oriented = orienter.Execute(probe(geometry.spacing_mm, geometry.direction))
    order, flips = [int(o) for o in orienter.GetPermuteOrder()], [bool(f) for f in orienter.GetFlipAxes()]
    # DICOMOrient permutes (origin kept), then flips: the new origin is the permuted image's flipped corner
    size_ijk = volume.array.shape[::-1]
    permuted = probe(tuple(geometry.spacing_mm[o] for o in order), geometry.direction[:, order])
    origin = permuted.TransformIndexToPhysicalPoint([int(size_ijk[o]) - 1 if f else 0 for o, f in zip(order, flips)])
    array = volume.array.transpose([2 - order[2 - axis] for axis in range(3)])  # numpy axes are [k, j, i]
    array = array[tuple(slice(None, None, -1) if flips[2 - axis] else slice(None) for axis in range(3))]
    return Volume(array, Geometry(oriented.GetSpacing(), origin, np.array(oriented.GetDirection()).reshape(3, 3)),
                  dict(volume.metadata))


def resize_inplane(volume: Volume, size: int) -> Volume:
    """Linear resampling of every slice to ``size x size`` over the same field of view (slices unchanged)."""
    from MedDLLib.resample import resample

    nk = volume.array.shape[0]
    if volume.array.shape[1:] == (size, size):
        return Volume(np.asarray(volume.array, dtype=np.float32), volume.geometry, dict(volume.metadata))
    return resample(volume, size=(size, size, nk))


def window_of(centre: int, depth: int) -> tuple[int, int]:
    """First and last slice index of a ``depth``-slice window centred on ``centre`` (``depth // 2`` before it)."""
    first = int(centre) - depth // 2
    return first, first + depth - 1


def window_span(first: int, depth: int, n_slices: int) -> tuple[int, int]:
    """The slices ``lo .. hi - 1`` of an ``n_slices`` stack inside the window ``first .. first + depth - 1``
    (none when ``hi <= lo``)."""
    return max(first, 0), min(first + depth, n_slices)


def take_window(array: np.ndarray, first: int, depth: int) -> np.ndarray:
    """Slices ``first .. first + depth - 1`` of ``array`` ``(K, H, W)``, zeros where they are outside it."""
    out = np.zeros((depth, *array.shape[1:]), dtype=np.float32)
    lo, hi = window_span(first, depth, array.shape[0])
    if hi > lo:
        out[lo - first:hi - first] = array[lo:hi]
    return out


def describe(volume: Volume, name: str) -> str:
    """``name`` plus where the volume came from when known: its file (``metadata["source"]``), the folder of
    its DICOM files, or its node name (e.g. ``T1wCE (/data/00001/T1wCE)``); used to start error messages."""
    files = volume.metadata.get("files") or []
    source = (volume.metadata.get("source") or (str(Path(files[0]).parent) if files else None)
              or volume.metadata.get("name"))
    return f"{name} ({source})" if source and str(source) != name else name


def check_mri(volume: Volume, name: str) -> None:
    """Refuse what cannot be a brain MR series: a CT (DICOM modality other than MR; or, when no modality is known,
    e.g. an NRRD/NIfTI file, values like CT Hounsfield units: :func:`ct_air_fraction` >= :data:`CT_AIR_FRACTION`),
    an empty or constant volume, fewer than 8x8 pixels, NaN or infinite values."""
    where = describe(volume, name)
    modality = str(volume.metadata.get("modality") or volume.metadata.get("DICOM.Modality") or "").upper()
    if modality and modality != "MR":
        raise InputError(f"{where}: modality {modality!r}; the glioma classifier needs brain MRI (MR)")
    array = np.asarray(volume.array)
    if array.size == 0 or min(array.shape[1:]) < 8:
        raise InputError(f"{where}: volume of shape {array.shape} is too small (slices of >= 8 x 8 pixels)")
    low, high = float(array.min()), float(array.max())  # NaN if any voxel is; +-inf if any voxel is
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError(f"{where}: the volume has NaN or infinite values")
    if high <= low:
        raise InputError(f"{where}: the volume is constant ({low:g}); nothing to classify")
    air = ct_air_fraction(array) if not modality else 0.0
    if air >= CT_AIR_FRACTION:
        raise InputError(f"{where}: {100 * air:.0f} % of the voxels are at or below {CT_AIR_HU:g}, like air in a CT "
                         "in Hounsfield units (no modality is known for this volume); the glioma classifier needs "
                         "brain MRI (MR values are not negative)")


def min_slices(depth: int) -> int:
    """Fewest slices a series needs for a ``depth``-slice window: a quarter of it (rounded up), at least 1."""
    return max(1, -(-int(depth) // 4))


def check_slices(stack: Volume, depth: int, name: str) -> None:
    """Refuse an oriented stack that is not a 3D series for a ``depth``-slice window: fewer than
    :func:`min_slices` slices (e.g. a single 2D slice, whose window would be almost all zero padding) or an
    in-plane size below 8 x 8 pixels (e.g. one sagittal slice reoriented to axial)."""
    where = describe(stack, name)
    k, j, i = stack.array.shape
    if min(j, i) < 8:
        raise InputError(f"{where}: the axial stack is {k} x {j} x {i} voxels (slices x rows x columns): a single "
                         "slice or a thin slab, not a 3D series (slices of >= 8 x 8 pixels needed)")
    if k < min_slices(depth):
        raise InputError(f"{where}: {k} slice(s); the model's window is {depth} slices and needs at least "
                         f"{min_slices(depth)} of them real (a quarter), not zero padding: give the whole series")


def _to_network_stack(volume: Volume, spec: InputSpec, name: str) -> Volume:
    check_mri(volume, name)
    if spec.slice_order == "filename":
        volume = filename_order(volume)
    if spec.reorient:  # a view; the VOI (elementwise, so either order gives the same) then writes in axial order
        volume = orient_axial(volume)
    if spec.voi:
        volume = apply_voi_volume(volume)
    check_slices(volume, spec.depth, name)
    return volume


def network_grid(resized: Geometry, first: int) -> Geometry:
    """Geometry of the window grid: the resized stack's, shifted by ``first`` slices along k."""
    origin = np.asarray(resized.origin_lps_mm) + resized.direction[:, 2] * resized.spacing_mm[2] * first
    return Geometry(resized.spacing_mm, tuple(origin), resized.direction_lps)


def prepare(volumes: Mapping[str, Volume], spec: InputSpec,
            centre: tuple[str, Callable[[Geometry, int], int | None]] | None = None) -> Prepared:
    """The network input of one study (see the module docstring).

    Args:
        volumes: sequence name -> volume (as read: any plane); must hold every sequence of ``spec``.
        spec: the input spec.
        centre: ``(what, slice_of)``: ``slice_of(stack grid, n_slices)`` is the slice of the oriented reference
            stack to centre the window on (e.g. :func:`GliomaClassifierLib.tumour.window_centre_slice` of the
            segmented tumour), or None to keep the largest-brain-area slice; ``what`` names it
            (:attr:`Prepared.centred_on`). None: the largest-brain-area slice.
    Raises:
        InputError: a sequence missing, or a volume that is not a usable MR series (:func:`check_mri`,
            :func:`check_slices`).
    """
    from MedDLLib.resample import resample_to_geometry

    missing = [s for s in spec.sequences if s not in volumes]
    if missing:
        raise InputError(f"the model needs {', '.join(spec.sequences)}; missing {', '.join(missing)} "
                         f"(given: {', '.join(volumes) or 'none'})")
    ref_name = spec.sequences[0]
    reference = volumes[ref_name]
    ref = _to_network_stack(reference, spec, ref_name)
    resized = resize_inplane(ref, spec.size)
    normalised = normalize_minmax(resized.array, axis=(1, 2))
    area = (normalised > spec.brain_threshold).sum(axis=(1, 2))
    middle = int(np.argmax(area))
    centred_on = "brain"
    n_slices = int(resized.array.shape[0])
    if centre is not None:
        chosen = centre[1](resized.geometry, n_slices)
        if chosen is not None:
            middle, centred_on = int(chosen), centre[0]
    first, last = window_of(middle, spec.depth)
    # the window's slices of each stack go straight into the network input (zeros where the window is padding).
    # The other sequences are resampled onto the reference grid up to the window's last slice only (ITK computes
    # each output voxel from its index, the origin and the row length, so the slices kept are those of the whole
    # grid) and normalised (per slice) over the window's slices only
    array = np.zeros((len(spec.sequences), spec.depth, *normalised.shape[1:]), dtype=np.float32)
    lo, hi = window_span(first, spec.depth, n_slices)
    inside = slice(lo - first, hi - first) if hi > lo else slice(0, 0)
    array[0, inside] = normalised[lo:hi]
    del normalised
    for channel, name in enumerate(spec.sequences[1:], start=1):
        other = _to_network_stack(volumes[name], spec, name)
        if hi > lo:
            on_grid = resample_to_geometry(other, resized.geometry, (*resized.array.shape[:0:-1], hi)).array
            normalize_minmax(on_grid[lo:hi], axis=(1, 2), out=array[channel, inside])
    return Prepared(array, network_grid(resized.geometry, first), reference, middle, first, last,
                    n_slices, area, centred_on)
