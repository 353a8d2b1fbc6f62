"""Chest CT preprocessing: HU clean-up, body and lung masks, left/right lungs, network inputs.

Everything here works on :class:`~MedDLLib.geometry.Volume` / numpy arrays ``[k, j, i]`` (no MRML, no torch).

Lung segmentation (:func:`segment_lungs`), the seed recipe's threshold method made robust on real scans:

1. :func:`clean_hu`: the ``-2000`` (or lower) outside-scan padding becomes air (-1000 HU).
2. :func:`body_mask`: per axial slice, the largest component above ``-500 HU`` after a small opening (which cuts
   the thin contacts to the table), holes filled; then the largest 3D component. The bed, the air around the
   patient and anything outside the patient are outside it.
3. Air inside the body (``< -400 HU``); its 3D components; the trachea and main bronchi are tracked slice by
   slice from the top of the scan (:func:`airway_mask`) and removed; components smaller than
   ``MIN_LUNG_FRACTION`` of the largest (bowel or stomach gas, stray bronchi) are dropped; at most two are kept.
4. Left/right: two components are labelled by their x position (LPS: patient left = higher x); a single
   component (lungs touching at the anterior junction) is split by eroding until two cores appear and growing
   them back (watershed on the distance map), then labelled the same way.
5. Holes of each lung are filled slice by slice (vessels, nodules and tumours inside the lung belong to it).

Labels: :data:`RIGHT_LUNG` = 1, :data:`LEFT_LUNG` = 2 (patient right/left), 0 elsewhere.

Network inputs (:func:`seed_input`, :func:`tumour_crop_input`): resampling to ``SPACING_ZYX_MM`` = 2 x 1 x 1 mm,
HU clipped to ``HU_RANGE`` = [-1000, 400] and scaled to [0, 1].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage

from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.intensity import clip_and_scale
from MedDLLib.resample import resample_to_geometry

RIGHT_LUNG = 1
LEFT_LUNG = 2
#: Segment names and colours (RGB 0-1) of the lung labelmap / segmentation.
LUNG_SEGMENTS: dict[int, tuple[str, tuple[float, float, float]]] = {
    RIGHT_LUNG: ("Right lung", (0.50, 0.68, 0.90)),
    LEFT_LUNG: ("Left lung", (0.90, 0.70, 0.45)),
}
AIR_HU = -1000.0
#: Values at or below this are scanner padding outside the reconstructed field of view.
PADDING_BELOW_HU = -1500.0
BODY_THRESHOLD_HU = -500.0
LUNG_THRESHOLD_HU = -400.0
#: A second air component is a lung only if it holds at least this fraction of the largest one's volume.
MIN_LUNG_FRACTION = 0.15
#: Smallest volume (mL) of a single lung component (smaller air pockets are never lungs).
MIN_LUNG_ML = 20.0
HU_RANGE = (-1000.0, 400.0)
#: Network grid spacing (z, y, x) in mm, as the seed recipe.
SPACING_ZYX_MM = (2.0, 1.0, 1.0)
SOLID_HU = -100.0
#: Volumes larger than this are segmented on a coarser grid (:func:`segment_lungs`); 32 M = 128 x 512 x 512.
MAX_SEGMENT_VOXELS = 32 * 2**20


def clean_hu(hu: np.ndarray) -> np.ndarray:
    """HU as float32 with the outside-scan padding (``<= -1500``, e.g. -2000/-3024) set to air (-1000)."""
    out = np.array(hu, dtype=np.float32)  # one copy, whatever the input's type
    out[out <= PADDING_BELOW_HU] = AIR_HU
    return out


def compact_hu(volume: Volume) -> Volume:
    """``volume`` with its integer HU as int16 when every value fits (the same values in half or a quarter of the
    memory: a DICOM reader picks int32 for unsigned 16-bit storage with a negative intercept); else ``volume``.

    A CT in HU lies within int16 (-1024..3071 for 12-bit data); only the type of the array changes, never a value.
    """
    array = np.asarray(volume.array)
    if not np.issubdtype(array.dtype, np.integer) or array.dtype.itemsize <= 2 or array.size == 0:
        return volume
    info = np.iinfo(np.int16)
    if int(array.min()) < info.min or int(array.max()) > info.max:
        return volume
    return volume.with_array(array.astype(np.int16))


def label_sizes(labels: np.ndarray, n: int, chunk: int = 2**18) -> np.ndarray:
    """Voxels per label ``0..n`` (int64, length ``n + 1``) of a label array (e.g. :func:`scipy.ndimage.label`'s).

    ``np.bincount(labels.ravel(), minlength=n + 1)`` counted ``chunk`` voxels at a time: bincount converts its
    input to int64, a full-volume copy twice the size of int32 labels otherwise.
    """
    flat = labels.reshape(-1)
    sizes = np.zeros(n + 1, dtype=np.int64)
    for start in range(0, flat.size, chunk):
        sizes += np.bincount(flat[start:start + chunk], minlength=n + 1)
    return sizes


def _largest_component(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = label_sizes(labels, n)
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _disk(radius_px: int) -> np.ndarray:
    r = max(int(radius_px), 1)
    yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


def _bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every True voxel of ``mask`` (grown by ``margin``); None if empty."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


#: In-plane connectivity inside a 3D array: 2D operations on every axial slice at once.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Holes filled in each axial slice ``mask[k]`` (a 3D fill would leak through the open ends of the scan).

    One 3D fill with in-plane connectivity (the background of a slice reaches only its own edges), the volume
    padded with an empty slice at each end so that the first and last slices are filled like the others.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        return ndimage.binary_fill_holes(mask)
    box = _bounding_box(mask, margin=1)
    out = np.zeros(mask.shape, dtype=bool)
    if box is None:
        return out
    part = np.pad(mask[box], ((1, 1), (0, 0), (0, 0)))
    out[box] = ndimage.binary_fill_holes(part, structure=_IN_PLANE)[1:-1]
    return out


def _largest_component_per_slice(mask: np.ndarray) -> np.ndarray:
    """The largest in-plane (4-connected) component of every axial slice of ``mask`` ``[k, j, i]``."""
    labels, n = ndimage.label(mask, structure=_IN_PLANE)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = label_sizes(labels, n)[1:]
    slice_of = np.array([box[0].start for box in ndimage.find_objects(labels)])  # a label never crosses slices
    ids = np.arange(1, n + 1)
    # per slice, the largest label (the first one on ties, as an arg-max would): sorted by slice, size, -label
    order = np.lexsort((-ids, sizes, slice_of))
    last = np.r_[slice_of[order][1:] != slice_of[order][:-1], True]
    keep = np.zeros(n + 1, dtype=bool)
    keep[ids[order[last]]] = True
    return keep[labels]


def body_mask(hu: np.ndarray, spacing_mm: tuple[float, float, float], threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """The patient's body ``[k, j, i]`` (bool): outside air, the table and its pad excluded; lungs inside.

    Args:
        hu: CT in HU ``[k, j, i]`` (padding already air, see :func:`clean_hu`).
        spacing_mm: voxel size (i, j, k) in mm (the opening radius is 3 mm in-plane).
    """
    radius_px = int(round(3.0 / max(min(spacing_mm[0], spacing_mm[1]), 1e-3)))
    fg = hu > threshold_hu
    if radius_px >= 1:  # the in-plane disk on every slice at once
        fg = ndimage.binary_opening(fg, structure=_disk(radius_px)[None])
    fg = _largest_component_per_slice(fg)  # each step rebinds fg: one mask alive besides the step's own arrays
    fg = fill_holes_per_slice(fg)
    return _largest_component(fg)


def _components_2d(mask2d: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask2d)


def airway_mask(air: np.ndarray, hu: np.ndarray, body: np.ndarray, spacing_mm: tuple[float, float, float],
                *, max_area_mm2: float = 900.0, dark_hu: float = -850.0) -> np.ndarray:
    """Trachea and main bronchi ``[k, j, i]`` (bool), tracked slice by slice from the top of the scan down.

    Seeds: in the most superior slices, air components near the body's left-right midline that are small
    (< ``max_area_mm2``) and dark (mean < ``dark_hu``: a lumen full of air, not partial-volume parenchyma). Each
    tracked component is followed to the next slice below through the components that overlap it, as long
    as they stay small (the airway has not yet merged with the lung parenchyma in that slice). Handles both
    orders of slices (the superior end is found from the geometry by the caller through ``top_first``).

    Args:
        air: air inside the body (bool ``[k, j, i]``), slices ordered from superior (k=0) to inferior.
        hu: HU, same shape and order. body: body mask, same.
        spacing_mm: (i, j, k) spacing in mm.
    """
    pixel_mm2 = spacing_mm[0] * spacing_mm[1]
    max_area = max_area_mm2 / pixel_mm2
    out = np.zeros(air.shape, dtype=bool)
    previous: np.ndarray | None = None
    for k in range(air.shape[0]):
        labels, n = _components_2d(air[k])
        if n == 0:
            if previous is not None:
                break
            continue
        index = np.arange(1, n + 1)
        areas = ndimage.sum_labels(np.ones_like(labels), labels, index)
        means = ndimage.mean(hu[k], labels, index)
        current = np.zeros(air.shape[1:], dtype=bool)
        if previous is None:
            cols = np.flatnonzero(body[k].any(axis=0))
            if cols.size == 0:
                continue
            mid, half_width = (cols[0] + cols[-1]) / 2.0, (cols[-1] - cols[0]) / 2.0
            centres = ndimage.center_of_mass(np.ones_like(labels), labels, index)
            for lab, area, mean, (_, ci) in zip(index, areas, means, centres):
                if area * pixel_mm2 >= 30.0 and area <= max_area and mean < dark_hu and abs(ci - mid) < 0.2 * half_width:
                    current |= labels == lab
            if not current.any():
                # no trachea-like seed in the top slice: the scan starts below the carina, or there is no
                # airway in view; only the first slices with air are searched
                if k > 2:
                    break
                continue
        else:
            touching = np.unique(labels[previous & (labels > 0)])
            for lab in touching:
                if areas[lab - 1] <= max_area:
                    current |= labels == lab
            if not current.any():
                break
        out[k] = current
        previous = current
    return out


def _distance_mm(mask: np.ndarray, sampling_kji_mm: tuple[float, float, float], chunk: int = 8) -> np.ndarray:
    """Euclidean distance (mm, float64) of each voxel of ``mask`` ``[k, j, i]`` to the nearest voxel outside it.

    The values of :func:`scipy.ndimage.distance_transform_edt` (same feature transform, same float64 operations in
    the same order), with the distances computed ``chunk`` slices at a time from the feature transform instead of
    from full-volume int32 and float64 temporaries (about half the memory).
    """
    feature = np.zeros((3,) + mask.shape, dtype=np.int32)
    ndimage.distance_transform_edt(mask, sampling=sampling_kji_mm, return_distances=False, return_indices=True,
                                   indices=feature)
    out = np.empty(mask.shape, dtype=np.float64)
    grids = [np.arange(n, dtype=np.int32) for n in mask.shape]
    for k in range(0, mask.shape[0], chunk):
        part = out[k:k + chunk]
        for axis, (spacing, grid) in enumerate(zip(sampling_kji_mm, grids)):
            index = grid[k:k + chunk, None, None] if axis == 0 else grid[:, None] if axis == 1 else grid
            step = (feature[axis, k:k + chunk] - index).astype(np.float64)
            step *= float(spacing)
            np.multiply(step, step, step)
            if axis == 0:
                part[...] = step
            else:
                part += step
        np.sqrt(part, part)
    return out


def _split_left_right(lung: np.ndarray, spacing_mm: tuple[float, float, float], x_sign: float) -> np.ndarray:
    """Split one connected lung mask into two (labels 1/2 by x) by erosion + watershed; 0 if it fails."""
    from skimage.segmentation import watershed

    box = _bounding_box(lung, margin=1)
    if box is None:
        return np.zeros(lung.shape, dtype=np.uint8)
    if any(b.stop - b.start < n for b, n in zip(box, lung.shape)):  # work inside the lung's bounding box
        inner = _split_left_right(np.ascontiguousarray(lung[box]), spacing_mm, x_sign)
        out = np.zeros(lung.shape, dtype=np.uint8)
        out[box] = inner
        return out
    dist = _distance_mm(lung, (spacing_mm[2], spacing_mm[1], spacing_mm[0]))
    for depth_mm in (2.0, 4.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0):
        cores, n = ndimage.label(dist > depth_mm)
        if n < 2:
            continue
        sizes = label_sizes(cores, n)
        sizes[0] = 0
        order = np.argsort(sizes)[::-1]
        a, b = int(order[0]), int(order[1])
        if sizes[b] < 0.1 * sizes[a]:
            continue
        markers = np.zeros(lung.shape, dtype=np.int32)
        markers[cores == a] = 1
        markers[cores == b] = 2
        del cores
        np.negative(dist, out=dist)  # the watershed floods -distance (the distances are not needed further)
        return watershed(dist, markers, mask=lung).astype(np.uint8)
    return np.zeros(lung.shape, dtype=np.uint8)


@dataclasses.dataclass
class LungSegmentation:
    """Result of :func:`segment_lungs`.

    Attributes:
        labels: ``[k, j, i]`` uint8: 0 background, :data:`RIGHT_LUNG`, :data:`LEFT_LUNG`.
        working_body: bool body mask on the working grid (blocks of ``block_factors`` input voxels; the input grid
            itself when the factors are 1); :attr:`body` is the same on the input grid.
        working_airway: bool trachea/main bronchi removed from the lungs, on the working grid (:attr:`airway`).
        right_ml, left_ml: lung volumes in mL.
        notes: what was done or doubtful (e.g. the lungs had to be split).
        block_factors: ``(fk, fj, fi)`` input voxels per working voxel (:func:`working_factors`).
    """

    labels: np.ndarray
    working_body: np.ndarray
    working_airway: np.ndarray
    right_ml: float
    left_ml: float
    notes: list[str]
    block_factors: tuple[int, int, int] = (1, 1, 1)

    @property
    def total_ml(self) -> float:
        return self.right_ml + self.left_ml

    @property
    def body(self) -> np.ndarray:
        """``[k, j, i]`` bool body mask on the input grid (expanded from the working grid on each access: a
        full-resolution copy is made only when asked for)."""
        return _block_expand(self.working_body, self.block_factors, self.labels.shape)

    @property
    def airway(self) -> np.ndarray:
        """``[k, j, i]`` bool airway (trachea/main bronchi) on the input grid (expanded like :attr:`body`)."""
        return _block_expand(self.working_airway, self.block_factors, self.labels.shape)


def _superior_first(geometry: Geometry) -> bool:
    """True when k=0 is the most superior slice (the k axis points to the feet, LPS z decreasing)."""
    return float(geometry.direction[2, 2]) < 0


def working_factors(shape_kji: tuple[int, int, int], spacing_mm: tuple[float, float, float],
                    max_voxels: int = MAX_SEGMENT_VOXELS) -> tuple[int, int, int]:
    """Integer block sizes ``(fk, fj, fi)`` that bring a volume to at most ``max_voxels`` voxels, coarsening
    the finest axis first (in-plane j and i together); ``(1, 1, 1)`` when it is small enough already."""
    factors = [1, 1, 1]
    spacing = [spacing_mm[2], spacing_mm[1], spacing_mm[0]]
    while int(np.prod([-(-n // f) for n, f in zip(shape_kji, factors)])) > max_voxels:
        in_plane = min(spacing[1] * factors[1], spacing[2] * factors[2])
        if spacing[0] * factors[0] < in_plane:
            factors[0] += 1
        else:
            factors[1] += 1
            factors[2] += 1
    return factors[0], factors[1], factors[2]


def _block_mean(array: np.ndarray, factors: tuple[int, int, int], integer_values: bool = False) -> np.ndarray:
    """Mean over ``factors`` blocks (edge-padded to a multiple of the block), float32.

    ``integer_values``: every value is an integer of at most 16 bits (HU read as int16): the block sums are then
    exact in float32 in any order, and are summed with one strided addition per block offset (several times
    faster than a mean over the reshaped block axes; the same float32 values).
    """
    pad = [(0, (-n) % f) for n, f in zip(array.shape, factors)]
    if any(p for _, p in pad):
        array = np.pad(array, pad, mode="edge")
    k, j, i = (n // f for n, f in zip(array.shape, factors))
    count = factors[0] * factors[1] * factors[2]
    if integer_values and count <= 256:  # |sum| <= 256 * 65535 < 2**24: exact in float32
        total = np.zeros((k, j, i), dtype=np.float32)
        for a in range(factors[0]):
            for b in range(factors[1]):
                for c in range(factors[2]):
                    total += array[a::factors[0], b::factors[1], c::factors[2]]
        total /= count
        return total
    out = array.reshape(k, factors[0], j, factors[1], i, factors[2]).mean(axis=(1, 3, 5), dtype=np.float32)
    return out.astype(np.float32, copy=False)


def _block_expand(array: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour inverse of :func:`_block_mean`: every coarse voxel repeated over its block, cropped to
    ``shape``. The array itself (no copy) when the factors are 1 and the shape matches."""
    if tuple(factors) == (1, 1, 1) and array.shape == tuple(shape):
        return array
    out = np.empty(shape, dtype=array.dtype)
    fk, fj, fi = factors
    for a in range(fk):  # one strided copy per offset inside the block: no intermediate arrays
        for b in range(fj):
            for c in range(fi):
                target = out[a::fk, b::fj, c::fi]
                target[...] = array[:target.shape[0], :target.shape[1], :target.shape[2]]
    return out


def _inner_boundary_in_plane(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with an in-plane (4-connected) neighbour outside it."""
    inner = mask.copy()
    inner[:, 1:, :] &= mask[:, :-1, :]
    inner[:, :-1, :] &= mask[:, 1:, :]
    inner[:, :, 1:] &= mask[:, :, :-1]
    inner[:, :, :-1] &= mask[:, :, 1:]
    return mask & ~inner


def segment_lungs(volume: Volume, *, threshold_hu: float = LUNG_THRESHOLD_HU,
                  max_voxels: int = MAX_SEGMENT_VOXELS) -> LungSegmentation:
    """Right and left lungs of an axial chest CT (see the module docstring for the steps).

    A volume of more than ``max_voxels`` voxels (e.g. 300 x 512 x 512 at 0.7 x 0.7 x 1 mm) is segmented on a
    coarser grid (block means, :func:`working_factors`, e.g. 1.4 x 1.4 x 1 mm); the labels come back to the
    input grid by repeating each coarse voxel over its block, and the dense voxels (> ``threshold_hu``) of each
    lung's border are then removed at full resolution. Volumes are counted on the input grid.

    Args:
        volume: CT in HU, axial (the k axis along the body's head-feet axis), ``[k, j, i]``.
        threshold_hu: air threshold (seed recipe: -400 HU).
        max_voxels: largest volume segmented at full resolution.
    Raises:
        InputError: the volume is not axial, or no lung-sized air region is inside the body.
    """
    factors = working_factors(volume.array.shape, volume.geometry.spacing_mm, max_voxels)
    if factors == (1, 1, 1):
        return _segment_lungs(volume, threshold_hu)
    g = volume.geometry
    raw = np.asarray(volume.array)
    spacing = (g.spacing_mm[0] * factors[2], g.spacing_mm[1] * factors[1], g.spacing_mm[2] * factors[0])
    shift_ijk = np.array([(factors[2] - 1) * g.spacing_mm[0], (factors[1] - 1) * g.spacing_mm[1],
                          (factors[0] - 1) * g.spacing_mm[2]]) / 2.0
    origin = np.asarray(g.origin_lps_mm, float) + g.direction @ shift_ijk
    # HU cleaned a few slices at a time on the way to the block means: no full-resolution float32 copy
    step = factors[0] * max(1, 16 // factors[0])
    integer_values = np.issubdtype(raw.dtype, np.integer) and raw.dtype.itemsize <= 2
    coarse_hu = np.concatenate([_block_mean(clean_hu(raw[k:k + step]), factors, integer_values)
                                for k in range(0, len(raw), step)])
    coarse = Volume(coarse_hu, Geometry(spacing, tuple(origin), g.direction_lps))
    seg = _segment_lungs(coarse, threshold_hu, cleaned=True)
    del coarse, coarse_hu
    shape = raw.shape
    labels = _block_expand(seg.labels, factors, shape)
    # the dense voxels (> threshold) of each lung's in-plane border are removed a few slices at a time (in-plane
    # operations: the same result as on the whole volume, without full-volume temporaries); padding (<= -1500 HU,
    # air once cleaned) is below any air threshold at or above -1000 HU
    counts = {RIGHT_LUNG: 0, LEFT_LUNG: 0}
    for k in range(0, shape[0], 16):
        part = labels[k:k + 16]
        dense = raw[k:k + 16] > threshold_hu if threshold_hu >= AIR_HU else clean_hu(raw[k:k + 16]) > threshold_hu
        for value in (RIGHT_LUNG, LEFT_LUNG):
            part[_inner_boundary_in_plane(part == value) & dense] = 0
            counts[value] += int(np.count_nonzero(part == value))
    voxel_ml = g.voxel_volume_ml()
    notes = seg.notes + [f"segmented on a {spacing[0]:.2f} x {spacing[1]:.2f} x {spacing[2]:.2f} mm grid "
                         f"(blocks {factors[2]} x {factors[1]} x {factors[0]}), borders refined at full resolution"]
    return LungSegmentation(labels, seg.working_body, seg.working_airway, float(counts[RIGHT_LUNG] * voxel_ml),
                            float(counts[LEFT_LUNG] * voxel_ml), notes, factors)


def _segment_lungs(volume: Volume, threshold_hu: float, cleaned: bool = False) -> LungSegmentation:
    """:func:`segment_lungs` at the volume's own resolution (``cleaned``: the HU went through :func:`clean_hu`)."""
    g = volume.geometry
    d = g.direction
    if abs(d[2, 2]) < 0.9 or abs(d[0, 0]) < 0.9:
        raise InputError("lung segmentation needs an axial CT (k axis head-feet, i axis right-left); got direction "
                         f"{np.round(d, 3).tolist()}")
    hu = np.asarray(volume.array, dtype=np.float32) if cleaned else clean_hu(volume.array)
    flip = not _superior_first(g)
    if flip:  # work with k=0 at the top (superior), as the airway tracking expects
        hu = hu[::-1]
    spacing = g.spacing_mm
    voxel_ml = g.voxel_volume_ml()
    notes: list[str] = []
    body = body_mask(hu, spacing)
    if not body.any():
        raise InputError("no body found (no tissue above -500 HU): is this a CT in HU?")
    air = (hu < threshold_hu) & body
    airway = airway_mask(air, hu, body, spacing)
    shape = hu.shape
    del hu  # the HU are not needed further (a full-volume float32 freed when this function made it)
    if airway.any():
        notes.append(f"airway (trachea/main bronchi) removed: {airway.sum() * voxel_ml:.1f} mL")
    candidate = air & ~airway
    del air
    comps, n = ndimage.label(candidate)
    del candidate
    sizes = label_sizes(comps, n) * voxel_ml
    sizes[0] = 0.0
    order = [int(c) for c in np.argsort(sizes)[::-1] if sizes[c] > 0]
    if not order or sizes[order[0]] < MIN_LUNG_ML:
        largest = sizes[order[0]] if order else 0.0
        raise InputError(f"no lungs found: the largest air region inside the body is {largest:.0f} mL "
                         f"(expected >= {MIN_LUNG_ML:.0f} mL below {threshold_hu:.0f} HU); is this a chest CT?")
    keep = [c for c in order[:2] if sizes[c] >= max(MIN_LUNG_ML, MIN_LUNG_FRACTION * sizes[order[0]])]
    # x (LPS, patient left positive) of each voxel column: sign of the i axis along x
    x_sign = float(np.sign(d[0, 0]))
    if len(keep) == 2:
        parts = [comps == c for c in keep]
        del comps
    else:
        lung = comps == keep[0]
        del comps
        split = _split_left_right(lung, spacing, x_sign)
        if split.max() == 2:
            parts = [split == 1, split == 2]
            notes.append("the lungs touch: split into left and right along the narrowest junction")
        else:
            parts = [lung]
            notes.append("only one lung region found")
        del lung, split
    labels = np.zeros(shape, dtype=np.uint8)
    centres_i = [float(np.nonzero(p)[2].mean()) for p in parts]
    for part, ci in zip(parts, centres_i):
        if len(parts) == 1:
            # a single lung: left or right of the body's midline
            cols = np.flatnonzero(body.any(axis=(0, 1)))
            is_left = (ci - (cols[0] + cols[-1]) / 2.0) * x_sign > 0
        else:
            other = [c for c in centres_i if c != ci] or [ci]
            is_left = (ci - other[0]) * x_sign > 0
        labels[part] = LEFT_LUNG if is_left else RIGHT_LUNG
    del parts
    # fill holes of each lung slice by slice (vessels, nodules, tumours), never beyond the body
    filled = np.zeros(shape, dtype=np.uint8)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        mask = fill_holes_per_slice(labels == value) & body
        filled[mask & (filled == 0)] = value
    del labels, mask
    if flip:  # back to the input's slice order, one array at a time
        filled = np.ascontiguousarray(filled[::-1])
        body = np.ascontiguousarray(body[::-1])
        airway = np.ascontiguousarray(airway[::-1])
    right_ml = float(np.count_nonzero(filled == RIGHT_LUNG) * voxel_ml)
    left_ml = float(np.count_nonzero(filled == LEFT_LUNG) * voxel_ml)
    return LungSegmentation(filled, body, airway, right_ml, left_ml, notes)


# ---------------------------------------------------------------------------------------------- tumour candidate
def tumour_candidate(hu: np.ndarray, lungs: np.ndarray, *, solid_hu: float = SOLID_HU,
                     min_voxels: int = 2) -> tuple[float, float, float] | None:
    """Centre ``(k, j, i)`` (voxel units) of the largest solid (> ``solid_hu``) component inside the lungs.

    ``lungs`` is the filled lung mask (holes filled, so nodules and tumours inside the lung are part of it).
    Returns None when there is no solid component of at least ``min_voxels`` voxels (no candidate: the caller
    falls back on the lung region).
    """
    lungs = np.asarray(lungs, dtype=bool)
    box = _bounding_box(lungs)
    if box is None:
        return None
    solid = (np.asarray(hu)[box] > solid_hu) & lungs[box]  # inside the lungs' bounding box only
    comps, n = ndimage.label(solid)
    if n == 0:
        return None
    sizes = label_sizes(comps, n)
    sizes[0] = 0
    best = int(sizes.argmax())
    if sizes[best] < min_voxels:
        return None
    centre = np.argwhere(comps == best).mean(axis=0) + [b.start for b in box]
    return tuple(float(c) for c in centre)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- network inputs
@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the network sees (the ``input`` section of the model package metadata).

    Attributes:
        mode: ``"middle"`` (seed: the ``n_slices`` middle slices at ``slice_mm`` spacing, in-plane the whole
            field of view resized to ``size x size``, lungs only) or ``"crop"`` (improved: a cube of ``crop_mm``
            centred on the tumour candidate, else on the lungs, ``size`` voxels a side, lungs only).
        size: in-plane size (middle) or cube side (crop) in voxels.
        n_slices: slices of the middle mode.
        slice_mm: slice spacing of the middle mode (seed: 2 mm).
        crop_mm: side of the crop cube in mm.
        hu_range: clipping window, scaled to [0, 1].
        mask_lungs: voxels outside the (filled) lung mask become air.
    """

    mode: str = "crop"
    size: int = 32
    n_slices: int = 20
    slice_mm: float = SPACING_ZYX_MM[0]
    crop_mm: float = 80.0
    hu_range: tuple[float, float] = HU_RANGE
    mask_lungs: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("middle", "crop"):
            raise InputError(f"input mode must be 'middle' or 'crop', got {self.mode!r}")
        if self.size < 8 or self.n_slices < 1 or self.slice_mm <= 0 or self.crop_mm <= 0:
            raise InputError(f"invalid input spec: {self}")
        object.__setattr__(self, "hu_range", tuple(float(v) for v in self.hu_range))

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        """Network input shape (D, H, W)."""
        return (self.n_slices, self.size, self.size) if self.mode == "middle" else (self.size,) * 3

    def to_metadata(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hu_range"] = list(self.hu_range)
        out["shape_kji"] = list(self.shape_kji)
        out["channels"] = ["CT lungs, HU [-1000, 400] -> [0, 1]"]
        return out

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> "InputSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "hu_range" else v) for k, v in data.items() if k in names})


def _grid(volume: Volume, centre_lps: np.ndarray, spacing_ijk: tuple[float, float, float],
          size_ijk: tuple[int, int, int]) -> Geometry:
    """A grid aligned with the volume's axes, ``size_ijk`` voxels of ``spacing_ijk`` mm, centred at ``centre_lps``."""
    d = volume.geometry.direction
    half = (np.array(size_ijk, float) - 1.0) * np.array(spacing_ijk) / 2.0
    return Geometry(spacing_ijk, tuple(centre_lps - d @ half), volume.geometry.direction_lps)


def network_grid(volume: Volume, lungs: np.ndarray, spec: InputSpec, hu: np.ndarray | None = None) -> tuple[Geometry, dict[str, Any]]:
    """The :class:`Geometry` of the network input grid for ``volume`` (and what it is centred on).

    Returns:
        ``(geometry, info)``; info has ``centre`` ("candidate", "lungs" or "volume") and ``candidate_kji``.
    """
    g = volume.geometry
    n_k, n_j, n_i = volume.array.shape
    extent = np.array([n_i, n_j, n_k], float) * np.array(g.spacing_mm)
    info: dict[str, Any] = {"candidate_kji": None}
    if spec.mode == "middle":
        centre_ijk = (np.array([n_i, n_j, n_k], float) - 1.0) / 2.0
        centre = (g.ijk_to_lps() @ np.r_[centre_ijk, 1.0])[:3]
        spacing = (extent[0] / spec.size, extent[1] / spec.size, spec.slice_mm)
        info["centre"] = "volume"
        return _grid(volume, centre, spacing, (spec.size, spec.size, spec.n_slices)), info
    # the raw HU serve: padding (<= -1500 HU) is never solid, cleaned or not
    candidate = tumour_candidate(volume.array if hu is None else hu, lungs)
    side = spec.crop_mm / spec.size
    if candidate is not None:
        info.update(centre="candidate", candidate_kji=list(candidate))
        centre_kji = np.array(candidate)
    elif lungs.any():
        info["centre"] = "lungs"
        idx = np.argwhere(lungs)
        centre_kji = (idx.min(axis=0) + idx.max(axis=0)) / 2.0
        lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
        span_mm = ((hi - lo)[::-1] * np.array(g.spacing_mm)).max()
        side = max(side, float(span_mm) / spec.size)
    else:
        info["centre"] = "volume"
        centre_kji = (np.array([n_k, n_j, n_i], float) - 1.0) / 2.0
    centre = (g.ijk_to_lps() @ np.r_[centre_kji[::-1], 1.0])[:3]
    return _grid(volume, centre, (side, side, side), (spec.size,) * 3), info


def network_input(volume: Volume, lung_labels: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Geometry, dict[str, Any]]:
    """The network input ``(1, D, H, W)`` float32 in [0, 1] for a CT and its lung labelmap.

    HU (padding as air) are resampled (linear) onto :func:`network_grid`, voxels outside the lungs become air
    when ``spec.mask_lungs``, then clipped to ``spec.hu_range`` and scaled to [0, 1]
    (:func:`MedDLLib.intensity.clip_and_scale`).

    Returns:
        ``(array, grid geometry, info)``; the geometry maps a Grad-CAM map back (:func:`MedDLLib.gradcam.heatmap_to_reference`).
    """
    from MedDLLib.resample import covering_box, crop_volume

    lungs = np.asarray(lung_labels) > 0
    grid, info = network_grid(volume, lungs, spec)
    size_ijk = spec.shape_kji[::-1]
    # only the voxels the network grid can touch are cleaned and resampled (the same values as the whole volume)
    box = covering_box(spec.shape_kji, grid, volume.geometry, volume.array.shape) or ((0, 1), (0, 1), (0, 1))
    part = crop_volume(volume, box)
    image = resample_to_geometry(part.with_array(clean_hu(part.array)), grid, size_ijk, default_value=AIR_HU).array
    if spec.mask_lungs:
        (k0, k1), (j0, j1), (i0, i1) = box
        lung_part = part.with_array(lungs[k0:k1, j0:j1, i0:i1].astype(np.uint8))
        mask = resample_to_geometry(lung_part, grid, size_ijk, is_label=True, default_value=0).array > 0
        image = np.where(mask, image, AIR_HU)
    return clip_and_scale(image, *spec.hu_range)[None], grid, info
