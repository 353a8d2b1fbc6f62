"""Registry of the task modules (glioma, lgg, lung, ich) as the shared ``meddl`` command sees them.

The shared library never imports a task library. Task libraries declare themselves in ``pyproject.toml``::

    [project.entry-points."meddl.tasks"]
    ich = "ICHDetectorLib.cli:TASK"

and, inside Slicer (where no distribution metadata exists), each module calls :func:`register_task_entry` when
Slicer loads it (``ICHDetector.py``: ``register_task_entry("ich", "ICHDetectorLib.cli:TASK")``; the task library
is imported only when the task is used), and ``MedDLScripts/meddl_batch.py`` does the same for the extension's
tasks when it runs in ``PythonSlicer``, where no module is loaded. A task is an object derived from
:class:`Task`; the shared CLI parses the common arguments and calls
the task's methods. A method a task does not implement raises :class:`NotImplementedError`, which the CLI
reports as "<task> does not support <subcommand> yet".
"""

from __future__ import annotations

import argparse
import importlib
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import InputError

ENTRY_POINT_GROUP = "meddl.tasks"
#: Environment variable naming extra tasks as ``module:attribute`` (comma separated), e.g. for a child process
#: in a test: ``MEDDL_EXTRA_TASKS=dummy_task:TASK``. The attribute is a :class:`Task` instance or subclass.
EXTRA_TASKS_ENV = "MEDDL_EXTRA_TASKS"
TASK_NAMES = ("glioma", "lgg", "lung", "ich")

_registered: dict[str, "Task"] = {}
# Tasks registered by entry (``module:attribute``), imported on first use: name -> entry.
_registered_entries: dict[str, str] = {}
# Entry points that failed to load at the last available_tasks() call: name -> reason.
_broken: dict[str, str] = {}


class Task:
    """What a task module provides to the shared command line, batch runner and demo.

    Subclasses set :attr:`name` (one of :data:`TASK_NAMES`) and :attr:`title`, and override the methods
    they support. Paths are :class:`pathlib.Path`.
    """

    name: str = ""
    title: str = ""
    #: Whether ``infer`` needs a model package of this task (no default model ships): :meth:`check_model` then
    #: refuses a missing, broken or other-task model once, before any study is read.
    needs_model: bool = False

    def check_model(self, model: str | None) -> dict[str, Any] | None:
        """Refuse an unusable ``model`` up front (``meddl infer`` and ``meddl batch`` call this before any study).

        With :attr:`needs_model`: ``model`` must name a package (folder or cached name) of this task that passes
        :func:`MedDLLib.models.verify_model` (checksum, weights-only load, strict network fit).

        Returns:
            what :func:`MedDLLib.models.verify_model` found (name, version, sha256, ...), or ``None`` for a task
            that needs no model.

        Raises:
            InputError: no model given, or a model of another task.
            ModelError: the package is missing, tampered with or does not fit its network.
        """
        if not self.needs_model:
            return None
        if model is None:
            raise InputError(f"meddl {self.name} needs --model (no default {self.name} model ships; train one with "
                             f"meddl train {self.name} or import one with meddl models import)")
        from .models import verify_model

        found = verify_model(model)
        if found["task"] != self.name:
            raise InputError(f"model {found['name']!r} is for task {found['task']!r}, not {self.name!r}")
        return found

    def add_arguments(self, subcommand: str, parser: argparse.ArgumentParser) -> None:
        """Add task-specific options to ``meddl <subcommand> <task>`` (optional)."""

    def phantom(self, out: Path, cases: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
        """Write a synthetic dataset in the real dataset's on-disk layout; return a summary."""
        raise NotImplementedError

    def train(self, args: argparse.Namespace) -> dict[str, Any]:
        """Train a model package (``args.data``, ``args.out``, ``args.recipe``, ...); return a summary."""
        raise NotImplementedError

    def evaluate(self, args: argparse.Namespace) -> dict[str, Any]:
        """Evaluate ``args.model`` on ``args.data``; return flat metrics (written to ``args.out``)."""
        raise NotImplementedError

    def infer(self, input_path: Path, model: str | None, output: Path, args: argparse.Namespace) -> dict[str, Any]:
        """Run one study (DICOM folder or NRRD/NIfTI) and write Slicer-loadable outputs into ``output``.

        ``args.progress`` (may be absent or None) is a ``(fraction, message="")`` callback to hand to the logic's
        ``process(..., progress=...)``: under the GUI it reports to the progress bar.
        """
        raise NotImplementedError

    def find_studies(self, root: Path) -> list[Path]:
        """The studies below ``root`` that ``meddl batch`` runs one by one (default: each sub-folder and each
        NRRD/NIfTI file; other files, such as a labels CSV or notes, and hidden entries are not studies).

        A folder that turns out unreadable is reported by the batch as a failed study, with its reason."""
        from .io import is_volume_file

        return sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p.is_dir() or is_volume_file(p)))

    def bench(self, args: argparse.Namespace) -> dict[str, Any]:
        """Measure speed and memory; return the results (written as JSON and a table)."""
        raise NotImplementedError

    def demo(self, out: Path, args: argparse.Namespace) -> dict[str, Any]:
        """Phantoms -> small training -> evaluation -> one inference with a PNG, inside ``out``."""
        raise NotImplementedError


def register_task(task: Task) -> None:
    """Make ``task`` available to the command line (used by Slicer modules at load and by tests)."""
    if not task.name:
        raise ValueError("a Task needs a name")
    _registered[task.name] = task


def register_task_entry(name: str, entry: str) -> None:
    """Make the task at ``entry`` (``"module:attribute"``, e.g. ``"ICHDetectorLib.cli:TASK"``) available as
    ``name`` without importing it now (Slicer modules call this when they load; startup stays light)."""
    if not name or entry.count(":") != 1:
        raise ValueError(f"register_task_entry needs a name and 'module:attribute', got {name!r}, {entry!r}")
    _registered_entries[name] = entry


def _load_entry(spec: str, source: str) -> Task:
    """The :class:`Task` at ``spec`` (``module:attribute``; a Task subclass is instantiated)."""
    module_name, _, attribute = spec.partition(":")
    try:
        task = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(f"{source}: cannot load {spec!r} (expected module:attribute): {exc}") from exc
    if isinstance(task, type) and issubclass(task, Task):
        task = task()
    if not isinstance(task, Task) or not task.name:
        raise InputError(f"{source}: {spec!r} is not a named meddl Task")
    return task


def _extra_tasks() -> dict[str, Task]:
    """The tasks named in :data:`EXTRA_TASKS_ENV` (``module:attribute``, comma separated)."""
    tasks: dict[str, Task] = {}
    for spec in filter(None, (s.strip() for s in os.environ.get(EXTRA_TASKS_ENV, "").split(","))):
        task = _load_entry(spec, EXTRA_TASKS_ENV)
        tasks[task.name] = task
    return tasks


def available_tasks() -> dict[str, Task]:
    """All tasks: registered at run time, named in ``$MEDDL_EXTRA_TASKS``, declared as ``meddl.tasks`` entry points."""
    tasks = dict(_registered)
    for name, task in _extra_tasks().items():
        tasks.setdefault(name, task)
    _broken.clear()
    for name, entry in _registered_entries.items():
        if name in tasks:
            continue
        try:
            tasks[name] = _load_entry(entry, f"task {name!r} registered by its Slicer module")
        except InputError as exc:  # one task library that fails to import must not hide the others
            _broken[name] = str(exc)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in tasks:
            continue
        try:
            tasks[ep.name] = ep.load()
        except (ImportError, AttributeError) as exc:  # a task library not (yet) installed must not hide the others
            _broken[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
    return dict(sorted(tasks.items()))


def get_task(name: str) -> Task:
    """The task called ``name`` or an :class:`InputError` listing the available ones."""
    tasks = available_tasks()
    if name not in tasks:
        if name in _broken:
            raise InputError(f"task {name!r} is declared but could not be loaded ({_broken[name]})")
        known = ", ".join(tasks) or "none installed yet"
        raise InputError(f"unknown task {name!r}; available tasks: {known}")
    return tasks[name]
