"""The RSNA 2019 Intracranial Hemorrhage Detection layout: a flat folder of slices plus a labels CSV.

On disk::

    ROOT/stage_2_train/ID_<hex>.dcm     one slice per file, studies mixed, names unrelated to position
    ROOT/stage_2_train.csv              rows ``ID_<hex>_<subtype>,Label`` (subtypes in :data:`CSV_SUBTYPES`)

:func:`scan_dataset` rebuilds the studies from the headers alone (``stop_before_pixels``): slices are grouped by
StudyInstanceUID / SeriesInstanceUID and sorted by their position along the slice normal. It keeps only small
per-slice records (path, id, position), so scanning the 750,000 training slices needs bounded memory; pixels are
read later, one sample at a time (:func:`training_items` + :func:`load_sample` in a
:class:`MedDLLib.datasets.FileDataset`). Duplicate label rows, conflicting duplicates, missing labels, labels of
files that do not exist and unreadable files are collected in :attr:`ICHDataset.problems`, never fatal.

Labels are held in :data:`LABELS` order (``MedDLLib.evaluation.RSNA2019_LABELS``: "any" first), the order of
the network outputs and of :func:`MedDLLib.evaluation.weighted_log_loss`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pydicom

from MedDLLib.errors import InputError
from MedDLLib.evaluation import RSNA2019_LABELS

#: Labels in network/metric order ("any" first).
LABELS: tuple[str, ...] = RSNA2019_LABELS
#: The five subtypes (LABELS without "any").
SUBTYPES: tuple[str, ...] = LABELS[1:]
#: Subtype order of the rows of the RSNA CSV.
CSV_SUBTYPES: tuple[str, ...] = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")
IMAGE_FOLDER = "stage_2_train"
LABELS_CSV = "stage_2_train.csv"
_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "PatientID", "ImagePositionPatient",
                "ImageOrientationPatient", "InstanceNumber", "SOPInstanceUID", "Modality"]


@dataclasses.dataclass
class Study:
    """One series of slices, sorted along the slice normal.

    Attributes:
        study_uid, series_uid, patient_id: from the headers.
        slice_ids: ``ID_<hex>`` of each slice, in position order.
        paths: the files, same order.
        labels: ``(n_slices, 6)`` int array in :data:`LABELS` order; -1 where a label is missing.
    """

    study_uid: str
    series_uid: str
    patient_id: str
    slice_ids: list[str]
    paths: list[Path]
    labels: np.ndarray

    @property
    def labelled(self) -> np.ndarray:
        """Boolean ``(n_slices,)``: slices with all six labels."""
        return (self.labels >= 0).all(axis=1)

    @property
    def any_label(self) -> int:
        """Study-level 'any' label: 1 if a labelled slice is positive."""
        return int(self.labels[self.labelled, 0].max(initial=0))


@dataclasses.dataclass
class ICHDataset:
    """The studies found below a root and what was wrong on the way."""

    root: Path
    studies: list[Study]
    problems: list[str]

    @property
    def n_slices(self) -> int:
        return sum(len(s.slice_ids) for s in self.studies)


def read_labels_csv(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read ``stage_2_train.csv``.

    Returns:
        ``(labels, problems)``: slice id -> int array of 6 labels in :data:`LABELS` order (-1 = missing), and
        the problems found (bad rows, unknown subtypes, duplicates, conflicting duplicates).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: labels CSV not found (expected the RSNA stage_2_train.csv)")
    labels: dict[str, np.ndarray] = {}
    problems: list[str] = []
    duplicates = conflicts = 0
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ID", "Label"]:
            raise InputError(f"{path}: first row must be 'ID,Label', got {header!r}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                key, value = row[0].strip(), int(row[1])
                slice_id, subtype = key.rsplit("_", 1)
                if value not in (0, 1):
                    raise ValueError(f"label {value} is not 0 or 1")
                column = LABELS.index(subtype)
            except (ValueError, IndexError) as exc:
                problems.append(f"{path.name} line {line}: bad row {row!r} ({exc})")
                continue
            entry = labels.setdefault(slice_id, np.full(len(LABELS), -1, dtype=np.int64))
            if entry[column] >= 0:
                duplicates += 1
                if entry[column] != value:
                    conflicts += 1
                    problems.append(f"{path.name} line {line}: {key} repeated with a different label "
                                    f"({entry[column]} then {value}); kept 1")
                    value = 1
            entry[column] = value
    if duplicates:
        problems.append(f"{path.name}: {duplicates} duplicate rows ({conflicts} conflicting)")
    return labels, problems


def _slice_record(path: Path) -> dict[str, Any] | str:
    """Header fields of one file, or the reason it cannot be used."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception as exc:  # noqa: BLE001 - unreadable files are reported, not fatal
        return f"{path.name}: unreadable ({type(exc).__name__}: {exc})"
    missing = [t for t in ("StudyInstanceUID", "SeriesInstanceUID") if not ds.get(t)]
    if missing:
        return f"{path.name}: no {', '.join(missing)} in the header"
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    key = None
    if position is not None and orientation is not None and len(orientation) == 6:
        normal = np.cross(np.array(orientation[:3], float), np.array(orientation[3:], float))
        key = float(np.dot(normal, np.array(position, float)))
    return {"path": path, "id": path.stem, "study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID),
            "patient": str(ds.get("PatientID") or ds.StudyInstanceUID), "position": key,
            "instance": int(ds.get("InstanceNumber") or 0)}


def scan_dataset(root: str | os.PathLike, *, limit: int | None = None) -> ICHDataset:
    """Rebuild the studies of an RSNA 2019 folder from the headers and attach the CSV labels.

    Args:
        root: folder holding ``stage_2_train/`` and ``stage_2_train.csv`` (a folder of ``.dcm`` files with the
            CSV beside or inside it is accepted too).
        limit: read at most this many files (a quick look at a huge folder).
    Raises:
        InputError: no image folder, no CSV or no readable slice at all.
    """
    root = Path(root)
    images = root / IMAGE_FOLDER if (root / IMAGE_FOLDER).is_dir() else root
    csv_path = root / LABELS_CSV if (root / LABELS_CSV).is_file() else images.parent / LABELS_CSV
    if not images.is_dir():
        raise InputError(f"{root}: not a folder (expected the RSNA layout: {IMAGE_FOLDER}/ID_*.dcm + {LABELS_CSV})")
    labels, problems = read_labels_csv(csv_path)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() == ".dcm")
    if limit is not None:
        files = files[:limit]
    if not files:
        raise InputError(f"{images}: no .dcm files (expected RSNA slices ID_<hex>.dcm)")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    unreadable = 0
    for path in files:
        record = _slice_record(path)
        if isinstance(record, str):
            unreadable += 1
            if unreadable <= 20:
                problems.append(record)
            continue
        groups.setdefault((record["study"], record["series"]), []).append(record)
    if unreadable > 20:
        problems.append(f"... {unreadable} unreadable files in all")
    studies: list[Study] = []
    seen_ids: set[str] = set()
    for (study_uid, series_uid), records in sorted(groups.items()):
        if any(r["position"] is None for r in records):
            problems.append(f"series {series_uid}: slices without ImagePositionPatient/ImageOrientationPatient; "
                            "sorted by InstanceNumber")
            records.sort(key=lambda r: r["instance"])
        else:
            records.sort(key=lambda r: r["position"])
        ids = [r["id"] for r in records]
        seen_ids.update(ids)
        lab = np.stack([labels.get(i, np.full(len(LABELS), -1, dtype=np.int64)) for i in ids])
        n_missing = int((~(lab >= 0).all(axis=1)).sum())
        if n_missing:
            problems.append(f"study {study_uid}: {n_missing} of {len(ids)} slices lack some labels "
                            "(kept for context, not used as samples)")
        studies.append(Study(study_uid, series_uid, records[0]["patient"], ids, [r["path"] for r in records], lab))
    if not studies:
        raise InputError(f"{images}: none of the {len(files)} files could be read (see problems)")
    orphans = len(set(labels) - seen_ids)
    if orphans and limit is None:
        problems.append(f"{LABELS_CSV}: {orphans} labelled slice ids have no image file")
    return ICHDataset(root, studies, problems)


@dataclasses.dataclass(frozen=True)
class SliceItem:
    """One training sample: the files of a slice and its neighbours (centre in the middle) and its labels."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    study_uid: str
    patient_id: str
    index: int


def training_items(studies: Iterable[Study], context: int) -> list[SliceItem]:
    """One :class:`SliceItem` per fully labelled slice; neighbours clamped at the ends of each study."""
    from .preprocess import neighbour_indices

    items = []
    for study in studies:
        n = len(study.paths)
        for k in np.flatnonzero(study.labelled):
            idx = neighbour_indices(n, int(k), context)
            items.append(SliceItem(tuple(str(study.paths[i]) for i in idx), tuple(int(v) for v in study.labels[k]),
                                   study.study_uid, study.patient_id, int(k)))
    return items


def load_sample(item: SliceItem, spec: Any) -> tuple[Any, Any]:
    """``(input (C, S, S) float32 tensor, target (6,) float32 tensor)`` of one item (reads its files)."""
    import torch

    from .preprocess import slice_stack_input

    x = slice_stack_input(item.paths, spec)
    return torch.from_numpy(x), torch.tensor(item.labels, dtype=torch.float32)


def hflip(sample: tuple[Any, Any]) -> tuple[Any, Any]:
    """Training augmentation: random left-right flip (a head is roughly symmetric)."""
    import torch

    x, y = sample
    if torch.rand(()) < 0.5:
        x = torch.flip(x, dims=(-1,))
    return x, y


def split_studies(studies: Sequence[Study], val_fraction: float = 0.2,
                  seed: int = 0) -> tuple[list[Study], list[Study]]:
    """Training and validation studies with no patient on both sides (:func:`MedDLLib.evaluation.train_val_split`)."""
    from MedDLLib.evaluation import train_val_split

    train_idx, val_idx = train_val_split([s.patient_id for s in studies], val_fraction, seed)
    return [studies[i] for i in train_idx], [studies[i] for i in val_idx]
