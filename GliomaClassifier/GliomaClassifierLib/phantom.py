"""Synthetic multi-sequence brain MRI studies with a glioma, written in the RSNA-MICCAI 2021 layout.

Layout written by :func:`write_dataset` (as the Kaggle "RSNA-MICCAI Brain Tumor Radiogenomic Classification" data)::

    OUT/train/<5-digit BraTS21ID>/{FLAIR,T1w,T1wCE,T2w}/Image-<N>.dcm   one MR slice per file
    OUT/train_labels.csv                                                BraTS21ID,MGMT_value
    OUT/phantom.json                                                    ground truth per case

Traps of the real data are reproduced: the file number ``N`` (= InstanceNumber) is unrelated to the slice
position (a reader must sort by ImagePositionPatient along the normal), and each series is stored in a random
plane (axial, sagittal or coronal; :func:`MedDLLib.phantoms.as_plane`), so a reader must reorient.

Anatomy (:func:`brain_mri`): scalp fat, skull, CSF, grey-matter shell, white-matter core, lateral ventricles and a
glioma in one hemisphere: a necrotic core, an enhancing rim and surrounding oedema, with the contrast of each
tissue in T1w, T1wCE (the rim enhances), T2w and FLAIR (:data:`TISSUE`). Per case: scanner gain, a smooth bias
field, noise, tumour size, position and oedema extent vary.

The planted label-linked signal (:func:`enhancement`): the enhancement of the rim in T1wCE is
``1 + e`` times its nominal value with ``e = signal * DELTA * (label - 1/2) + SIGMA * N(0, 1)``. ``signal`` in
[0, 1] sets its strength (0 = no link to the label). The best any classifier can do from this feature is the
AUROC of two normal distributions ``signal * DELTA`` apart with standard deviation ``SIGMA``:
:func:`achievable_auroc` (0.97 at ``signal = 1``, 0.5 at 0). Only T1wCE carries it; the other sequences are
label-free context.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from MedDLLib.dicomwrite import write_series
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.io import atomic_path
from MedDLLib.phantoms import PhantomGenerator, as_plane, ellipsoid_mask, smooth_noise, write_phantom_dataset

from .dataset import FLAGGED_IDS, IMAGE_FOLDER, LABELS_CSV, SEQUENCES

#: Nominal MR signal (arbitrary units) of each tissue in each sequence.
TISSUE: dict[str, dict[str, float]] = {
    #          fat     skull  csf     grey   white  necrosis rim     oedema
    "T1w":   {"fat": 2000, "skull": 100, "csf": 250, "grey": 650, "white": 850, "necrosis": 350, "rim": 600,
              "oedema": 550},
    "T1wCE": {"fat": 2000, "skull": 100, "csf": 250, "grey": 650, "white": 850, "necrosis": 350, "rim": 1150,
              "oedema": 550},
    "T2w":   {"fat": 900, "skull": 100, "csf": 1500, "grey": 800, "white": 600, "necrosis": 1300, "rim": 900,
              "oedema": 1200},
    "FLAIR": {"fat": 800, "skull": 100, "csf": 150, "grey": 750, "white": 600, "necrosis": 900, "rim": 850,
              "oedema": 1100},
}
#: Difference of the mean relative rim enhancement between methylated and unmethylated cases at ``signal=1``.
DELTA = 0.60
#: Case-to-case standard deviation of the relative rim enhancement (label-independent biology).
SIGMA = 0.22
#: In-plane field of view (mm) and head height covered by the slices (mm).
FOV_MM = 220.0
HEIGHT_MM = 150.0
PLANES = ("axial", "sagittal", "coronal")


def achievable_auroc(signal: float) -> float:
    """AUROC of the Bayes-optimal classifier of the planted feature: ``Phi(signal * DELTA / (SIGMA * sqrt 2))``."""
    z = float(signal) * DELTA / (SIGMA * math.sqrt(2.0))
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def enhancement(label: int, signal: float, rng: np.random.Generator) -> float:
    """Relative rim enhancement ``e`` of one case (see the module docstring), clipped to [-0.7, 0.4]."""
    e = float(signal) * DELTA * (int(label) - 0.5) + SIGMA * float(rng.standard_normal())
    return float(np.clip(e, -0.7, 0.4))


def brain_mri(
    rng: np.random.Generator,
    size: int = 64,
    n_slices: int = 32,
    label: int = 0,
    signal: float = 1.0,
) -> tuple[dict[str, Volume], dict[str, np.ndarray], float]:
    """One synthetic glioma study: the four sequences on one axial LPS grid.

    Args:
        rng: random stream (anatomy, lesion, gain, noise).
        size: in-plane size (rows = columns), spacing ``FOV_MM / size`` mm.
        n_slices: axial slices, spacing ``HEIGHT_MM / n_slices`` mm.
        label: MGMT promoter methylation (1) or not (0).
        signal: strength of the label-linked rim enhancement in [0, 1] (0 = none).
    Returns:
        ``(volumes, masks, e)``: one :class:`Volume` per sequence of :data:`SEQUENCES` (float32 ``[k, j, i]``
        MR units >= 0, same geometry), boolean masks ``brain``, ``tumour`` (core + rim), ``rim``, ``oedema``,
        ``lesion`` (tumour + oedema), and the case's relative enhancement ``e``.
    """
    if not 0.0 <= signal <= 1.0:
        raise ValueError(f"signal must be in [0, 1], got {signal}")
    shape = (int(n_slices), int(size), int(size))
    spacing = np.array([HEIGHT_MM / n_slices, FOV_MM / size, FOV_MM / size])  # k, j, i (mm)

    def vox(mm_kji) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.asarray(mm_kji, dtype=float) / spacing)

    centre = np.array([(n_slices - 1) / 2.0, (size - 1) / 2.0, (size - 1) / 2.0]) + np.array(vox(rng.uniform(-4, 4, 3)))
    head = np.array([82.0, 96.0, 78.0]) * rng.uniform(0.95, 1.05)
    layers = {}
    radii = head.copy()
    for name, thickness in (("head", 0.0), ("skull", 6.0), ("csf", 6.0), ("grey", 2.5)):
        radii = radii - thickness
        layers[name] = ellipsoid_mask(shape, tuple(centre), vox(radii))
    white = ellipsoid_mask(shape, tuple(centre), vox(radii - 5.0))
    tissue = np.full(shape, "", dtype=object)
    tissue[layers["head"]] = "fat"
    tissue[layers["skull"]] = "skull"
    tissue[layers["csf"]] = "csf"
    tissue[layers["grey"]] = "grey"
    tissue[white] = "white"
    brain = layers["grey"]
    ventricles = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        ventricles |= ellipsoid_mask(shape, tuple(centre + np.array(vox([8.0, -4.0, side * 9.0]))), vox([16, 30, 5]))
    tissue[ventricles & brain] = "csf"

    side = rng.choice([-1.0, 1.0])
    lesion_centre = centre + np.array(vox([rng.uniform(-10, 10), rng.uniform(-15, 15), side * rng.uniform(28, 36)]))
    r_tumour = rng.uniform(18.0, 24.0)
    r_oedema = r_tumour + rng.uniform(8.0, 14.0)
    rim_mm = rng.uniform(8.0, 11.0)
    tumour = ellipsoid_mask(shape, tuple(lesion_centre), vox([r_tumour * 0.9, r_tumour, r_tumour])) & brain
    core = ellipsoid_mask(shape, tuple(lesion_centre), vox([r_tumour * 0.9 - rim_mm, r_tumour - rim_mm,
                                                         r_tumour - rim_mm])) & brain
    oedema = ellipsoid_mask(shape, tuple(lesion_centre), vox([r_oedema * 0.8, r_oedema, r_oedema * 0.9])) & brain
    oedema &= ~tumour & ~(ventricles & brain)
    rim = tumour & ~core
    tissue[oedema] = "oedema"
    tissue[core] = "necrosis"
    tissue[rim] = "rim"

    e = enhancement(label, signal, rng)
    bias = 1.0 + 0.04 * smooth_noise(shape, 8.0, rng)
    volumes: dict[str, Volume] = {}
    g = Geometry(tuple(spacing[::-1]), (-(size - 1) / 2 * spacing[2], -(size - 1) / 2 * spacing[1], -60.0))
    for sequence in SEQUENCES:
        values = np.zeros(shape, dtype=np.float32)
        for name, value in TISSUE[sequence].items():
            if sequence == "T1wCE" and name == "rim":
                value = value * (1.0 + e)
            values[tissue == name] = value
        values[~layers["head"]] = 0.0
        texture = 1.0 + 0.03 * smooth_noise(shape, 1.0, rng)
        gain = rng.uniform(0.8, 1.25)
        noisy = values * texture * bias * gain + 20.0 * rng.standard_normal(shape).astype(np.float32)
        volumes[sequence] = Volume(np.clip(noisy, 0.0, None).astype(np.float32), g,
                                   {"modality": "MR", "series_description": sequence})
    masks = {"brain": brain, "tumour": tumour, "rim": rim, "oedema": oedema, "lesion": tumour | oedema}
    return volumes, masks, e


def case_ids(cases: int, include_flagged: bool = True) -> list[str]:
    """BraTS21IDs of the phantom cases: ``00000, 00001, ...``; with ``include_flagged`` (and >= 8 cases) the
    last three are the flagged ids of the real dataset (00109, 00123, 00709), so readers must exclude them."""
    ids = [f"{i:05d}" for i in range(cases)]
    if include_flagged and cases >= 8:
        ids[-3:] = list(FLAGGED_IDS)
    return ids


#: Smallest phantom (pixels in-plane, slices): every stored plane (axial, sagittal, coronal) must have slices of
#: at least 8 x 8 pixels, what :func:`GliomaClassifierLib.preprocess.check_mri` reads.
MIN_SIZE = 8
MIN_SLICES = 8


class GliomaPhantomGenerator(PhantomGenerator):
    """Writes glioma phantoms in the RSNA-MICCAI layout (see the module docstring).

    Raises:
        InputError: impossible parameters (checked here, before anything is written): fewer than 1 case, ``size``
            below :data:`MIN_SIZE` or ``n_slices`` below :data:`MIN_SLICES`, ``signal`` or ``positive_fraction``
            outside [0, 1], unknown or no sequences, plane weights that are negative or sum to 0.
    """

    task = "glioma"

    def __init__(self, cases: int, size: int = 64, n_slices: int = 32, signal: float = 1.0,
                 positive_fraction: float = 0.5, include_flagged: bool = True,
                 plane_weights: tuple[float, float, float] = (0.5, 0.25, 0.25),
                 sequences: tuple[str, ...] = SEQUENCES) -> None:
        unknown = set(sequences) - set(SEQUENCES)
        if unknown or not sequences:
            raise InputError(f"sequences must be some of {SEQUENCES}, got {sequences}")
        if int(cases) < 1:
            raise InputError(f"glioma phantoms: cases must be >= 1, got {cases}")
        if int(size) < MIN_SIZE or int(n_slices) < MIN_SLICES:
            raise InputError(f"glioma phantoms need size >= {MIN_SIZE} pixels and >= {MIN_SLICES} slices (the "
                             f"reader needs slices of >= 8 x 8 pixels in every plane), got size {size}, "
                             f"{n_slices} slices")
        for label, value in (("signal", signal), ("positive_fraction", positive_fraction)):
            if not 0.0 <= float(value) <= 1.0:
                raise InputError(f"glioma phantoms: {label} must be in [0, 1], got {value}")
        weights = np.asarray(plane_weights, dtype=float)
        if weights.shape != (3,) or (weights < 0).any() or not weights.sum() > 0:
            raise InputError(f"glioma phantoms: plane_weights must be 3 non-negative numbers with a positive sum "
                             f"(axial, sagittal, coronal), got {plane_weights}")
        self.sequences = tuple(s for s in SEQUENCES if s in sequences)
        self.ids = case_ids(cases, include_flagged)
        self.size, self.n_slices, self.signal = int(size), int(n_slices), float(signal)
        self.positive_fraction = float(positive_fraction)
        self.plane_weights = np.asarray(plane_weights, dtype=float) / float(np.sum(plane_weights))

    def write_case(self, out: Path, index: int, rng: np.random.Generator) -> dict[str, Any]:
        case_id = self.ids[index]
        label = int(rng.random() < self.positive_fraction)
        volumes, masks, e = brain_mri(rng, self.size, self.n_slices, label, self.signal)
        folder = out / IMAGE_FOLDER / case_id
        shutil.rmtree(folder, ignore_errors=True)
        staging = out / IMAGE_FOLDER / f".{case_id}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        planes = {}
        study_uid = pydicom.uid.generate_uid()
        frame = pydicom.uid.generate_uid()
        for number, sequence in enumerate(SEQUENCES, start=1):
            if sequence not in self.sequences:
                continue
            plane = str(rng.choice(PLANES, p=self.plane_weights))
            planes[sequence] = plane
            volume = as_plane(volumes[sequence], plane)
            top = float(volume.array.max())
            paths = write_series(staging / sequence, volume, modality="MR", rescale_slope=None,
                                 rescale_intercept=None, window=(top / 2.0, top), file_names="shuffled",
                                 patient_id=case_id, patient_name=f"BraTS21^{case_id}", study_uid=study_uid,
                                 frame_of_reference_uid=frame, series_description=sequence, series_number=number,
                                 seed=int(rng.integers(2**31)))
            for path in paths:  # Image-<InstanceNumber>.dcm as in the Kaggle data (numbers unrelated to position)
                number_ = int(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["InstanceNumber"])
                              .InstanceNumber)
                os.replace(path, path.with_name(f"Image-{number_}.dcm"))
        os.replace(staging, folder)
        return {"case": index, "BraTS21ID": case_id, "MGMT_value": label, "enhancement": e, "planes": planes,
                "tumour_voxels": int(masks["tumour"].sum()), "lesion_voxels": int(masks["lesion"].sum())}

    def write_index(self, out: Path, truths: list[dict[str, Any]], rng: np.random.Generator) -> None:
        with atomic_path(out / LABELS_CSV) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["BraTS21ID", "MGMT_value"])
            for truth in truths:
                writer.writerow([truth["BraTS21ID"], truth["MGMT_value"]])


def write_dataset(out: str | os.PathLike, cases: int, seed: int = 0, *, size: int = 64, n_slices: int = 32,
                  signal: float = 1.0, positive_fraction: float = 0.5, include_flagged: bool = True,
                  plane_weights: tuple[float, float, float] = (0.5, 0.25, 0.25),
                  sequences: tuple[str, ...] = SEQUENCES) -> dict[str, Any]:
    """Write ``cases`` phantom studies in the RSNA-MICCAI layout into ``out``; return the manifest.

    ``sequences`` limits the series written (all four by default; tests that train on T1wCE write only it).

    The manifest (``phantom.json``) also records ``signal`` and :func:`achievable_auroc` of it.
    """
    generator = GliomaPhantomGenerator(cases, size, n_slices, signal, positive_fraction, include_flagged,
                                       plane_weights, tuple(sequences))
    manifest = write_phantom_dataset(generator, out, cases, seed)
    manifest.update(signal=float(signal), achievable_auroc=achievable_auroc(signal), size=size, n_slices=n_slices)
    from MedDLLib.io import atomic_write_json

    atomic_write_json(Path(out) / "phantom.json", manifest)
    return manifest
