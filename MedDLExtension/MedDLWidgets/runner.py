"""Run ``meddl`` in a child ``PythonSlicer`` process while the module's widgets show what it does.

The GUI never waits: :class:`MedDLLib.guisupport.ChildProcess` reads the child's output in two threads and a
``QTimer`` on the main thread polls it every 100 ms, updating the progress bar (busy until the child reports a
fraction), the status label and the log view. The Apply button reads "Cancel" while the child runs; the result
is handed to ``onFinished`` on the main thread, where the module loads the outputs into the scene. The child
runs the same ``meddl`` command as batch runs and the command line (see :func:`MedDLLib.guisupport.child_command`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import qt
import slicer
from slicer.i18n import tr as _

from MedDLLib import guisupport

_PROGRESS_STEPS = 1000


def libraryPaths(*packages) -> list[str]:
    """The folders to put on the child's ``PYTHONPATH``: the parents of imported packages (MedDLLib, <Task>Lib).

    In an installed extension they are all one folder; in a source tree each module folder is one entry.
    """
    return list(dict.fromkeys(str(Path(package.__file__).resolve().parents[1]) for package in packages))


class BackgroundRunner:
    """Runs ``meddl`` in the background for a module widget (see the package docstring for an example).

    Args:
        applyButton: the module's Apply button; it reads "Cancel" (and stays enabled) while a run is going on.
        progressBar: a ``QProgressBar`` (optional).
        logView: a ``QPlainTextEdit`` (read-only) receiving the child's log (optional).
        statusLabel: a ``QLabel`` with the latest progress message (optional).
        pollIntervalMs: how often the child's output is read.
    """

    def __init__(self, applyButton, progressBar=None, logView=None, statusLabel=None, pollIntervalMs: int = 100):
        self.applyButton = applyButton
        self.progressBar = progressBar
        self.logView = logView
        self.statusLabel = statusLabel
        self.lastOutcome: guisupport.RunOutcome | None = None
        self._child: guisupport.ChildProcess | None = None
        self._onFinished: Callable[[guisupport.RunOutcome], None] | None = None
        self._applyText = applyButton.text
        self._applyToolTip = applyButton.toolTip
        self._applyEnabled = applyButton.enabled
        if logView is not None:
            logView.setReadOnly(True)
            logView.setMaximumBlockCount(5000)  # keep memory bounded on long runs
        if progressBar is not None:
            progressBar.setRange(0, _PROGRESS_STEPS)
            progressBar.setValue(0)
        self._timer = qt.QTimer()
        self._timer.setInterval(pollIntervalMs)
        self._timer.connect("timeout()", self._poll)

    # -------------------------------------------------------------------------------------------------- public
    def isRunning(self) -> bool:
        return self._child is not None and self._child.running

    def start(
        self,
        meddlArgs: Sequence[str],
        onFinished: Callable[[guisupport.RunOutcome], None] | None = None,
        tasks: Sequence[str] = (),
        pythonPaths: Sequence[str] = (),
        workingFolder: str | None = None,
        device: str = "",
    ) -> None:
        """Start ``meddl <meddlArgs>`` in the background and return at once.

        Args:
            meddlArgs: the ``meddl`` command line, e.g. ``["infer", "ich", "--input", f, "--output", d]``.
            onFinished: called on the main thread with the :class:`~MedDLLib.guisupport.RunOutcome`.
            tasks: ``module:attribute`` of the task objects the child registers (``"ICHDetectorLib.cli:TASK"``).
            pythonPaths: folders holding MedDLLib and the task library (see :func:`libraryPaths`; default:
                MedDLLib's).
            workingFolder: the child's working folder.
            device: the device the run will use (``MedDLLib.device.describe_device``), shown in the status line
                and the log before the child starts.
        """
        if self.isRunning():
            raise RuntimeError(_("A run is already in progress; cancel it first."))
        if not pythonPaths:
            import MedDLLib

            pythonPaths = libraryPaths(MedDLLib)
        command = guisupport.child_command(guisupport.python_executable(), meddlArgs)
        env = guisupport.child_environment(slicer.util.startupEnvironment(), pythonPaths, tasks)
        self._appendLog(_("Running: meddl {arguments}").format(arguments=" ".join(map(str, meddlArgs))))
        self._onFinished = onFinished
        self.lastOutcome = None
        self._child = guisupport.ChildProcess(command, env, cwd=workingFolder)
        self._setRunning(True)
        if device:
            self._appendLog(_("Runs on {device}").format(device=device))
            self._setStatus(_("Starting on {device}...").format(device=device))
        self._timer.start()
        self._poll()

    def cancel(self) -> None:
        """Stop the running child (terminated, killed after a few seconds); ``onFinished`` gets "cancelled"."""
        if self.isRunning():
            self._child.cancel()
            self._setStatus(_("Cancelling..."))

    def runBlocking(
        self,
        meddlArgs: Sequence[str],
        tasks: Sequence[str] = (),
        pythonPaths: Sequence[str] = (),
        workingFolder: str | None = None,
    ) -> guisupport.RunOutcome:
        """The same run, returning its outcome when it ends (for scripts and tests); the widgets still update.

        Without any widget, scripts can call :func:`MedDLLib.guisupport.run_child_blocking` or the module logic.
        """
        self.start(meddlArgs, None, tasks, pythonPaths, workingFolder)
        while self.isRunning():
            self._poll()
            slicer.app.processEvents()
            time.sleep(0.05)
        self._poll()
        return self.lastOutcome

    # -------------------------------------------------------------------------------------------------- private
    def _poll(self) -> None:
        child = self._child
        if child is None:
            return
        for message in child.poll():
            self._show(message)
        if child.outcome is None:
            return
        self._timer.stop()
        self._child = None
        self.lastOutcome = child.outcome
        self._setRunning(False)
        self._showOutcome(child.outcome)
        callback, self._onFinished = self._onFinished, None
        if callback is not None:
            callback(child.outcome)

    def _show(self, message: guisupport.Message) -> None:
        if message.kind == "progress":
            self._setProgress(message.progress)
            if message.message:
                self._setStatus(message.message)
                self._appendLog(f"[{message.progress:4.0%}] {message.message}")
        elif message.kind == "status":
            self._setStatus(message.message)
        elif message.kind == "error":
            self._appendLog(_("Error: {message}").format(message=message.message))
        elif message.kind == "log":
            self._appendLog(message.message)

    def _showOutcome(self, outcome: guisupport.RunOutcome) -> None:
        if outcome.succeeded:
            self._setProgress(1.0)
            self._setStatus(_("Done."))
        elif outcome.status == "cancelled":
            self._setStatus(_("Cancelled."))
            self._appendLog(_("Cancelled."))
        else:
            self._setStatus(_("Failed: {message}").format(message=outcome.message))
            self._appendLog(_("Failed: {message}").format(message=outcome.message))

    def _setRunning(self, running: bool) -> None:
        if running:
            self._applyEnabled = self.applyButton.enabled
            self.applyButton.text = _("Cancel")
            self.applyButton.toolTip = _("Stop the computation running in the background")
            self.applyButton.enabled = True
            self._setProgress(None)
            self._setStatus(_("Starting..."))
        else:
            self.applyButton.text = self._applyText
            self.applyButton.toolTip = self._applyToolTip
            self.applyButton.enabled = self._applyEnabled

    def _setProgress(self, fraction: float | None) -> None:
        if self.progressBar is None:
            return
        if fraction is None:  # busy indicator until the child reports a fraction
            self.progressBar.setRange(0, 0)
        else:
            self.progressBar.setRange(0, _PROGRESS_STEPS)
            self.progressBar.setValue(round(fraction * _PROGRESS_STEPS))

    def _setStatus(self, text: str) -> None:
        if self.statusLabel is not None:
            self.statusLabel.text = text

    def _appendLog(self, text: str) -> None:
        if self.logView is not None:
            self.logView.appendPlainText(text)
