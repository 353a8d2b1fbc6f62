"""Read a study in a forked child process while this process loads the model (a cold ``meddl infer``).

A cold ``meddl infer`` spends its first seconds on two independent things: importing torch and loading the model
(about 1.2-1.5 s), and reading the study's DICOM files (0.5-1.1 s for the four tasks' realistic studies). Both are
Python work that holds the GIL, so a thread does not overlap them; a second process on the second core does.
:func:`prefetch_study` forks a child that runs the task's own :meth:`~MedDLLib.pipeline.PipelineTask.read_study`
(which needs only the package's metadata, read without torch) and sends the :class:`~MedDLLib.pipeline.Study`
back through a pipe; :meth:`StudyPrefetch.study` receives it once the model is loaded.

The child only ever saves time: when it fails for any reason (an unreadable study, a study that does not pickle, a
killed child) :meth:`StudyPrefetch.study` returns None and the caller reads the study itself, so errors and their
messages are exactly those of an ordinary read. It is used only where forking is safe and pays: on Linux, before
torch is imported (a process whose torch thread pools are running is never forked), outside the Slicer application,
for a task with a model to load, and unless ``$MEDDL_PREFETCH=0``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: ``0`` turns the prefetch off (``meddl infer`` then reads the study after loading the model).
ENV = "MEDDL_PREFETCH"


@dataclasses.dataclass(frozen=True)
class PackageMetadata:
    """What :meth:`~MedDLLib.pipeline.PipelineTask.read_study` may use of a model before it is loaded: its
    ``metadata`` (``configs/metadata.json``; no weights, no torch)."""

    metadata: dict[str, Any]


class StudyPrefetch:
    """A study being read by a forked child; :meth:`study` collects it, :meth:`close` ends the child."""

    def __init__(self, process: Any, connection: Any, metadata: dict[str, Any]) -> None:
        self._process, self._connection, self.metadata = process, connection, metadata

    def ready(self) -> bool:
        """Whether the child has sent its answer (or ended): :meth:`study` would not wait."""
        try:
            return bool(self._connection.poll(0)) or not self._process.is_alive()
        except (OSError, ValueError):  # a closed pipe
            return True

    def study(self, metadata: dict[str, Any] | None = None) -> Any:
        """The :class:`~MedDLLib.pipeline.Study` the child read, or None: it failed, died, or read it for other
        metadata than ``metadata`` (the loaded model's). Waits for the child; ends it either way."""
        try:
            kind, payload = self._connection.recv()
        except (EOFError, OSError) as exc:  # the child died before sending
            log.info("study prefetch: no study from the child (%s); reading it here", exc)
            return None
        finally:
            self.close()
        if kind != "study":
            log.info("study prefetch: the child could not read the study (%s); reading it here", payload)
            return None
        if metadata is not None and metadata != self.metadata:
            return None  # the package changed while it loaded: read with the loaded model's metadata
        return payload

    def close(self) -> None:
        """End the child (terminated if it is still reading) and release the pipe."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._connection.close()


def prefetch_study(task: Any, input_path: str | os.PathLike, model: Any, options: Any) -> StudyPrefetch | None:
    """Start reading the study at ``input_path`` for ``task`` (with the metadata of ``model``, a package folder or
    cached name) in a forked child; None where that is unsafe or does not pay (see the module docstring) or the
    model cannot be resolved (the ordinary path then reports it)."""
    if not _fork_is_safe() or os.environ.get(ENV, "1").strip() == "0" or not getattr(task, "needs_model", False):
        return None
    try:
        from .models import resolve_model
        from .models.package import read_package_metadata

        metadata = read_package_metadata(resolve_model(model))
    except Exception:  # noqa: BLE001 - the model's errors are reported by the ordinary load, once
        return None
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_read, args=(send, task, Path(input_path), metadata, options),
                              name="meddl-study-prefetch", daemon=True)
    process.start()
    send.close()  # the parent's copy: the pipe closes when the child's does (EOF if it dies)
    return StudyPrefetch(process, receive, metadata)


def _fork_is_safe() -> bool:
    """Linux, torch not imported yet (its thread pools), not the Slicer application (its executable)."""
    from .dicom import _in_slicer_application

    return sys.platform.startswith("linux") and "torch" not in sys.modules and not _in_slicer_application()


def _read(connection: Any, task: Any, input_path: Path, metadata: dict[str, Any], options: Any) -> None:
    """The child: read the study and send ``("study", Study)`` or ``("failed", reason)``."""
    try:
        payload: tuple[str, Any] = ("study", task.read_study(input_path, PackageMetadata(metadata), options))
    except BaseException as exc:  # noqa: BLE001 - the parent reads the study itself and reports the error
        payload = ("failed", f"{type(exc).__name__}: {exc}")
    try:
        connection.send(payload)
    except Exception as exc:  # noqa: BLE001 - e.g. a study that does not pickle
        connection.send(("failed", f"cannot send the study: {type(exc).__name__}: {exc}"))
    finally:
        connection.close()
