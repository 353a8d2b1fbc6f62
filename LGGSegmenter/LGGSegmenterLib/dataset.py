"""The kaggle_3m (TCGA-LGG, Buda et al. 2019) dataset as it lies on disk.

Layout::

    kaggle_3m/
      data.csv                                    one row per patient, key column ``Patient`` (TCGA_XX_XXXX)
      TCGA_CS_4941_19960909/                      one folder per patient study: <patient id>_<YYYYMMDD>
        TCGA_CS_4941_19960909_1.tif               256x256 RGB slice n: R = pre-contrast, G = FLAIR, B = post-contrast
        TCGA_CS_4941_19960909_1_mask.tif          0/255 tumour mask of slice n
        ...                                       slices ordered by n *numerically* (1, 2, ..., 10, 11, ...)

The .tif files carry no spacing or position, so a case is placed on a nominal axial grid
(:data:`NOMINAL_SPACING_MM`, LPS-aligned: columns go patient right -> left, rows anterior -> posterior, slices
in n order inferior -> superior). Features in physical units are therefore in nominal millimetres for .tif
input and in true millimetres for DICOM/NRRD input (which carries its geometry).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry

#: Channel order of the kaggle_3m RGB slices.
CHANNELS: tuple[str, str, str] = ("pre-contrast", "FLAIR", "post-contrast")
#: (i, j, k) spacing in mm assumed for .tif slices (they carry none): in-plane about 1 mm, 3 mm slices.
NOMINAL_SPACING_MM: tuple[float, float, float] = (1.0, 1.0, 3.0)
DATA_CSV = "data.csv"
_CASE_RE = re.compile(r"^(TCGA_[A-Za-z0-9]{2}_[A-Za-z0-9]{4})_(\d{8})$")


@dataclasses.dataclass(frozen=True)
class LGGCase:
    """One patient study of the kaggle_3m layout.

    Attributes:
        case_id: folder name, ``TCGA_XX_XXXX_YYYYMMDD``.
        patient_id: ``TCGA_XX_XXXX`` (the ``Patient`` key of data.csv).
        folder: the study folder.
        slices: slice images ordered by their number n.
        masks: the matching ``_mask.tif`` files (``None`` where a slice has no mask file).
    """

    case_id: str
    patient_id: str
    folder: Path
    slices: tuple[Path, ...]
    masks: tuple[Path | None, ...]

    @property
    def has_masks(self) -> bool:
        return all(m is not None for m in self.masks)


def patient_id_of(case_id: str) -> str:
    """``TCGA_CS_4941_19960909`` -> ``TCGA_CS_4941`` (the data.csv key).

    Raises:
        InputError: the name is not ``TCGA_XX_XXXX_YYYYMMDD``.
    """
    match = _CASE_RE.match(case_id)
    if not match:
        raise InputError(f"{case_id!r}: not a kaggle_3m study folder name (expected TCGA_XX_XXXX_YYYYMMDD)")
    return match.group(1)


def _slice_number(path: Path, case_id: str) -> int:
    stem = path.stem
    prefix = case_id + "_"
    number = stem[len(prefix):] if stem.startswith(prefix) else ""
    if not number.isdigit():
        raise InputError(f"{path}: slice file name must be {case_id}_<n>.tif with an integer n")
    return int(number)


def read_case_folder(folder: str | Path) -> LGGCase:
    """Describe one study folder (``<case_id>/<case_id>_<n>.tif`` + ``_mask.tif``), slices sorted by n.

    Raises:
        InputError: wrong folder name, no slices, or a slice name without a number.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (expected a kaggle_3m study folder of .tif slices)")
    case_id = folder.name
    patient = patient_id_of(case_id)
    images = [p for p in folder.glob("*.tif") if not p.stem.endswith("_mask")]
    if not images:
        raise InputError(f"{folder}: no slice files {case_id}_<n>.tif")
    images.sort(key=lambda p: _slice_number(p, case_id))
    masks = []
    for image in images:
        mask = image.with_name(image.stem + "_mask.tif")
        masks.append(mask if mask.is_file() else None)
    return LGGCase(case_id, patient, folder, tuple(images), tuple(masks))


def dataset_root(root: str | Path) -> Path:
    """``root`` itself or its ``kaggle_3m`` sub-folder, whichever holds the study folders."""
    root = Path(root)
    if (root / "kaggle_3m").is_dir():
        return root / "kaggle_3m"
    return root


def scan_dataset(root: str | Path) -> list[LGGCase]:
    """All study folders below ``root`` (or ``root/kaggle_3m``), sorted by case id.

    Raises:
        InputError: no folder named ``TCGA_XX_XXXX_YYYYMMDD`` is found.
    """
    root = dataset_root(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    cases = [read_case_folder(p) for p in sorted(root.iterdir()) if p.is_dir() and _CASE_RE.match(p.name)]
    if not cases:
        raise InputError(f"{root}: no kaggle_3m study folders (TCGA_XX_XXXX_YYYYMMDD) found")
    return cases


def _read_tif(path: Path) -> np.ndarray:
    import tifffile

    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises several types for broken files
        raise InputError(f"{path}: cannot read TIFF: {type(exc).__name__}: {exc}") from exc


def read_slices(case: LGGCase) -> np.ndarray:
    """The study's image as ``(K, C=3, H, W)`` uint8 (channels :data:`CHANNELS`), slices in n order.

    Raises:
        InputError: a slice is not an RGB image or its size differs from the first slice's.
    """
    out = []
    for path in case.slices:
        img = _read_tif(path)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise InputError(f"{path}: expected an RGB slice (H, W, 3: pre-contrast/FLAIR/post-contrast), "
                             f"got shape {img.shape}")
        if out and img.shape != out[0].shape:
            raise InputError(f"{path}: slice shape {img.shape} differs from the first slice's {out[0].shape}")
        out.append(img)
    return np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2)).astype(np.uint8)


def read_masks(case: LGGCase, shape_hw: tuple[int, int] | None = None) -> np.ndarray:
    """The tumour mask ``(K, H, W)`` bool (mask pixel > 127 of the 0/255 files).

    Raises:
        InputError: a slice has no ``_mask.tif`` file, or a mask is not a 2D image of ``shape_hw``.
    """
    out = []
    for image, path in zip(case.slices, case.masks):
        if path is None:
            raise InputError(f"{image}: no mask file {image.stem}_mask.tif beside it")
        m = _read_tif(path)
        if m.ndim == 3:  # some writers store masks as RGB
            m = m[..., 0]
        if m.ndim != 2 or (shape_hw is not None and m.shape != tuple(shape_hw)):
            raise InputError(f"{path}: expected a {shape_hw or '2D'} mask, got shape {m.shape}")
        out.append(m > 127)
    return np.stack(out)


def nominal_geometry(shape_kji: tuple[int, int, int]) -> Geometry:
    """The nominal axial LPS-aligned grid of a .tif study (see the module docstring), origin at voxel 0."""
    del shape_kji  # the grid does not depend on the size; kept for a future centred origin
    return Geometry(NOMINAL_SPACING_MM, (0.0, 0.0, 0.0), np.eye(3))


def read_clinical(root: str | Path) -> "pandas.DataFrame":  # noqa: F821
    """``data.csv`` of the dataset, indexed by ``Patient`` (TCGA_XX_XXXX).

    Raises:
        InputError: no data.csv, or it has no ``Patient`` column.
    """
    import pandas as pd

    path = dataset_root(root) / DATA_CSV
    if not path.is_file():
        path = Path(root) / DATA_CSV
    if not path.is_file():
        raise InputError(f"{dataset_root(root)}: no {DATA_CSV} (the kaggle_3m clinical/genomic table)")
    table = pd.read_csv(path)
    if "Patient" not in table.columns:
        raise InputError(f"{path}: no 'Patient' column (expected TCGA_XX_XXXX patient ids)")
    return table.set_index("Patient")
