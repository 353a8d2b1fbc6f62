"""Qt helpers shared by the widgets of the four MedDL modules (the Qt side of :mod:`MedDLLib.guisupport`).

Imported only by ``<Module>.py`` files inside Slicer, never by ``MedDLLib`` or a ``<Module>Lib`` package. Each
helper is a thin layer over Qt-free, tested code in :mod:`MedDLLib.guisupport`:

- :func:`~MedDLWidgets.dependencies.ensureDependencies`: on the first Apply, install what is missing (torch
  through the PyTorch extension, the rest of ``Resources/requirements.txt`` with ``slicer.packaging.pip_ensure``).
- :class:`~MedDLWidgets.runner.BackgroundRunner`: run ``meddl`` in a child ``PythonSlicer`` process with a
  progress bar, a log view and the Apply button turned into Cancel; a blocking mode for scripts.
- :class:`~MedDLWidgets.modelselector.ModelSelector`: a model combo box with the selected model's card, an
  Import button (folder or .zip, offline) and an Open-cache-folder button.
- :class:`~MedDLWidgets.taskwidget.TaskWidget`, :class:`~MedDLWidgets.taskwidget.TaskLogic`,
  :class:`~MedDLWidgets.taskwidget.TaskModuleTest`, :func:`~MedDLWidgets.taskwidget.describeTaskModule`: what the
  four task modules share (parameter node plumbing, model selector, Apply/Cancel, progress, scene close, results,
  the self-test); each ``<Module>.py`` is a short subclass naming its task and a few hooks;
- :func:`~MedDLWidgets.parameters.withOptions`: the parameter node fields of a task's declared options
  (:mod:`MedDLLib.options`).

A module's widget (ICH Detector as the example; see :mod:`MedDLWidgets.taskwidget` for the hooks)::

    @parameterNodeWrapper
    @withOptions(options.INFER)          # heatmapLabel, threshold, forceCpu
    class ICHDetectorParameterNode:
        inputVolume: vtkMRMLScalarVolumeNode
        modelName: str = ""

    class ICHDetectorWidget(TaskWidget):
        task = "ich"
        taskEntry = "ICHDetectorLib.cli:TASK"
        options = options.INFER
        inputHint = _("Select the head CT volume")

        def createLogic(self):
            return ICHDetectorLogic()
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
