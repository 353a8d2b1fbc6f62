"""A TCIA-style lung CT cohort: DICOM studies in TCIA download folders plus a clinical CSV.

On disk (what the NBIA Data Retriever writes, e.g. NSCLC-Radiomics)::

    ROOT/<Collection>/<PatientID>/<MM-DD-YYYY>-NA-<study description>-<nnnnn>/<n>.000000-<series description>-<nnnnn>/1-001.dcm
    ROOT/<any name>.csv      clinical table: patient id, survival time (days), event (death = 1, censored = 0)

Folder names (dates, spaces, series numbers) are never parsed: :func:`scan_dataset` reads the DICOM headers
(:func:`MedDLLib.dicom.find_series`) and groups the CT series by PatientID, so any folder layout works. Clinical
columns are found by their usual names (:data:`ID_COLUMNS`, :data:`TIME_COLUMNS`, :data:`EVENT_COLUMNS`; e.g.
NSCLC-Radiomics ``PatientID, Survival.time, deadstatus.event`` or ``patient_id, survival_days, event``); an event
given as ``Dead``/``Alive`` is understood.

A study is usable when its patient has exactly one CT series with at least ``min_slices`` slices and a
clinical row with a time and an event. Everything else is listed, with the reason, in
:attr:`LungCohort.unusable` (and other remarks in :attr:`LungCohort.problems`), never fatal.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from MedDLLib.errors import InputError

#: The seed recipe drops studies with fewer than 50 slices (1-3 mm CT); MedDL's default asks for at least the
#: 20 slices the seed network sees (phantoms and thick-slice scans), ``min_slices=50`` restores the seed rule.
MIN_SLICES = 20
ID_COLUMNS = ("patientid", "patient_id", "patient", "case_id", "caseid", "subject_id", "id")
TIME_COLUMNS = ("survival.time", "survival_time", "survival_days", "survival", "time", "days", "os_days",
                "overall_survival_days")
EVENT_COLUMNS = ("deadstatus.event", "event", "death", "dead", "status", "vital_status", "os_event")
CLINICAL_CSV = "clinical.csv"


@dataclasses.dataclass
class LungStudy:
    """One usable study: the CT series of a patient and its outcome.

    Attributes:
        patient_id: PatientID (the clinical table's key).
        folder: folder holding the series files.
        files: the series files in slice order.
        series_uid: the volume's uid (what :func:`MedDLLib.dicom.read_dicom_folder` takes).
        n_slices: number of slices.
        time_days: survival or follow-up time in days.
        event: 1 = death observed at ``time_days``, 0 = censored.
    """

    patient_id: str
    folder: Path
    files: list[Path]
    series_uid: str
    n_slices: int
    time_days: float
    event: int

    def read(self) -> Any:
        """The CT volume in HU (:class:`~MedDLLib.geometry.Volume`)."""
        from MedDLLib.dicom import read_dicom_folder

        return read_dicom_folder(self.folder, self.series_uid)


@dataclasses.dataclass
class LungCohort:
    """The usable studies below a root, and the ones that cannot be used with the reason."""

    root: Path
    studies: list[LungStudy]
    unusable: dict[str, str]
    problems: list[str]

    @property
    def times(self) -> np.ndarray:
        return np.array([s.time_days for s in self.studies], dtype=float)

    @property
    def events(self) -> np.ndarray:
        return np.array([s.event for s in self.studies], dtype=int)


def _column(columns: Sequence[str], names: Sequence[str], what: str, path: Path) -> str:
    lower = {c.strip().lower(): c for c in columns}
    for name in names:
        if name in lower:
            return lower[name]
    raise InputError(f"{path}: no {what} column (looked for {', '.join(names)}; found {', '.join(columns)})")


def _event_value(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().lower()
    if text in ("1", "1.0", "dead", "deceased", "death", "true", "yes"):
        return 1
    if text in ("0", "0.0", "alive", "living", "censored", "false", "no"):
        return 0
    return None


def find_clinical_csv(root: str | os.PathLike) -> Path:
    """The clinical CSV of a cohort: ``ROOT/clinical.csv`` or the only ``.csv`` directly in ROOT."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        return root
    if (root / CLINICAL_CSV).is_file():
        return root / CLINICAL_CSV
    found = sorted(root.glob("*.csv"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(f"{root}: no clinical CSV (expected a .csv with patient id, survival time in days and "
                         "event columns next to the DICOM folders)")
    raise InputError(f"{root}: several CSV files ({', '.join(p.name for p in found)}); name the clinical one "
                     f"{CLINICAL_CSV}")


def read_clinical(path: str | os.PathLike) -> tuple[dict[str, tuple[float, int]], list[str]]:
    """``({patient id: (time_days, event)}, problems)`` from a clinical CSV (rows with a bad value are reported)."""
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - any parse problem becomes a message naming the file
        raise InputError(f"{path}: cannot read the clinical CSV ({type(exc).__name__}: {exc})") from exc
    cid = _column(list(table.columns), ID_COLUMNS, "patient id", path)
    ctime = _column(list(table.columns), TIME_COLUMNS, "survival time (days)", path)
    cevent = _column(list(table.columns), EVENT_COLUMNS, "event (death/censored)", path)
    out: dict[str, tuple[float, int]] = {}
    problems: list[str] = []
    for line, row in enumerate(table.to_dict("records"), start=2):
        pid, raw_time, raw_event = str(row[cid]).strip(), row[ctime], row[cevent]
        try:
            time = float(raw_time)
            if not np.isfinite(time) or time < 0:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"{path.name} line {line}: patient {pid!r} has no valid survival time ({raw_time!r})")
            continue
        event = _event_value(raw_event)
        if event is None:
            problems.append(f"{path.name} line {line}: patient {pid!r} has no valid event ({raw_event!r}; "
                            "expected 1/0 or Dead/Alive)")
            continue
        if pid in out:
            problems.append(f"{path.name} line {line}: patient {pid!r} repeated; the first row is kept")
            continue
        out[pid] = (time, event)
    return out, problems


def scan_dataset(root: str | os.PathLike, *, min_slices: int = MIN_SLICES, workers: int | None = None) -> LungCohort:
    """Find the usable CT studies below ``root`` and attach survival from the clinical CSV.

    Raises:
        InputError: ``root`` is not a folder, there is no clinical CSV, or no DICOM image at all.
    """
    from MedDLLib.dicom import find_series

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (expected a TCIA-style cohort: DICOM folders + clinical CSV)")
    clinical, problems = read_clinical(find_clinical_csv(root))
    found = find_series(root, workers=workers)
    if not found:
        raise InputError(f"{root}: no DICOM image series found")
    if found.corrupt:
        problems += [f"{p}: {reason}" for p, reason in found.corrupt[:20]]
    by_patient: dict[str, list[Any]] = {}
    for series in found:
        pid = str(series.metadata.get("patient_id") or "").strip()
        modality = str(series.metadata.get("modality") or "").upper()
        if modality != "CT":
            problems.append(f"patient {pid or '?'}: series {series.uid} ({modality or 'no modality'}, "
                            f"{series.description!r}) is not CT; ignored")
            continue
        by_patient.setdefault(pid, []).append(series)
    unusable: dict[str, str] = {}
    studies: list[LungStudy] = []
    for pid, series_list in sorted(by_patient.items()):
        if not pid:
            unusable["(no PatientID)"] = f"{len(series_list)} CT series without a PatientID"
            continue
        if len(series_list) > 1:
            names = "; ".join(f"{s.uid} ({len(s.files)} slices, {s.description!r}, in {s.files[0].parent})"
                              for s in series_list)
            unusable[pid] = f"several CT series ({names}): keep one per patient"
            continue
        series = series_list[0]
        if len(series.files) < min_slices:
            unusable[pid] = f"only {len(series.files)} slices (fewer than the minimum {min_slices}) in {series.files[0].parent}"
            continue
        if pid not in clinical:
            unusable[pid] = "no row in the clinical CSV (survival time and event unknown)"
            continue
        if series.problems:
            problems.append(f"patient {pid}: " + "; ".join(series.problems))
        time, event = clinical[pid]
        studies.append(LungStudy(pid, series.files[0].parent, list(series.files), series.uid, len(series.files),
                                 time, event))
    for pid in sorted(set(clinical) - set(by_patient)):
        problems.append(f"clinical row of patient {pid!r} has no CT series")
    return LungCohort(root, studies, unusable, problems)
