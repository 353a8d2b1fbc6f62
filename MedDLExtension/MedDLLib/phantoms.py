"""Synthetic studies ("phantoms") with a learnable planted signal, shared by the four task modules.

The real datasets cannot be redistributed; every pipeline is therefore trained, evaluated and tested on
phantoms written in the exact on-disk layout of the real dataset. This module holds what the tasks share:

* shape primitives on voxel grids (:func:`ellipsoid_mask`, :func:`smooth_noise`),
* re-indexing of a volume as another acquisition plane without interpolation (:func:`as_plane`), so series
  come sagittal or coronal as in real data,
* survival times with censoring from a risk (:func:`survival_times`),
* :class:`PhantomGenerator`, the base each task subclasses (anatomy, labels, layout), and
  :func:`write_phantom_dataset`, which seeds each case reproducibly and writes a ``phantom.json`` manifest
  with the ground truth.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import InputError
from .geometry import Geometry, Volume
from .io import atomic_write_json, to_jsonable

Plane = Literal["axial", "sagittal", "coronal"]

#: Typical CT values (HU) used by the CT phantoms.
HU = {"air": -1000.0, "lung": -850.0, "fat": -100.0, "water": 0.0, "csf": 8.0, "white_matter": 28.0,
      "grey_matter": 38.0, "soft_tissue": 45.0, "muscle": 50.0, "blood": 70.0, "bone": 1000.0}


def ellipsoid_mask(
    shape_kji: tuple[int, int, int],
    centre_kji: tuple[float, float, float],
    radii_kji: tuple[float, float, float],
) -> np.ndarray:
    """Boolean ellipsoid on a voxel grid: ``sum(((idx - centre) / radius)^2) <= 1`` (radii in voxels)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape_kji)]
    dist = sum(((g - c) / max(r, 1e-6)) ** 2 for g, c, r in zip(grids, centre_kji, radii_kji))
    return np.asarray(dist <= 1.0)


def smooth_noise(shape: tuple[int, ...], sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit standard deviation (float32)."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma=sigma_vox)
    std = field.std()
    return ((field - field.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


# New (i, j, k) axes for each plane, as (old axis index in ijk order, flipped?). From an axial volume with
# LPS-aligned directions: sagittal slices step along x (R->L), rows go S->I, columns A->P; coronal slices step
# along y (A->P), rows S->I, columns R->L. This is how scanners store such series.
_PLANES: dict[str, tuple[tuple[int, bool], ...]] = {
    "axial": ((0, False), (1, False), (2, False)),
    "sagittal": ((1, False), (2, True), (0, False)),
    "coronal": ((0, False), (2, True), (1, False)),
}


def as_plane(volume: Volume, plane: Plane) -> Volume:
    """The same image (same voxel values at the same LPS positions) stored as a ``plane`` acquisition.

    Pure re-indexing (transpose and flips, no interpolation) of an axial volume, so a reader that sorts and
    orients correctly recovers the original exactly.
    """
    spec = _PLANES[plane]
    ijk = volume.array.transpose(2, 1, 0)  # [i, j, k]
    new = ijk.transpose([old for old, _ in spec])
    for axis, (_, flip) in enumerate(spec):
        if flip:
            new = np.flip(new, axis=axis)
    g = volume.geometry
    size_ijk = volume.array.shape[::-1]
    first_old = np.array([size_ijk[old] - 1 if flip else 0 for old, flip in spec], dtype=float)
    first_old_ijk = np.zeros(3)
    for (old, _), value in zip(spec, first_old):
        first_old_ijk[old] = value
    origin = g.ijk_to_lps() @ np.r_[first_old_ijk, 1.0]
    direction = np.stack([g.direction[:, old] * (-1.0 if flip else 1.0) for old, flip in spec], axis=1)
    spacing = tuple(g.spacing_mm[old] for old, _ in spec)
    geometry = Geometry(spacing, tuple(origin[:3]), direction)
    return Volume(np.ascontiguousarray(new.transpose(2, 1, 0)), geometry, dict(volume.metadata))


def survival_times(
    risk: np.ndarray,
    rng: np.random.Generator,
    *,
    median_days: float = 700.0,
    censor_fraction: float = 0.3,
    max_follow_up_days: float = 3000.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exponential survival times whose hazard grows as ``exp(risk)``, with random censoring.

    Args:
        risk: per-case log-hazard ratio (higher = shorter survival).
        median_days: median survival at risk 0.
        censor_fraction: about this fraction of cases is censored (uniform censoring times).
    Returns:
        (time_days, event) where event is 1 for an observed death and 0 for censoring.
    """
    risk = np.asarray(risk, dtype=float)
    base_rate = np.log(2.0) / median_days
    death = rng.exponential(1.0 / (base_rate * np.exp(risk)))
    censor = np.where(rng.random(risk.shape) < censor_fraction,
                      rng.uniform(30.0, max_follow_up_days, risk.shape), np.inf)
    censor = np.minimum(censor, max_follow_up_days)
    time = np.maximum(np.minimum(death, censor), 1.0)
    return np.round(time, 1), (death <= censor).astype(int)


class PhantomGenerator:
    """Base of a task's phantom generator.

    Subclasses set :attr:`task` and implement :meth:`write_case` (write one study in the real dataset's
    layout below ``out`` and return its ground truth as JSON-ready data) and, where the layout has one,
    :meth:`write_index` (a labels CSV or clinical table for all cases). :func:`write_phantom_dataset` drives
    them with one reproducible random stream per case.
    """

    task: str = ""

    def write_case(self, out: Path, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Write case ``index`` below ``out``; return its ground truth (case id, labels, lesion info...)."""
        raise NotImplementedError

    def write_index(self, out: Path, truths: list[dict[str, Any]], rng: np.random.Generator) -> None:
        """Write dataset-level files (labels CSV, clinical table) from all cases' ground truth."""


def write_phantom_dataset(generator: PhantomGenerator, out: str | os.PathLike, cases: int, seed: int) -> dict[str, Any]:
    """Write ``cases`` phantom studies with ``generator`` into ``out`` and a ``phantom.json`` manifest.

    Case ``i`` uses its own random stream derived from (seed, i), so a dataset is reproducible and a case
    does not change when more cases are requested.
    """
    if cases < 1:
        raise InputError(f"cases must be >= 1, got {cases}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(seed).spawn(cases + 1)
    truths = [generator.write_case(out, i, np.random.default_rng(seeds[i])) for i in range(cases)]
    generator.write_index(out, truths, np.random.default_rng(seeds[-1]))
    manifest = to_jsonable({"task": generator.task, "cases": cases, "seed": seed, "synthetic": True, "truth": truths})
    atomic_write_json(out / "phantom.json", manifest)
    return manifest
