"""Resumable, crash-safe batch inference over many studies (``meddl batch``).

:func:`run_batch` asks the task for the studies below an input folder (:meth:`Task.find_studies`) and runs
:meth:`Task.infer` on each, one after the other. The task's ``infer`` builds its own (headless) scene per study;
this module only handles files:

* each study is written into a temporary folder *inside* the output folder (same file system), named
  ``.<study>.<random>.partial``, and renamed to ``<output>/<study>`` only when complete, so killing the process
  at any moment (even SIGKILL) never leaves a half-written study folder under its final name;
* the task's returned dict is saved as ``<output>/<study>/result.json`` (JSON types; paths relative to the
  study folder), so a finished study can be summarised again without running it;
* ``summary.csv`` (``study, status, seconds`` + the result's top-level scalar values) and ``failures.csv``
  (``study, error``) are rewritten atomically after every study; an interrupted run leaves consistent files;
* a study that raises (any :class:`Exception`) is recorded in ``failures.csv`` as ``Type: message`` and the run
  goes on; ``KeyboardInterrupt`` still stops it (the study in progress leaves nothing behind);
* every finished study folder also holds ``meddl_run.json``: the task, the model (name, version, SHA-256 of its
  weights) and the task's options (e.g. ``threshold``) that produced it;
* ``resume=True`` skips studies whose final folder exists, holds a valid ``result.json`` *and* was produced by the
  same task, model and options
  (their summary row is rebuilt from ``result.json``); a study finished with another model or options, or by a
  MedDL that did not record them, runs again, so one output folder never mixes models;
  leftover ``.*.partial`` entries of a killed run are removed at the start of every run.

One run per output folder at a time: a second concurrent run would remove the first one's temporary folders.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InputError
from .io import VOLUME_FILE_SUFFIXES, atomic_folder, atomic_write_text, to_jsonable
from .tasks import Task

SUMMARY_CSV = "summary.csv"
FAILURES_CSV = "failures.csv"
#: Written by the runner into every finished study folder (tasks must not use these names).
RESULT_JSON = "result.json"
RUN_JSON = "meddl_run.json"
PARTIAL_SUFFIX = ".partial"
SUMMARY_COLUMNS = ("study", "status", "seconds")
FAILURE_COLUMNS = ("study", "error")
_RESERVED_NAMES = frozenset({SUMMARY_CSV, FAILURES_CSV})


@dataclasses.dataclass
class StudyOutcome:
    """What happened to one study.

    Attributes:
        study: the study id (the name of its output folder).
        input_path: the study as :meth:`Task.find_studies` returned it.
        status: ``"ok"`` (run now), ``"skipped"`` (finished by an earlier run with the same task, model and
            options, ``resume=True``) or ``"failed"``.
        seconds: wall time of the study (for a skipped one: as recorded by the earlier run, else ``None``).
        output_path: ``<output>/<study>`` when the study's outputs exist, else ``None``.
        result: the task's result as saved in ``result.json`` (JSON types, paths relative to the study folder).
        error: ``"Type: message"`` of a failed study, else ``None``.
    """

    study: str
    input_path: Path
    status: str
    seconds: float | None = None
    output_path: Path | None = None
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None


@dataclasses.dataclass
class BatchSummary:
    """The outcome of :func:`run_batch`.

    Attributes:
        output_root: the output folder.
        total: number of studies found.
        outcomes: one :class:`StudyOutcome` per study handled, in :meth:`Task.find_studies` order (fewer than
            ``total`` when cancelled).
        cancelled: the ``cancel`` callback stopped the run early.
    """

    output_root: Path
    total: int
    outcomes: list[StudyOutcome]
    cancelled: bool = False

    @property
    def summary_csv(self) -> Path:
        return self.output_root / SUMMARY_CSV

    @property
    def failures_csv(self) -> Path:
        return self.output_root / FAILURES_CSV

    def with_status(self, status: str) -> list[StudyOutcome]:
        """The outcomes whose status is ``status`` (``"ok"``, ``"skipped"`` or ``"failed"``)."""
        return [o for o in self.outcomes if o.status == status]

    @property
    def failed(self) -> list[StudyOutcome]:
        return self.with_status("failed")


#: Called after every study with (studies handled so far, total, outcome of this study).
ProgressCallback = Callable[[int, int, StudyOutcome], None]


def study_id(study: Path, root: Path) -> str:
    """The output folder name of ``study``: its path below ``root`` with ``__`` for ``/``, volume suffix removed.

    ``root/case01`` -> ``case01``; ``root/case02.nii.gz`` -> ``case02``; ``root/p1/flair`` -> ``p1__flair``.
    """
    try:
        parts = study.relative_to(root).parts
    except ValueError:
        parts = (study.name,)
    if not parts:
        raise InputError(f"{study}: a study cannot be the input folder itself")
    last = parts[-1]
    for suffix in sorted(VOLUME_FILE_SUFFIXES, key=len, reverse=True):
        if study.is_file() and last.lower().endswith(suffix) and len(last) > len(suffix):
            last = last[: -len(suffix)]
            break
    name = "__".join((*parts[:-1], last))
    if name.startswith(".") or name in _RESERVED_NAMES:
        raise InputError(f"{study}: study name {name!r} is reserved for MedDL's own files; rename the study")
    return name


def clean_partials(output_root: Path) -> list[Path]:
    """Remove the ``.*.partial`` folders and files a killed run left in ``output_root``; return them."""
    removed = []
    if not output_root.is_dir():
        return removed
    for entry in sorted(output_root.iterdir()):
        if entry.name.startswith(".") and entry.name.endswith(PARTIAL_SUFFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def run_batch(
    task: Task,
    input_root: str | os.PathLike,
    output_root: str | os.PathLike,
    model: str | None,
    *,
    resume: bool = False,
    args: argparse.Namespace | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> BatchSummary:
    """Run ``task.infer`` on every study below ``input_root``, one output folder per study in ``output_root``.

    Args:
        task: the task (its ``find_studies`` and ``infer`` are used).
        input_root: folder holding the studies.
        output_root: where ``<study>/``, ``summary.csv`` and ``failures.csv`` go (created; may not be
            ``input_root`` nor lie inside one of the studies; if it is one of ``input_root``'s entries it is
            not taken for a study).
        model: passed to ``task.infer`` (a model name/path, or ``None`` for the task's default).
        resume: skip studies whose output folder exists and was produced by the same task, model (SHA-256 of
            its weights) and task options (see :func:`run_identity`); the others run again. Without it every
            study runs again and replaces its earlier outputs (atomically: old or new, never a mix).
        args: passed to ``task.infer`` (task options); an empty namespace by default.
        progress: called after every study, see :data:`ProgressCallback`.
        cancel: polled before every study; returning True stops the run (summary files stay consistent).

    Returns:
        a :class:`BatchSummary`; failed studies are listed there and in ``failures.csv`` (no exception).

    Raises:
        InputError: missing input folder, no studies found, clashing study names, bad output location, no model
            where the task needs one (:meth:`Task.check_model`).
        ModelError: the model package is missing or broken (checked once, before any study).
    """
    input_root = Path(input_root).resolve()
    output_root = Path(output_root).resolve()
    args = args if args is not None else argparse.Namespace()
    if not input_root.is_dir():
        raise InputError(f"{input_root}: input folder not found")
    if output_root == input_root:
        raise InputError(f"{output_root}: the output folder must differ from the input folder")
    studies = [Path(s) for s in task.find_studies(input_root)]
    studies = [s for s in studies if s.resolve() != output_root]
    for study in studies:
        if output_root.is_relative_to(study.resolve()):
            raise InputError(f"{output_root}: the output folder lies inside study {study}; choose another")
    if not studies:
        raise InputError(f"{input_root}: no studies found for task {task.name!r}")
    ids = [study_id(s, input_root) for s in studies]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"{input_root}: several studies map to the same output name(s): {', '.join(duplicates)}")

    if output_root.exists() and not output_root.is_dir():
        raise InputError(f"{output_root}: exists and is not a folder; choose another output folder")
    found = task.check_model(model)  # a missing or broken model fails once here, not once per study
    identity = run_identity(task, model, found, args)
    output_root.mkdir(parents=True, exist_ok=True)
    clean_partials(output_root)
    earlier_seconds = _read_seconds(output_root / SUMMARY_CSV) if resume else {}

    outcomes: list[StudyOutcome] = []
    cancelled = False
    for index, (study, sid) in enumerate(zip(studies, ids)):
        if cancel is not None and cancel():
            cancelled = True
            break
        final = output_root / sid
        if resume and final.is_dir() and _read_json(final / RUN_JSON) == identity and _finished(final):
            outcome = StudyOutcome(sid, study, "skipped", earlier_seconds.get(sid), final,
                                   _read_json(final / RESULT_JSON))
        else:
            outcome = _run_study(task, study, sid, model, final, args, identity)
        outcomes.append(outcome)
        _write_tables(output_root, outcomes)
        if progress is not None:
            progress(index + 1, len(studies), outcome)
    if not outcomes:  # cancelled before the first study: still leave (empty) tables
        _write_tables(output_root, outcomes)
    return BatchSummary(output_root, len(studies), outcomes, cancelled)


def run_identity(task: Task, model: str | None, found: dict[str, Any] | None,
                 args: argparse.Namespace) -> dict[str, Any]:
    """What makes two runs' outputs comparable: the task, the model and the task's own options.

    Args:
        model: the model as given (name or path); ``found``: what :meth:`Task.check_model` verified (its name,
            version and weights' SHA-256 identify it wherever it lies), or ``None``.
        args: the run's options; only those the task adds to ``meddl batch`` (:meth:`Task.add_arguments`) count,
            with their defaults where ``args`` lacks them.
    Returns:
        a JSON-typed dict (compared with ``==`` to a study folder's ``meddl_run.json``).
    """
    if found is not None:
        model_id: Any = {k: found.get(k) for k in ("name", "version", "sha256")}
    else:
        model_id = None if model is None else str(model)
    parser = argparse.ArgumentParser(add_help=False)
    task.add_arguments("batch", parser)
    defaults, _ = parser.parse_known_args([])
    options = {k: getattr(args, k, v) for k, v in sorted(vars(defaults).items())}
    identity = {"task": task.name, "model": model_id, "options": options}
    if (getattr(args, "output_format", None) or "nrrd") != "nrrd":  # NIfTI volumes are other files; NRRD as before
        identity["output_format"] = args.output_format
    return json.loads(json.dumps(to_jsonable(identity)))


def _run_study(task: Task, study: Path, sid: str, model: str | None, final: Path, args: argparse.Namespace,
               identity: dict[str, Any]) -> StudyOutcome:
    """Infer one study into a temporary folder that then replaces ``final``; failures become an outcome."""
    start = time.perf_counter()
    try:
        with atomic_folder(final) as tmp:
            result = task.infer(study, model, tmp, args)
            saved = to_jsonable(dict(result or {}), base=tmp)
            for name in (RESULT_JSON, RUN_JSON):
                if (tmp / name).exists():
                    raise RuntimeError(f"task {task.name} wrote {name}, a name the batch runner reserves")
            (tmp / RESULT_JSON).write_text(json.dumps(saved, indent=2, sort_keys=True, allow_nan=False) + "\n",
                                           encoding="utf-8")
            (tmp / RUN_JSON).write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except Exception as exc:  # a bad study never stops the run
        try:
            _remove_folder(final)  # no stale outputs of an earlier run beside a "failed" row
        except OSError:
            pass
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        return StudyOutcome(sid, study, "failed", round(time.perf_counter() - start, 3), error=message)
    return StudyOutcome(sid, study, "ok", round(time.perf_counter() - start, 3), final, saved)


def _remove_folder(path: Path) -> None:
    """Delete a study folder atomically (renamed to a ``.partial`` name first, then removed)."""
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old{PARTIAL_SUFFIX}")
        os.rename(path, old)
        shutil.rmtree(old)


def _finished(folder: Path) -> bool:
    """True when ``folder`` holds a complete study output: a ``result.json`` that is a non-empty strict JSON object
    (a corrupted, truncated or emptied one means the study runs again on ``--resume``)."""
    def refuse(value: str) -> None:
        raise ValueError(value)
    try:
        data = json.loads((folder / RESULT_JSON).read_text(encoding="utf-8"), parse_constant=refuse)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and bool(data)


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (``{}`` when missing, unreadable or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_seconds(summary_csv: Path) -> dict[str, float]:
    """Per-study seconds recorded by an earlier run (empty when there is no readable summary)."""
    seconds: dict[str, float] = {}
    try:
        with open(summary_csv, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                try:
                    seconds[row["study"]] = float(row["seconds"])
                except (KeyError, TypeError, ValueError):
                    continue
    except OSError:
        pass
    return seconds


def _scalars(result: dict[str, Any]) -> dict[str, Any]:
    """The top-level scalar entries of a result (strings, numbers, booleans), named apart from the fixed columns."""
    out = {}
    for key, value in sorted(result.items()):  # sorted: the same columns whether run now or read back
        if isinstance(value, (bool, int, float, str)):
            out[f"result_{key}" if key in SUMMARY_COLUMNS else key] = value
    return out


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_tables(output_root: Path, outcomes: Sequence[StudyOutcome]) -> None:
    """Rewrite ``summary.csv`` and ``failures.csv`` (atomically) from the outcomes so far."""
    scalars = [_scalars(o.result) for o in outcomes]
    keys: list[str] = []
    for row in scalars:
        keys.extend(k for k in row if k not in keys)
    summary_rows = [
        [o.study, "failed" if o.status == "failed" else "ok", "" if o.seconds is None else o.seconds]
        + [row.get(k, "") for k in keys]
        for o, row in zip(outcomes, scalars)
    ]
    atomic_write_text(output_root / SUMMARY_CSV, _csv_text([*SUMMARY_COLUMNS, *keys], summary_rows))
    failure_rows = [[o.study, o.error] for o in outcomes if o.status == "failed"]
    atomic_write_text(output_root / FAILURES_CSV, _csv_text(FAILURE_COLUMNS, failure_rows))
