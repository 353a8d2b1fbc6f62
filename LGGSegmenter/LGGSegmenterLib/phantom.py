"""Synthetic brain MRI studies with a planted lower-grade glioma, in the kaggle_3m layout (and as DICOM).

Each case is a head (bright skull rim in pre-contrast, brain with smooth texture, dark ventricles in FLAIR)
with one irregular ellipsoidal tumour that is hyperintense in FLAIR, slightly hypointense pre-contrast and
partly enhancing post-contrast. It is written as ``<case_id>/<case_id>_<n>.tif`` RGB slices with
``_mask.tif`` masks; ``data.csv`` has genomic-like cluster columns (with missing values, as in the real table),
age/gender and ``death01``, which depends on the tumour volume (larger tumour, more deaths) so the feature
model has a signal to find. With ``dicom=True`` the same voxels are also written as three MR DICOM series
(pre-contrast, FLAIR, post-contrast) in ``dicom/<case_id>/`` on the nominal grid for the Slicer path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from MedDLLib.errors import InputError
from MedDLLib.geometry import Volume
from MedDLLib.phantoms import PhantomGenerator, ellipsoid_mask, smooth_noise, write_phantom_dataset

from .dataset import CHANNELS, DATA_CSV, nominal_geometry

#: Smallest phantom: slice side in pixels and slices per study.
MIN_SIZE = 32
MIN_SLICES = 6
CLUSTER_COLUMNS = ("RNASeqCluster", "MethylationCluster", "miRNACluster", "CNCluster", "RPPACluster",
                   "OncosignCluster", "COCCluster")


class LGGPhantomGenerator(PhantomGenerator):
    """Writes kaggle_3m-style phantom studies.

    Args:
        size_px: slice height and width in pixels (the real data: 256; at least :data:`MIN_SIZE`).
        n_slices: slices per study (real: 20 to 88; at least :data:`MIN_SLICES`).
        dicom: also write each study as three DICOM series under ``dicom/<case_id>/``.
    Raises:
        InputError: ``size_px`` or ``n_slices`` too small for the head, brain and tumour to be drawn (checked
            here, before anything is written).
    """

    task = "lgg"

    def __init__(self, size_px: int = 64, n_slices: int = 16, dicom: bool = False) -> None:
        if size_px < MIN_SIZE or n_slices < MIN_SLICES:
            raise InputError(f"LGG phantoms need size >= {MIN_SIZE} pixels and >= {MIN_SLICES} slices (room for "
                             f"head, brain and tumour), got size {size_px}, {n_slices} slices")
        self.size_px = size_px
        self.n_slices = n_slices
        self.dicom = dicom

    def case_id(self, index: int) -> str:
        return f"TCGA_PH_{index:04d}_{19950101 + (index % 12) * 100 + index % 28:08d}"

    def make_case(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One study: image ``(K, 3, H, W)`` uint8 and tumour mask ``(K, H, W)`` bool."""
        k, n = self.n_slices, self.size_px
        shape = (k, n, n)
        centre = ((k - 1) / 2 + rng.uniform(-0.5, 0.5), n / 2 + rng.uniform(-2, 2), n / 2 + rng.uniform(-2, 2))
        head_r = (k * 0.62, n * rng.uniform(0.40, 0.45), n * rng.uniform(0.34, 0.38))
        head = ellipsoid_mask(shape, centre, head_r)
        brain = ellipsoid_mask(shape, centre, (head_r[0] - 0.8, head_r[1] - 3, head_r[2] - 3))
        ventricles = ellipsoid_mask(shape, centre, (k * 0.15, n * 0.1, n * 0.05))
        # tumour: an ellipsoid inside the brain, its margin roughened with smooth noise
        radii = (rng.uniform(1.5, 3.5), rng.uniform(0.07, 0.16) * n, rng.uniform(0.07, 0.16) * n)
        offset = np.array([rng.uniform(-0.25, 0.25) * k, rng.uniform(-0.2, 0.2) * n, rng.uniform(-0.18, 0.18) * n])
        t_centre = tuple(np.array(centre) + offset)
        grids = np.ogrid[tuple(slice(0, s) for s in shape)]
        dist = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, t_centre, radii)))
        rough = smooth_noise(shape, 2.0, rng) * 0.12
        tumour = (dist + rough <= 1.0) & brain
        texture = smooth_noise(shape, 1.5, rng)
        img = np.zeros((k, 3, n, n), dtype=np.float32)
        base = {"pre-contrast": 95.0, "FLAIR": 85.0, "post-contrast": 100.0}
        for c, name in enumerate(CHANNELS):
            ch = np.where(head, 150.0 if name == "pre-contrast" else 60.0, 0.0)  # scalp/skull rim
            ch = np.where(brain, base[name] + 8.0 * texture, ch)
            ch = np.where(brain & ventricles, {"pre-contrast": 45.0, "FLAIR": 40.0, "post-contrast": 45.0}[name], ch)
            img[:, c] = ch
        enhancing = tumour & (smooth_noise(shape, 1.0, rng) > 0.4)
        img[:, 0][tumour] -= 15.0
        img[:, 1][tumour] += rng.uniform(50.0, 75.0) + 6.0 * texture[tumour]
        img[:, 2][enhancing] += 45.0
        img += rng.normal(0.0, 4.0, img.shape).astype(np.float32) * head[:, None]
        return np.clip(np.round(img), 0, 255).astype(np.uint8), tumour

    def write_case(self, out: Path, index: int, rng: np.random.Generator) -> dict[str, Any]:
        import tifffile

        case_id = self.case_id(index)
        image, mask = self.make_case(rng)
        folder = out / "kaggle_3m" / case_id
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(image.shape[0]):  # slices numbered from 1, as in the real data
            tifffile.imwrite(folder / f"{case_id}_{k + 1}.tif", image[k].transpose(1, 2, 0))
            tifffile.imwrite(folder / f"{case_id}_{k + 1}_mask.tif", mask[k].astype(np.uint8) * 255)
        geometry = nominal_geometry(mask.shape)
        truth = {
            "case_id": case_id,
            "patient_id": case_id.rsplit("_", 1)[0],
            "tumour_voxels": int(mask.sum()),
            "tumour_volume_ml": float(mask.sum() * geometry.voxel_volume_ml()),
            "tumour_slices": int(mask.any(axis=(1, 2)).sum()),
        }
        if self.dicom:
            from MedDLLib.dicomwrite import write_series

            series_dir = out / "dicom" / case_id
            for number, name in enumerate(CHANNELS, start=1):
                write_series(series_dir, Volume(image[:, number - 1].astype(np.float32), geometry, {}),
                             modality="MR", rescale_slope=None, rescale_intercept=None, file_names="instance",
                             patient_id=truth["patient_id"], series_description=name, series_number=number,
                             seed=index)
            truth["dicom"] = str(series_dir.relative_to(out))
        return truth

    def write_index(self, out: Path, truths: list[dict[str, Any]], rng: np.random.Generator) -> None:
        import pandas as pd

        volume = np.array([t["tumour_volume_ml"] for t in truths])
        z = (volume - volume.mean()) / (volume.std() or 1.0)
        p_death = 1.0 / (1.0 + np.exp(-2.5 * z))
        death = (rng.random(len(truths)) < p_death).astype(int)
        if len(truths) >= 4 and death.min() == death.max():  # both classes, so AUROC is defined
            death[np.argsort(z)[: len(truths) // 2]] = 0
            death[np.argsort(z)[len(truths) // 2:]] = 1
        rows = []
        for t, d in zip(truths, death):
            row: dict[str, Any] = {"Patient": t["patient_id"]}
            for col in CLUSTER_COLUMNS:  # genomic-like, unrelated to outcome, about 15 % missing
                row[col] = float(rng.integers(1, 5)) if rng.random() > 0.15 else np.nan
            row["histological_type"] = float(rng.integers(1, 4))
            row["neoplasm_histologic_grade"] = float(rng.integers(1, 3))
            row["tumor_tissue_site"] = 1.0
            row["laterality"] = float(rng.integers(1, 4))
            row["tumor_location"] = float(rng.integers(1, 7))
            row["gender"] = float(rng.integers(1, 3))
            row["age_at_initial_pathologic"] = float(np.round(rng.normal(46, 13))) if rng.random() > 0.05 else np.nan
            row["race"] = float(rng.integers(1, 4))
            row["ethnicity"] = float(rng.integers(1, 3)) if rng.random() > 0.2 else np.nan
            row["death01"] = int(d)
            t["death01"] = int(d)
            rows.append(row)
        pd.DataFrame(rows).to_csv(out / "kaggle_3m" / DATA_CSV, index=False)


def write_dataset(out: str | Path, cases: int, seed: int = 0, *, size: int = 64, n_slices: int = 16,
                       dicom: bool = False) -> dict[str, Any]:
    """Write ``cases`` phantom studies into ``out/kaggle_3m`` (and ``out/dicom`` when ``dicom``); return the
    manifest."""
    generator = LGGPhantomGenerator(size_px=size, n_slices=n_slices, dicom=dicom)
    return write_phantom_dataset(generator, out, cases, seed)
