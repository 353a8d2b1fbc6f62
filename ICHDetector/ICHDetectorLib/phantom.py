"""Synthetic head CT studies with planted haemorrhages, written in the RSNA 2019 layout.

Layout written by :func:`write_dataset` (as the Kaggle RSNA Intracranial Hemorrhage Detection data)::

    OUT/stage_2_train/ID_<hex>.dcm     one axial slice per file, all studies mixed in one flat folder
    OUT/stage_2_train.csv              ID,Label rows ``ID_<hex>_<subtype>,0|1`` (6 rows per slice)
    OUT/phantom.json                   ground truth (subtypes, slice labels, encoding) per study

Anatomy (:func:`head_ct`): air, scalp, skull (bone), brain parenchyma (grey matter shell, white matter core),
two lateral ventricles with CSF and cortical sulci with CSF. Bleeds of each subtype are planted where they occur:
epidural (biconvex lens against the inner skull), subdural (crescent along the inner skull), intraparenchymal
(blob in white matter), intraventricular (blood in a ventricle), subarachnoid (blood in the sulci of a sector).
Blood is 50-90 HU (one value per bleed plus noise). About half of the studies are negative; positive studies
carry 1 to 3 subtypes. A quarter of the studies are stored with the RSNA "bad intercept" 12-bit encoding
(BitsStored 12, unsigned, RescaleIntercept 0, stored = HU mod 4096): readers need the fix in
:func:`MedDLLib.dicom.fix_bad_intercept`.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from MedDLLib.dicomwrite import write_series
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.io import atomic_path
from MedDLLib.phantoms import HU, PhantomGenerator, ellipsoid_mask, smooth_noise, write_phantom_dataset

from .dataset import CSV_SUBTYPES, IMAGE_FOLDER, LABELS, LABELS_CSV, SUBTYPES

#: Field of view of the phantom slices (mm); the pixel spacing is ``FOV_MM / size``.
FOV_MM = 230.0
#: A slice is labelled positive for a subtype when the bleed covers at least this area in it (mm^2; 4 pixels of
#: a 64-pixel phantom), and at least one pixel: a small phantom still labels its bleeds.
MIN_LABEL_AREA_MM2 = 4 * (FOV_MM / 64) ** 2
SLICE_MM = 5.0


def _ellipsoid_shell(shape, centre, radii, thickness):
    outer = ellipsoid_mask(shape, centre, radii)
    inner = ellipsoid_mask(shape, centre, tuple(max(r - t, 0.5) for r, t in zip(radii, thickness)))
    return outer & ~inner, inner


def head_ct(
    rng: np.random.Generator,
    size: int = 64,
    n_slices: int = 12,
    subtypes: tuple[str, ...] = (),
) -> tuple[Volume, dict[str, np.ndarray], np.ndarray]:
    """One synthetic head CT in HU with bleeds of the given subtypes.

    Args:
        rng: random stream (shape, position and density of everything).
        size: in-plane size (rows = columns) in pixels; spacing ``FOV_MM / size`` mm.
        n_slices: number of axial slices (``SLICE_MM`` apart).
        subtypes: subtypes to plant (names of :data:`~ICHDetectorLib.dataset.SUBTYPES`).
    Returns:
        ``(volume, bleed_masks, brain_mask)``: the HU volume ``[k, j, i]`` (float32, LPS axial geometry),
        one boolean mask per planted subtype, and the intracranial (inside the inner skull) mask.
    """
    unknown = set(subtypes) - set(SUBTYPES)
    if unknown:
        raise ValueError(f"unknown subtypes {sorted(unknown)}; expected some of {SUBTYPES}")
    shape = (n_slices, size, size)
    s = size / 64.0  # scale of in-plane distances relative to a 64-pixel slice
    centre = (n_slices * rng.uniform(0.25, 0.4), size / 2 + rng.uniform(-2, 2) * s, size / 2 + rng.uniform(-2, 2) * s)
    radii = (n_slices * rng.uniform(0.75, 0.9), rng.uniform(26, 29) * s, rng.uniform(21, 24) * s)
    hu = np.full(shape, HU["air"], dtype=np.float32)
    head = ellipsoid_mask(shape, centre, radii)
    hu[head] = HU["soft_tissue"]
    skull_radii = tuple(r - t for r, t in zip(radii, (0.6, 1.2 * s, 1.2 * s)))
    skull, brain = _ellipsoid_shell(shape, centre, skull_radii, (1.0, 2.2 * s, 2.2 * s))
    hu[skull] = HU["bone"] + 150.0 * rng.standard_normal(int(skull.sum())).astype(np.float32)
    brain_radii = tuple(r - t for r, t in zip(skull_radii, (1.0, 2.2 * s, 2.2 * s)))
    white = ellipsoid_mask(shape, centre, tuple(r * 0.72 for r in brain_radii))
    hu[brain] = HU["grey_matter"]
    hu[white & brain] = HU["white_matter"]
    # cortical sulci: CSF in a gyral pattern inside a thin shell under the inner skull
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    angle = np.arctan2(jj - centre[1], ii - centre[2])
    cortex, _ = _ellipsoid_shell(shape, centre, brain_radii, (1.0, 2.5 * s, 2.5 * s))
    sulci = cortex & (np.sin(angle * 14 + rng.uniform(0, 2 * np.pi)) > 0.55)
    hu[sulci] = HU["csf"]
    # lateral ventricles
    ventricles = np.zeros(shape, dtype=bool)
    vk = centre[0] + n_slices * rng.uniform(0.05, 0.15)
    for side in (-1, 1):
        ventricles |= ellipsoid_mask(shape, (vk, centre[1] - 1 * s, centre[2] + side * 4.5 * s),
                                     (n_slices * 0.22, 9 * s, 2.6 * s))
    ventricles &= brain
    hu[ventricles] = HU["csf"]

    masks: dict[str, np.ndarray] = {}
    parenchyma = brain & ~ventricles & ~sulci
    for subtype in subtypes:
        low = min(centre[0], n_slices - 1.0)
        k0 = rng.uniform(low, max(low, min(centre[0] + radii[0] * 0.6, n_slices - 2.0)))
        theta = rng.uniform(0, 2 * np.pi)
        if subtype == "epidural":  # biconvex lens pressed against the inner skull
            pj = centre[1] + brain_radii[1] * np.sin(theta)
            pi = centre[2] + brain_radii[2] * np.cos(theta)
            mask = ellipsoid_mask(shape, (k0, pj, pi), (rng.uniform(1.2, 2.0), 7 * s, 7 * s)) & brain
            mask &= ~ellipsoid_mask(shape, centre, tuple(r - t for r, t in zip(brain_radii, (0, 3.5 * s, 3.5 * s))))
        elif subtype == "subdural":  # crescent along the inner skull over a wide arc
            shell, _ = _ellipsoid_shell(shape, centre, brain_radii, (1.0, 2.0 * s, 2.0 * s))
            arc = np.cos(angle - theta) > np.cos(rng.uniform(0.6, 1.0))
            mask = shell & arc & (np.abs(kk - k0) <= rng.uniform(1.5, 3.0))
        elif subtype == "intraparenchymal":  # blob in the white matter
            r = rng.uniform(0.3, 0.55)
            pj = centre[1] + r * brain_radii[1] * np.sin(theta)
            pi = centre[2] + r * brain_radii[2] * np.cos(theta)
            rad = rng.uniform(2.5, 4.5) * s
            mask = ellipsoid_mask(shape, (k0, pj, pi), (rng.uniform(1.0, 1.8), rad, rad * rng.uniform(0.7, 1.3)))
            mask &= parenchyma
        elif subtype == "intraventricular":  # blood layering in the (posterior part of the) ventricles
            mask = ventricles & (jj > centre[1] + rng.uniform(-2, 3) * s)
        elif subtype == "subarachnoid":  # blood in the sulci of one sector
            arc = np.cos(angle - theta) > np.cos(rng.uniform(0.7, 1.2))
            mask = sulci & arc & (np.abs(kk - k0) <= rng.uniform(1.5, 3.0))
        else:  # pragma: no cover - checked above
            raise AssertionError(subtype)
        hu[mask] = rng.uniform(55.0, 85.0)
        masks[subtype] = mask

    texture = 3.0 * smooth_noise(shape, 1.5, rng) + 4.0 * rng.standard_normal(shape).astype(np.float32)
    hu[head] += texture[head]
    hu = np.clip(hu, -1000.0, 3000.0).astype(np.float32)
    spacing = FOV_MM / size
    origin = (-spacing * (size - 1) / 2, -spacing * (size - 1) / 2, -40.0)
    geometry = Geometry((spacing, spacing, SLICE_MM), origin)
    return Volume(hu, geometry, {"modality": "CT", "units": "HU"}), masks, brain


def slice_labels(masks: dict[str, np.ndarray], n_slices: int, pixel_area_mm2: float) -> np.ndarray:
    """``(n_slices, 6)`` 0/1 labels in :data:`~ICHDetectorLib.dataset.LABELS` order ("any" first) of bleed
    ``masks`` ``(n_slices, rows, columns)`` with pixels of ``pixel_area_mm2`` (see :data:`MIN_LABEL_AREA_MM2`)."""
    min_pixels = max(1, math.ceil(MIN_LABEL_AREA_MM2 / pixel_area_mm2 - 1e-9))
    labels = np.zeros((n_slices, len(LABELS)), dtype=np.int64)
    for subtype, mask in masks.items():
        labels[:, LABELS.index(subtype)] = mask.reshape(n_slices, -1).sum(axis=1) >= min_pixels
    labels[:, 0] = labels[:, 1:].max(axis=1)
    return labels


def choose_subtypes(rng: np.random.Generator, positive_fraction: float = 0.5) -> tuple[str, ...]:
    """No subtype (negative study) with probability ``1 - positive_fraction``, else 1 to 3 distinct subtypes."""
    if rng.random() >= positive_fraction:
        return ()
    count = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
    return tuple(sorted(rng.choice(SUBTYPES, size=count, replace=False).tolist()))


def encode_bad_intercept(hu: np.ndarray) -> np.ndarray:
    """Values whose 12-bit unsigned storage with intercept 0 reproduces the RSNA bad-intercept files."""
    return np.mod(np.rint(hu), 4096).astype(np.float32)


#: Smallest phantom (pixels in-plane, slices): what :func:`ICHDetectorLib.preprocess.check_head_ct` reads.
MIN_SIZE = 16
MIN_SLICES = 1


class ICHPhantomGenerator(PhantomGenerator):
    """Writes head CT phantoms in the RSNA 2019 layout (see the module docstring).

    Raises:
        InputError: ``size`` below :data:`MIN_SIZE` pixels, ``n_slices`` below :data:`MIN_SLICES`, or a fraction
            outside [0, 1] (checked here, before anything is written).
    """

    task = "ich"

    def __init__(self, size: int = 64, n_slices: int = 12, positive_fraction: float = 0.5,
                 bad_intercept_fraction: float = 0.25) -> None:
        if int(size) < MIN_SIZE or int(n_slices) < MIN_SLICES:
            raise InputError(f"ICH phantoms need size >= {MIN_SIZE} pixels and >= {MIN_SLICES} slice (the smallest "
                             f"head CT the ICH task reads), got size {size}, {n_slices} slices")
        for label, value in (("positive_fraction", positive_fraction),
                             ("bad_intercept_fraction", bad_intercept_fraction)):
            if not 0.0 <= float(value) <= 1.0:
                raise InputError(f"ICH phantoms: {label} must be in [0, 1], got {value}")
        self.size, self.n_slices = int(size), int(n_slices)
        self.positive_fraction = float(positive_fraction)
        self.bad_intercept_fraction = float(bad_intercept_fraction)

    def write_case(self, out: Path, index: int, rng: np.random.Generator) -> dict[str, Any]:
        subtypes = choose_subtypes(rng, self.positive_fraction)
        volume, masks, _ = head_ct(rng, self.size, self.n_slices, subtypes)
        labels = slice_labels(masks, self.n_slices, float(np.prod(volume.geometry.spacing_mm[:2])))
        bad = bool(rng.random() < self.bad_intercept_fraction)
        # ids and UIDs from the case's own stream: datasets written with different seeds never share them
        uid_seed = int(rng.integers(2**31))
        patient = f"ICH-PHANTOM-{uid_seed:010d}"
        staging = out / f".case{index:05d}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        if bad:
            paths = write_series(staging, volume.with_array(encode_bad_intercept(volume.array)),
                                 rescale_intercept=0.0, bits_stored=12, pixel_representation=0,
                                 patient_id=patient, window=(40.0, 80.0), seed=uid_seed)
        else:
            paths = write_series(staging, volume, rescale_intercept=-1024.0, patient_id=patient,
                                 window=(40.0, 80.0), seed=uid_seed)
        folder = out / IMAGE_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        ids = []
        for path in paths:
            while True:
                slice_id = "ID_" + "".join(rng.choice(list("0123456789abcdef"), size=9))
                if not (folder / f"{slice_id}.dcm").exists():
                    break
            os.replace(path, folder / f"{slice_id}.dcm")
            ids.append(slice_id)
        shutil.rmtree(staging, ignore_errors=True)
        return {"case": index, "patient_id": patient, "subtypes": list(subtypes), "bad_intercept": bad,
                "slice_ids": ids, "labels": labels.tolist(),
                "bleed_voxels": {k: int(v.sum()) for k, v in masks.items()}}

    def write_index(self, out: Path, truths: list[dict[str, Any]], rng: np.random.Generator) -> None:
        rows = []
        for truth in truths:
            for slice_id, labels in zip(truth["slice_ids"], truth["labels"]):
                for subtype in CSV_SUBTYPES:
                    rows.append((f"{slice_id}_{subtype}", int(labels[LABELS.index(subtype)])))
        with atomic_path(out / LABELS_CSV) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ID", "Label"])
            writer.writerows(rows)


def write_dataset(out: str | os.PathLike, cases: int, seed: int = 0, *, size: int = 64, n_slices: int = 12,
                  positive_fraction: float = 0.5, bad_intercept_fraction: float = 0.25) -> dict[str, Any]:
    """Write ``cases`` phantom studies in the RSNA 2019 layout into ``out``; return the manifest."""
    generator = ICHPhantomGenerator(size, n_slices, positive_fraction, bad_intercept_fraction)
    return write_phantom_dataset(generator, out, cases, seed)
