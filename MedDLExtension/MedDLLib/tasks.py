"""The :class:`Task` base: what a task module provides to the shared ``meddl`` command, batch runner and demo.

Which tasks exist and how one is loaded is :mod:`MedDLLib.taskregistry` (re-exported here, so
``from MedDLLib.tasks import get_task, register_task_entry`` keeps working). A task is an object derived from
:class:`Task`; the shared CLI parses the common arguments and calls the task's methods. A method a task does not
implement raises :class:`NotImplementedError`, which the CLI reports as "<task> does not support <subcommand> yet".
A task names its networks (:attr:`Task.networks`) and its import formats (:attr:`Task.importers`); the shared
library reaches a task library only through these declarations and the registry's entries.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from . import models
from .errors import InputError
from .taskregistry import (  # noqa: F401 - re-exported: the registry's public names
    ENTRY_POINT_GROUP, EXTRA_TASKS_ENV, TASK_NAMES, _broken, _registered, _registered_entries, available_tasks,
    get_task, register_task, register_task_entry, task_importer, task_names, task_networks,
)


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
    #: The networks this task's packages may name, each with the factory that builds it as ``"module:attribute"``
    #: (e.g. ``{"ich.seed_cnn": "ICHDetectorLib.model:SeedCNN"}``). The network registry loads an entry only when
    #: a package of this task names it (:func:`MedDLLib.taskregistry.task_networks`); MONAI's allow-listed
    #: networks need no entry.
    networks: Mapping[str, str] = {}
    #: Formats ``meddl models import --format`` turns into a package of this task: format -> ``"module:attribute"``
    #: of ``importer(src, name=None, overwrite=False) -> installed folder`` (e.g. LGG's ``buda-unet``).
    importers: Mapping[str, str] = {}

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
        found = models.verify_model(model)
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
