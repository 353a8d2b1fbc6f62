"""Synthetic chest CT studies with a planted survival signal, written in a TCIA download layout.

Layout written by :func:`write_dataset` (as the NBIA Data Retriever writes e.g. NSCLC-Radiomics)::

    OUT/LUNG-PHANTOM/LUNGPH-<nnn>/<MM-DD-YYYY>-NA-CT CHEST WO CONTRAST-<nnnnn>/<s>.000000-<series description>-<nnnnn>/1-<nnn>.dcm
    OUT/clinical.csv       PatientID, Survival.time (days), deadstatus.event (1 = death, 0 = censored), age, gender
    OUT/phantom.json       ground truth per case (tumour side, centre, diameter, density, risk, time, event)

Anatomy (:func:`chest_ct`, axial, LPS, k = 0 the most inferior slice as scanners store it): the -2000 HU
padding outside the circular reconstruction field; a curved table under the patient (separated by a thin air
gap); the body (elliptic cylinder) with a subcutaneous fat layer, muscle and mediastinal soft tissue; two lungs
(ellipsoids, parenchyma about -850 HU with texture); the trachea from the top of the scan down to the carina and
the two main bronchi running into the lungs (-1000 HU); the heart (anterior, left of the midline); the spine
(posterior, bone); a few small vessels (soft-tissue blobs) in the lungs; and one solid tumour (0-60 HU,
diameter 15-55 mm) somewhere inside one lung.

Survival (:func:`tumour_risk`): the log-hazard grows with the tumour diameter, ``risk = 2 * (d - 35) / 11.5``,
plus Gaussian noise (sd 0.25); times are exponential with median 700 days at risk 0 and about 30 % random
censoring (:func:`MedDLLib.phantoms.survival_times`). The tumour density is not part of the risk (a
distractor), and the tumour's slice position is random: a model that looks only at the middle slices misses it.
"""

from __future__ import annotations

import csv
import datetime
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from MedDLLib.dicomwrite import write_series
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.io import atomic_path
from MedDLLib.phantoms import HU, PhantomGenerator, ellipsoid_mask, smooth_noise, survival_times, write_phantom_dataset

from .dataset import CLINICAL_CSV

COLLECTION = "LUNG-PHANTOM"
FOV_MM = 360.0
SLICE_MM = 10.0
PADDING_HU = -2000.0
TABLE_HU = 250.0
DIAMETER_RANGE_MM = (15.0, 55.0)
DIAMETER_MEAN_MM, DIAMETER_SD_MM = 35.0, 11.5
RISK_PER_SD = 2.0
RISK_NOISE_SD = 0.25


def tumour_risk(diameter_mm: np.ndarray | float) -> np.ndarray:
    """Noise-free log-hazard of a tumour diameter (mm): ``2 * (d - 35) / 11.5``."""
    return RISK_PER_SD * (np.asarray(diameter_mm, dtype=float) - DIAMETER_MEAN_MM) / DIAMETER_SD_MM


def _tube(shape: tuple[int, int, int], start_kji: np.ndarray, end_kji: np.ndarray, radius: tuple[float, float, float],
          steps: int = 12) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for t in np.linspace(0.0, 1.0, steps):
        out |= ellipsoid_mask(shape, tuple(start_kji + t * (end_kji - start_kji)), radius)
    return out


def chest_ct(rng: np.random.Generator, size: int = 64, n_slices: int = 24, *,
             tumour_diameter_mm: float | None = None) -> tuple[Volume, dict[str, np.ndarray], dict[str, Any]]:
    """One synthetic chest CT in HU with one lung tumour.

    Args:
        rng: random stream (shapes, positions, densities, noise).
        size: in-plane size (rows = columns); pixel spacing ``FOV_MM / size`` mm.
        n_slices: axial slices, ``SLICE_MM`` apart (24 x 10 mm covers the chest).
        tumour_diameter_mm: tumour diameter; random in ``DIAMETER_RANGE_MM`` if None.
    Returns:
        ``(volume, masks, tumour)``: HU volume ``[k, j, i]`` (float32, LPS axial, k = 0 inferior), boolean masks
        ``body``, ``right_lung``, ``left_lung``, ``airway``, ``tumour``, ``table``, and the tumour's properties
        (side, centre_kji, diameter_mm, density_hu).
    """
    shape = (n_slices, size, size)
    s = size / 64.0
    n = float(n_slices)
    px = FOV_MM / size
    jj = np.arange(size)[None, :, None]
    ii = np.arange(size)[None, None, :]
    cj, ci = size / 2.0 + rng.uniform(-1, 1) * s, size / 2.0 + rng.uniform(-1, 1) * s
    hu = np.full(shape, HU["air"], dtype=np.float32)
    # body: elliptic cylinder, fat layer, muscle, mediastinal soft tissue
    rj, ri = rng.uniform(16.5, 18.5) * s, rng.uniform(25.0, 27.5) * s
    body = np.broadcast_to(((jj - cj) / rj) ** 2 + ((ii - ci) / ri) ** 2 <= 1.0, shape).copy()
    inner = np.broadcast_to(((jj - cj) / (rj - 1.5 * s)) ** 2 + ((ii - ci) / (ri - 1.5 * s)) ** 2 <= 1.0, shape)
    core = np.broadcast_to(((jj - cj) / (rj - 3.0 * s)) ** 2 + ((ii - ci) / (ri - 3.0 * s)) ** 2 <= 1.0, shape)
    hu[body] = HU["fat"]
    hu[inner] = HU["muscle"]
    hu[core] = HU["soft_tissue"]
    # spine (posterior midline, whole length)
    spine = np.broadcast_to(((jj - (cj + rj - 6.0 * s)) / (3.2 * s)) ** 2 + ((ii - ci) / (3.2 * s)) ** 2 <= 1.0, shape)
    hu[spine] = 700.0
    # lungs
    lung_k = n * rng.uniform(0.52, 0.58)
    lung_r = (n * rng.uniform(0.36, 0.42), rng.uniform(11.5, 13.0) * s, rng.uniform(8.0, 9.0) * s)
    masks: dict[str, np.ndarray] = {}
    for name, side in (("right_lung", -1.0), ("left_lung", 1.0)):  # patient left = higher i (LPS x)
        centre = (lung_k, cj - 0.5 * s, ci + side * 11.5 * s)
        masks[name] = ellipsoid_mask(shape, centre, lung_r) & core
    heart = ellipsoid_mask(shape, (lung_k - 0.3 * lung_r[0], cj - 4.0 * s, ci + 3.0 * s), (0.3 * n, 6.5 * s, 7.5 * s))
    for name in ("right_lung", "left_lung"):
        masks[name] &= ~heart
    lungs = masks["right_lung"] | masks["left_lung"]
    texture = smooth_noise(shape, 1.0, rng)
    hu[lungs] = HU["lung"] + 25.0 * texture[lungs]
    hu[heart & core] = 40.0
    # airways: trachea from the top down to the carina, main bronchi into each lung
    carina = np.array([lung_k + 0.25 * lung_r[0], cj - 3.0 * s, ci])
    top = np.array([n + 1.0, cj - 3.5 * s, ci])
    airway = _tube(shape, top, carina, (1.0, 1.4 * s, 1.4 * s), steps=2 * n_slices)
    for side in (-1.0, 1.0):
        end = np.array([lung_k + 0.05 * lung_r[0], cj - 1.0 * s, ci + side * 8.0 * s])
        airway |= _tube(shape, carina, end, (0.8, 1.0 * s, 1.0 * s))
    hu[airway] = HU["air"]
    # small vessels in the lungs (solid components the tumour candidate must not be confused with)
    for _ in range(int(rng.integers(4, 9))):
        name = "right_lung" if rng.random() < 0.5 else "left_lung"
        k, j, i = np.argwhere(masks[name])[rng.integers(int(masks[name].sum()))]
        blob = ellipsoid_mask(shape, (k, j, i), (0.5, 0.6 * s, 0.6 * s)) & lungs
        hu[blob] = 40.0
    # the tumour, fully inside one lung
    side = "right" if rng.random() < 0.5 else "left"
    lung = masks[f"{side}_lung"]
    diameter = float(tumour_diameter_mm if tumour_diameter_mm is not None else rng.uniform(*DIAMETER_RANGE_MM))
    radius = (diameter / 2.0 / SLICE_MM, diameter / 2.0 / px, diameter / 2.0 / px)
    from scipy.ndimage import distance_transform_edt

    aspect = rng.uniform(0.85, 1.15, size=3)
    depth_mm = distance_transform_edt(lung, sampling=(SLICE_MM, px, px))
    inside = depth_mm > diameter / 2.0 * aspect.max() + px
    candidates = np.argwhere(inside) if inside.any() else np.argwhere(lung)
    centre = candidates[rng.integers(len(candidates))].astype(float)
    tumour = ellipsoid_mask(shape, tuple(centre), tuple(r * a for r, a in zip(radius, aspect))) & lung
    density = float(rng.uniform(0.0, 60.0))
    hu[tumour] = density + 8.0 * texture[tumour]
    # noise, the table and the padding outside the circular field of view
    hu[body] += 12.0 * rng.standard_normal(int(body.sum())).astype(np.float32)
    table_j = cj + rj + 1.8 * s
    table = np.broadcast_to((jj >= table_j) & (jj <= table_j + 1.5 * s + 0.3 * ((ii - ci) / s / 8.0) ** 2)
                            & (np.abs(ii - ci) <= 22.0 * s), shape).copy()
    table &= ~body
    hu[table] = TABLE_HU
    fov = np.broadcast_to((jj - size / 2.0 + 0.5) ** 2 + (ii - size / 2.0 + 0.5) ** 2 <= (size / 2.0) ** 2, shape)
    hu[~fov] = PADDING_HU
    table &= fov
    hu = np.clip(hu, -2000.0, 3000.0).astype(np.float32)
    masks.update(body=body, airway=airway & body, tumour=tumour, table=table)
    origin = (-px * (size - 1) / 2.0, -px * (size - 1) / 2.0 - 20.0, -SLICE_MM * (n_slices - 1) / 2.0)
    geometry = Geometry((px, px, SLICE_MM), origin)
    info = {"side": side, "centre_kji": centre.tolist(), "diameter_mm": diameter, "density_hu": density,
            "tumour_voxels": int(tumour.sum())}
    return Volume(hu, geometry, {"modality": "CT", "units": "HU"}), masks, info


#: Smallest phantom (pixels in-plane, slices): what :func:`LungSurvivalLib.logic.check_chest_ct` reads.
MIN_SIZE = 16
MIN_SLICES = 2


class LungPhantomGenerator(PhantomGenerator):
    """Writes chest CT phantoms in a TCIA download layout (see the module docstring).

    Raises:
        InputError: ``size`` below :data:`MIN_SIZE` pixels or ``n_slices`` below :data:`MIN_SLICES` (checked
            here, before anything is written).
    """

    task = "lung"

    def __init__(self, size: int = 64, n_slices: int = 24) -> None:
        if int(size) < MIN_SIZE or int(n_slices) < MIN_SLICES:
            raise InputError(f"lung phantoms need size >= {MIN_SIZE} pixels and >= {MIN_SLICES} slices (the "
                             f"smallest chest CT the lung task reads), got size {size}, {n_slices} slices")
        self.size, self.n_slices = int(size), int(n_slices)

    def write_case(self, out: Path, index: int, rng: np.random.Generator) -> dict[str, Any]:
        volume, _, info = chest_ct(rng, self.size, self.n_slices)
        risk = float(tumour_risk(info["diameter_mm"]) + RISK_NOISE_SD * rng.standard_normal())
        patient = f"LUNGPH-{index:03d}"
        date = datetime.date(2008, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 3000)))
        study = f"{date:%m-%d-%Y}-NA-CT CHEST WO CONTRAST-{int(rng.integers(10000, 99999))}"
        series_number = int(rng.integers(1, 6))
        series = f"{series_number}.000000-ThoraxRoutine 5.0 B40f-{int(rng.integers(10000, 99999))}"
        folder = out / COLLECTION / patient / study / series
        staging = folder.parent / f".{series}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        paths = write_series(staging, volume, rescale_intercept=-1024.0, pixel_representation=1,
                             file_names="instance", patient_id=patient, patient_name=f"Phantom^{patient}",
                             study_description="CT CHEST WO CONTRAST", series_description="ThoraxRoutine 5.0 B40f",
                             series_number=series_number, window=[(-600.0, 1500.0), (40.0, 400.0)], seed=index)
        for n, path in enumerate(sorted(paths), start=1):
            os.replace(path, staging / f"1-{n:03d}.dcm")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
        return {"case": index, "patient_id": patient, "folder": str(folder.relative_to(out)), "risk": risk, **info}

    def write_index(self, out: Path, truths: list[dict[str, Any]], rng: np.random.Generator) -> None:
        time, event = survival_times(np.array([t["risk"] for t in truths]), rng)
        with atomic_path(out / CLINICAL_CSV) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["PatientID", "age", "gender", "Survival.time", "deadstatus.event"])
            for truth, t, e in zip(truths, time, event):
                truth["time_days"], truth["event"] = float(t), int(e)
                writer.writerow([truth["patient_id"], int(rng.integers(45, 85)), rng.choice(["male", "female"]),
                                 f"{t:.1f}", int(e)])


def write_dataset(out: str | os.PathLike, cases: int, seed: int = 0, *, size: int = 64,
                  n_slices: int = 24) -> dict[str, Any]:
    """Write ``cases`` chest CT phantoms with survival in a TCIA layout into ``out``; return the manifest."""
    return write_phantom_dataset(LungPhantomGenerator(size, n_slices), out, cases, seed)
