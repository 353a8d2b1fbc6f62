"""The RSNA-MICCAI 2021 Brain Tumor Radiogenomic Classification layout: one folder per case, one per sequence.

On disk::

    ROOT/train/<5-digit BraTS21ID>/{FLAIR,T1w,T1wCE,T2w}/Image-<N>.dcm
    ROOT/train_labels.csv                     BraTS21ID,MGMT_value   (ids may be written without leading zeros)

:func:`scan_dataset` lists the cases and their labels from the folder names and the CSV only (no pixel is read).
The three cases the competition organisers flagged as broken (:data:`FLAGGED_IDS`) are excluded by default.
Cases without a label, labels without a case, missing sequence folders and bad CSV rows are collected in
:attr:`GliomaDataset.problems`, never fatal.

:func:`read_sequence` reads one series with the one DICOM reader of MedDL (:func:`MedDLLib.dicom.read_dicom_folder`):
slices sorted by position along the slice normal (never by the ``Image-N`` number), geometry in LPS. A series may
be axial, sagittal or coronal; :func:`GliomaClassifierLib.preprocess.orient_axial` brings it to one orientation.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Iterable, Sequence

from MedDLLib.errors import InputError
from MedDLLib.geometry import Volume

#: The four sequences of every case, as the folder names of the Kaggle data.
SEQUENCES: tuple[str, ...] = ("FLAIR", "T1w", "T1wCE", "T2w")
#: Cases the organisers asked participants to exclude (broken series).
FLAGGED_IDS: tuple[str, ...] = ("00109", "00123", "00709")
IMAGE_FOLDER = "train"
LABELS_CSV = "train_labels.csv"


@dataclasses.dataclass(frozen=True)
class Case:
    """One case: its id, MGMT label (None when unlabelled) and the sequence folders present."""

    case_id: str
    label: int | None
    folders: dict[str, Path]

    def has(self, sequences: Iterable[str]) -> bool:
        return all(s in self.folders for s in sequences)


@dataclasses.dataclass
class GliomaDataset:
    """The cases found below a root and what was wrong on the way."""

    root: Path
    cases: list[Case]
    problems: list[str]
    excluded: list[str] = dataclasses.field(default_factory=list)

    @property
    def labels(self) -> list[int]:
        return [int(c.label) for c in self.cases if c.label is not None]


def normalise_id(text: str) -> str:
    """A BraTS21ID as the 5-digit folder name (``"109"`` -> ``"00109"``)."""
    text = str(text).strip()
    if not text.isdigit():
        raise ValueError(f"BraTS21ID {text!r} is not a number")
    return f"{int(text):05d}"


def read_labels_csv(path: str | os.PathLike) -> tuple[dict[str, int], list[str]]:
    """``train_labels.csv`` as ``{5-digit id: MGMT_value}`` plus the problems found (bad or duplicate rows)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: labels CSV not found (expected {LABELS_CSV} with columns BraTS21ID,MGMT_value)")
    labels: dict[str, int] = {}
    problems: list[str] = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["BraTS21ID", "MGMT_value"]:
            raise InputError(f"{path}: first row must be 'BraTS21ID,MGMT_value', got {','.join(header)!r}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                case_id, value = normalise_id(row[0]), int(row[1])
                if value not in (0, 1):
                    raise ValueError(f"MGMT_value {value} is not 0 or 1")
            except (ValueError, IndexError) as exc:
                problems.append(f"{path.name} line {line}: bad row {row!r} ({exc})")
                continue
            if case_id in labels and labels[case_id] != value:
                problems.append(f"{path.name} line {line}: case {case_id} repeated with another label; dropped")
                labels[case_id] = -1
                continue
            labels.setdefault(case_id, value)
    return {k: v for k, v in labels.items() if v >= 0}, problems


def scan_dataset(root: str | os.PathLike, *, exclude: Sequence[str] = FLAGGED_IDS,
                 require_labels: bool = True) -> GliomaDataset:
    """The cases of an RSNA-MICCAI folder (``ROOT/train/<id>/<sequence>/``) with their labels.

    Args:
        root: folder holding ``train/`` and ``train_labels.csv`` (or the ``train`` folder itself with the CSV
            beside it).
        exclude: case ids left out (default: the three flagged cases); ``()`` keeps everything.
        require_labels: refuse a folder without ``train_labels.csv`` (False: cases get ``label=None``).
    Raises:
        InputError: no case folder, no CSV (when required).
    """
    root = Path(root)
    images = root / IMAGE_FOLDER if (root / IMAGE_FOLDER).is_dir() else root
    csv_path = root / LABELS_CSV if (root / LABELS_CSV).is_file() else images.parent / LABELS_CSV
    if not images.is_dir():
        raise InputError(f"{root}: not a folder (expected the RSNA-MICCAI layout {IMAGE_FOLDER}/<id>/<sequence>/)")
    if csv_path.is_file() or require_labels:
        labels, problems = read_labels_csv(csv_path)
    else:
        labels, problems = {}, [f"{LABELS_CSV} not found: cases are unlabelled"]
    excluded_ids = {normalise_id(e) for e in exclude}
    cases: list[Case] = []
    excluded: list[str] = []
    seen: set[str] = set()
    missing_sequences: dict[tuple[str, ...], list[str]] = {}  # missing sequences -> case ids (one line each)
    for folder in sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            case_id = normalise_id(folder.name)
        except ValueError:
            problems.append(f"{folder.name}: not a BraTS21ID folder (5 digits); skipped")
            continue
        seen.add(case_id)
        if case_id in excluded_ids:
            excluded.append(case_id)
            continue
        folders = {s: folder / s for s in SEQUENCES if (folder / s).is_dir()}
        missing = [s for s in SEQUENCES if s not in folders]
        if missing:
            missing_sequences.setdefault(tuple(missing), []).append(case_id)
        label = labels.get(case_id)
        if label is None and require_labels:
            problems.append(f"case {case_id}: no label in {LABELS_CSV}; skipped")
            continue
        cases.append(Case(case_id, label, folders))
    for missing, ids in missing_sequences.items():
        more = ", ..." if len(ids) > 3 else ""
        which = f"case {ids[0]}" if len(ids) == 1 else f"{len(ids)} cases ({', '.join(ids[:3])}{more})"
        problems.append(f"{which}: no {', '.join(missing)} folder")
    orphans = sorted(set(labels) - seen)
    if orphans:
        problems.append(f"{LABELS_CSV}: {len(orphans)} labelled cases have no folder (e.g. {orphans[0]})")
    if not cases:
        raise InputError(f"{images}: no usable case folder (expected <5-digit id>/{{{','.join(SEQUENCES)}}}/)")
    return GliomaDataset(root, cases, problems, excluded)


def read_sequence(folder: str | os.PathLike) -> Volume:
    """One series of a case as a :class:`Volume` (position-sorted, LPS geometry, as stored: any plane)."""
    from MedDLLib.dicom import read_dicom_folder

    return read_dicom_folder(folder)


def read_case(case: Case, sequences: Sequence[str]) -> dict[str, Volume]:
    """The requested sequences of ``case``, read with :func:`read_sequence`.

    Raises:
        InputError: a requested sequence folder is missing.
    """
    missing = [s for s in sequences if s not in case.folders]
    if missing:
        raise InputError(f"case {case.case_id}: sequence folder(s) {', '.join(missing)} missing "
                         f"(found {', '.join(case.folders) or 'none'})")
    return {s: read_sequence(case.folders[s]) for s in sequences}
