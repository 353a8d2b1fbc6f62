"""Registry of the task modules (glioma, lgg, lung, ich): which tasks exist and how each is loaded.

The shared library never imports a task library by name. Task libraries declare themselves in ``pyproject.toml``::

    [project.entry-points."meddl.tasks"]
    ich = "ICHDetectorLib.cli:TASK"

and, inside Slicer (where no distribution metadata exists), each module calls :func:`register_task_entry` when
Slicer loads it (``ICHDetector.py``: ``register_task_entry("ich", "ICHDetectorLib.cli:TASK")``), and
``MedDLScripts/meddl_batch.py`` does the same for the extension's tasks when it runs in ``PythonSlicer``. A task
library is imported only when its task is asked for: :func:`get_task` loads that one task, never the others.

This module is the bottom of the task layer: it imports neither :mod:`MedDLLib.tasks` (the :class:`Task` base,
which uses the model packages) nor :mod:`MedDLLib.models`; the network registry asks it for the networks a task
declares (:func:`task_networks`), so ``models -> taskregistry`` and ``tasks -> models`` never close a cycle. A task
object is anything with a non-empty ``name`` (in practice a :class:`MedDLLib.tasks.Task`).
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import InputError

ENTRY_POINT_GROUP = "meddl.tasks"
#: Environment variable naming extra tasks as ``module:attribute`` (comma separated), e.g. for a child process
#: in a test: ``MEDDL_EXTRA_TASKS=dummy_task:TASK``. The attribute is a :class:`Task` instance or subclass.
EXTRA_TASKS_ENV = "MEDDL_EXTRA_TASKS"
TASK_NAMES = ("glioma", "lgg", "lung", "ich")

_registered: dict[str, Any] = {}
# Tasks registered by entry (``module:attribute``), imported on first use: name -> entry.
_registered_entries: dict[str, str] = {}
# Entry points that failed to load at the last available_tasks() call: name -> reason.
_broken: dict[str, str] = {}



def register_task(task: Any) -> None:
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


def _load_entry(spec: str, source: str) -> Any:
    """The task at ``spec`` (``module:attribute``; a task class is instantiated)."""
    module_name, _, attribute = spec.partition(":")
    try:
        task = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(f"{source}: cannot load {spec!r} (expected module:attribute): {exc}") from exc
    task = _instance(task)
    if not _is_task(task):
        raise InputError(f"{source}: {spec!r} is not a named meddl Task")
    return task


def _extra_tasks() -> dict[str, Any]:
    """The tasks named in :data:`EXTRA_TASKS_ENV` (``module:attribute``, comma separated)."""
    tasks: dict[str, Any] = {}
    for spec in filter(None, (s.strip() for s in os.environ.get(EXTRA_TASKS_ENV, "").split(","))):
        task = _load_entry(spec, EXTRA_TASKS_ENV)
        tasks[task.name] = task
    return tasks


def available_tasks() -> dict[str, Any]:
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
            tasks[ep.name] = _instance(ep.load())
        except (ImportError, AttributeError) as exc:  # a task library not (yet) installed must not hide the others
            _broken[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
    return dict(sorted(tasks.items()))


def task_names() -> list[str]:
    """Names of every known task, without importing any task library (registered, entries, entry points)."""
    names = set(_registered) | set(_registered_entries)
    names.update(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_task(name: str) -> Any:
    """The task called ``name`` (importing that task's library only) or an :class:`InputError` listing the
    available ones."""
    if name in _registered:
        return _registered[name]
    if name in _registered_entries:
        task = _load_entry(_registered_entries[name], f"task {name!r} registered by its Slicer module")
        _registered[name] = task
        return task
    extra = _extra_tasks()
    if name in extra:
        return extra[name]
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name != name:
            continue
        try:
            task = ep.load()
        except (ImportError, AttributeError) as exc:
            raise InputError(f"task {name!r} is declared but could not be loaded "
                             f"({ep.value}: {type(exc).__name__}: {exc})") from exc
        return _instance(task)
    known = ", ".join(sorted(set(task_names()) | set(extra))) or "none installed yet"
    raise InputError(f"unknown task {name!r}; available tasks: {known}")


def task_networks(name: str) -> Mapping[str, str]:
    """The networks task ``name`` declares (:attr:`Task.networks`); empty for an unknown task."""
    try:
        return dict(get_task(name).networks)
    except InputError:
        return {}


def task_importer(name: str, fmt: str) -> Callable[..., Path]:
    """The importer of format ``fmt`` that task ``name`` declares (:attr:`Task.importers`)."""
    task = get_task(name)
    entry = dict(task.importers).get(fmt)
    if entry is None:
        raise InputError(f"task {name!r} declares no importer for format {fmt!r}")
    module_name, _, attribute = entry.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"task {name!r}: cannot load the {fmt!r} importer {entry!r}: {exc}") from exc


def _instance(task: Any) -> Any:
    """A task class (a type with the task methods) is instantiated; an instance is returned as is."""
    return task() if isinstance(task, type) and hasattr(task, "infer") else task


def _is_task(task: Any) -> bool:
    return not isinstance(task, type) and isinstance(getattr(task, "name", None), str) and bool(task.name)
