"""Qt helpers shared by the widgets of the four MedDL modules (the Qt side of :mod:`MedDLLib.guisupport`).

Imported only by ``<Module>.py`` files inside Slicer, never by ``MedDLLib`` or a ``<Module>Lib`` package. Each
helper is a thin layer over Qt-free, tested code in :mod:`MedDLLib.guisupport`:

- :func:`~MedDLWidgets.dependencies.ensureDependencies`: on the first Apply, install what is missing (torch
  through the PyTorch extension, the rest of ``Resources/requirements.txt`` with ``slicer.packaging.pip_ensure``).
- :class:`~MedDLWidgets.runner.BackgroundRunner`: run ``meddl`` in a child ``PythonSlicer`` process with a
  progress bar, a log view and the Apply button turned into Cancel; a blocking mode for scripts.
- :class:`~MedDLWidgets.modelselector.ModelSelector`: a model combo box with the selected model's card, an
  Import button (folder or .zip, offline) and an Open-cache-folder button.

A module widget uses them like this (ICH Detector as the example)::

    from MedDLWidgets import BackgroundRunner, ModelSelector, ensureDependencies, libraryPaths

    def setup(self):
        ...
        self.models = ModelSelector("ich", self.ui.modelComboBox, self.ui.modelCardView,
                                    self.ui.importModelButton, self.ui.openModelCacheButton)
        self.runner = BackgroundRunner(self.ui.applyButton, self.ui.progressBar, self.ui.logView,
                                       self.ui.statusLabel)

    def onApplyButton(self):
        if self.runner.isRunning():
            self.runner.cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start ICH detection."), waitCursor=True):
            if not ensureDependencies(requester=_("ICH Detector")):
                return
            inputFile, self._outputFolder = self.logic.prepareRun(self._parameterNode.inputVolume)  # main thread
            import ICHDetectorLib, MedDLLib
            self.runner.start(
                ["infer", "ich", "--input", inputFile, "--model", self.models.currentModel(),
                 "--output", self._outputFolder],
                onFinished=self.onRunFinished,
                tasks=["ICHDetectorLib.cli:TASK"],
                pythonPaths=libraryPaths(MedDLLib, ICHDetectorLib),
            )

    def onRunFinished(self, outcome):  # called on the main thread
        if outcome.succeeded:
            with slicer.util.tryWithErrorDisplay(_("Failed to load the results.")):
                self.logic.loadResults(self._outputFolder, self._parameterNode.inputVolume)  # new nodes only
        elif outcome.status == "failed":
            slicer.util.errorDisplay(outcome.message)
"""

from __future__ import annotations

import logging

from .dependencies import ensureDependencies
from .modelselector import ModelSelector
from .runner import BackgroundRunner, libraryPaths

__all__ = ["BackgroundRunner", "ModelSelector", "TaskLogic", "TaskModuleTest", "TaskWidget", "describeTaskModule",
           "ensureDependencies", "libraryPaths", "showUnsupportedSlicer"]


def __getattr__(name: str):
    # these import slicer.ScriptedLoadableModule: only when a module file asks for them
    if name in ("TaskWidget", "TaskLogic", "TaskModuleTest", "describeTaskModule"):
        from . import taskwidget

        return getattr(taskwidget, name)
    raise AttributeError(f"module 'MedDLWidgets' has no attribute {name!r}")


def showUnsupportedSlicer(layout) -> bool:
    """On a Slicer older than MedDL supports, put one line saying which Slicer it needs into ``layout`` (the
    module panel), log it once, and return True: the widget then builds nothing else (nothing is installed)."""
    import qt
    import slicer

    from MedDLLib.guisupport import slicer_version_problem

    app = slicer.app
    message = slicer_version_problem(app.majorVersion, app.minorVersion, getattr(app, "applicationVersion", ""))
    if message is None:
        return False
    logging.warning(message)
    label = qt.QLabel(message)
    label.wordWrap = True
    layout.addWidget(label)
    return True
