"""What every MedDL task module shares: the widget (parameter node, model selector, Apply/Cancel, progress,
results), the module description (:func:`describeTaskModule`) and the Slicer self-test (:class:`TaskModuleTest`).

A task module's widget is a short subclass of :class:`TaskWidget`. It names its task and gives a few hooks; the
base does the rest as Slicer's scripted-module template does it (parameter node observed and bound to the
``.ui`` through ``SlicerParameterName``, scene close/reopen, enter/exit), plus what every MedDL run needs:

- the :class:`~MedDLWidgets.modelselector.ModelSelector` (the saved choice is kept, shown missing, when its
  package is not in the cache; it follows the parameter node when a scene is loaded);
- Apply: :func:`~MedDLWidgets.dependencies.ensureDependencies`, the device the run will use (shown in the status
  line and the log), the task's run folder and ``meddl`` arguments (hook; ``--dicom-source`` added when the
  reference volume came from Slicer's DICOM module, so segmentations also go out as DICOM SEG), the child process
  through :class:`~MedDLWidgets.runner.BackgroundRunner` (progress, log, the button reads Cancel meanwhile);
- when the child ends: a failure reaches ``slicer.util.errorDisplay``; on success the outputs load as new nodes
  and show in the views (hook).

Names follow Slicer's own conventions (module ``ICHDetector``: ``ICHDetectorLogic`` in the same file, the task
library ``ICHDetectorLib`` with ``cli.TASK``, ``options.INFER``, ``widgetlogic`` and ``selftests``), so a module
gives only its task name, its messages and the hooks where it differs::

    class ICHDetectorWidget(TaskWidget):
        task = "ich"
        inputHint = _("Select the head CT volume")
        modelHint = _("Select or import an ICH model")
        applyHint = _("Detect hemorrhage on the selected head CT")

    class ICHDetectorLogic(TaskLogic):
        inputName = "head_ct"

    class ICHDetectorTest(TaskModuleTest):
        pass
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Opacity of a Grad-CAM heatmap over its volume in the slice views.
HEATMAP_OPACITY = 0.5


class TaskWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Base of the four task widgets (see the module docstring for the hooks)."""

    #: ``meddl`` task name ("ich", "glioma", "lgg", "lung").
    task = ""
    #: ``module:attribute`` of the task object the child registers (Slicer has no entry points); default
    #: ``<Module>Lib.cli:TASK``.
    taskEntry = ""
    #: Apply's tool tip while the input is missing (used by the default :meth:`missingInput`).
    inputHint = ""
    #: Apply's tool tip while no usable model is selected.
    modelHint = ""
    #: Apply's tool tip when it can run.
    applyHint = ""
    #: The task's declared options (parameter node fields -> child command); default ``<Module>Lib.options.INFER``.
    options: tuple | None = None
    #: An optional helper model offered beside the task's model (:class:`~MedDLWidgets.modelselector.BundleSelector`):
    #: ``(str option field, combo box name in the .ui, output labels a bundle must have, "none" entry text)``.
    helperModel: tuple | None = None

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self.models = None
        self.runner = None
        self.device = ""  # the device of the last run started ("cpu (2 threads)", "cuda:0 (...)")
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None  # (reference volume, output folder) of the run in progress

    # ---------------------------------------------------------------------------------------------- hooks
    def createLogic(self):
        """The module's logic (parameter node access, prepareRun, loadResults); default ``<Module>Logic()`` of the
        module's file."""
        return getattr(importlib.import_module(type(self).__module__), f"{self.moduleName}Logic")()

    def initializeInputs(self, parameterNode) -> None:
        """Fill empty input fields when the parameter node is (re)initialised; default: ``inputVolume`` gets
        the scene's first scalar volume that is not a label map."""
        if hasattr(parameterNode, "inputVolume") and not parameterNode.inputVolume:
            volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if not n.IsA("vtkMRMLLabelMapVolumeNode")]
            if volumes:
                parameterNode.inputVolume = volumes[0]

    def missingInput(self, parameterNode) -> str:
        """Why Apply cannot run yet ("" when it can); default: ``inputVolume`` unset, or no usable model."""
        if not parameterNode.inputVolume:
            return self.inputHint
        if not self.models.currentModel():  # none selected, or the saved one is missing/broken
            return self.modelHint
        return ""

    def prepareRun(self, parameterNode, runRoot: str) -> tuple[list[str], Path, Any]:
        """Write the inputs to a new run folder under ``runRoot``; return the ``meddl`` arguments, the output
        folder and the reference volume (results are placed beside it). Default: the one ``inputVolume`` and the
        parameter node's option values (:class:`TaskLogic`)."""
        from MedDLWidgets.parameters import optionValues

        values = optionValues(parameterNode, self.options)
        arguments, outputFolder = self.logic.prepareRun(parameterNode.inputVolume, parameterNode.modelName, values,
                                                        runRoot)
        return arguments, outputFolder, parameterNode.inputVolume

    def modelSelected(self, modelName: str) -> None:
        """Called when the model selection changes (after the parameter node took it)."""

    def showResults(self, referenceVolume, nodes: dict) -> None:
        """Slice views: the reference below, a heatmap on top, a segmentation outlined; the table (and the plot,
        if any) in the layout."""
        slicer.util.setSliceViewerLayers(background=referenceVolume, foreground=nodes.get("heatmap"),
                                         foregroundOpacity=HEATMAP_OPACITY, label=None)
        if "segmentation" in nodes:
            nodes["segmentation"].GetDisplayNode().SetVisibility(True)
        if "labelmap" in nodes:
            nodes["labelmap"].GetDisplayNode().SetVisibility(False)  # the segmentation shows the same voxels
        layouts = slicer.vtkMRMLLayoutNode
        plot = nodes.get("plot")
        slicer.app.layoutManager().setLayout(layouts.SlicerLayoutFourUpPlotTableView if plot else
                                             layouts.SlicerLayoutFourUpTableView)
        applicationLogic = slicer.app.applicationLogic()
        selectionNode = applicationLogic.GetSelectionNode()
        selectionNode.SetActiveTableID(nodes["table"].GetID())
        applicationLogic.PropagateTableSelection()
        if plot:
            selectionNode.SetActivePlotChartID(plot.GetID())
            applicationLogic.PropagatePlotChartSelection()

    # ---------------------------------------------------------------------------------------------- template
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from MedDLWidgets import BackgroundRunner, ModelSelector, showUnsupportedSlicer

        if showUnsupportedSlicer(self.layout):  # one line saying which Slicer MedDL needs, nothing else
            return
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.createLogic()
        if not self.taskEntry:
            self.taskEntry = f"{self.moduleName}Lib.cli:TASK"
        if self.options is None:
            self.options = importlib.import_module(f"{self.moduleName}Lib.options").INFER
        self.models = ModelSelector(self.task, self.ui.modelComboBox, self.ui.modelCardView,
                                    self.ui.importModelButton, self.ui.openModelCacheButton,
                                    onChanged=self.onModelChanged)
        self.runner = BackgroundRunner(self.ui.applyButton, self.ui.progressBar, self.ui.logView, self.ui.statusLabel)
        self.helperModels = None
        if self.helperModel:
            from MedDLWidgets.modelselector import BundleSelector

            field, comboBoxName, outputs, noneText = self.helperModel
            self.helperModels = BundleSelector(getattr(self.ui, comboBoxName), outputs, field, noneText)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.runner is not None:
            self.runner.cancel()
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is not None:  # None: setup stopped on an unsupported Slicer
            self.initializeParameterNode()

    def exit(self) -> None:
        if self.logic is not None:
            self.setParameterNode(None)  # the GUI stops following the node until the module is entered again

    def onSceneStartClose(self, caller, event) -> None:
        self.runner.cancel()  # its inputs and outputs belong to the scene being closed
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.initializeInputs(self._parameterNode)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets in the .ui carry the dynamic property "SlicerParameterName" naming their field.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.models.refresh(select=self._parameterNode.modelName or None)
            self._checkCanApply()
        if getattr(self, "helperModels", None) is not None:
            self.helperModels.follow(self._parameterNode)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """The node changed (a widget, a script, a loaded scene): the model selector and Apply follow it."""
        p = self._parameterNode
        if p and p.modelName and p.modelName != self.models.selectedName():
            self.models.refresh(select=p.modelName)  # e.g. a saved scene was loaded into the node
        if p and getattr(self, "helperModels", None) is not None:
            self.helperModels.follow(p)
        self._checkCanApply()

    def onModelChanged(self, modelName: str | None) -> None:
        if self._parameterNode:
            self._parameterNode.modelName = modelName or ""
        self.modelSelected(modelName or "")

    def _checkCanApply(self) -> None:
        if self.runner.isRunning():
            return  # the button is Cancel until the run ends
        problem = self.missingInput(self._parameterNode) if self._parameterNode else self.inputHint
        self.ui.applyButton.toolTip = problem or self.applyHint
        self.ui.applyButton.enabled = not problem

    # ---------------------------------------------------------------------------------------------- a run
    def title(self) -> str:
        """The module's title as Slicer lists it ("ICH Detector")."""
        return slicer.util.getModule(self.moduleName).title

    def onApplyButton(self) -> None:
        """Start a run, or cancel the one in progress (the button reads Cancel meanwhile)."""
        if self.runner.isRunning():
            self.runner.cancel()
            return
        title = self.title()
        with slicer.util.tryWithErrorDisplay(_("Failed to start {title}.").format(title=title), waitCursor=True):
            from MedDLWidgets import ensureDependencies, libraryPaths

            if not ensureDependencies(requester=title):
                return
            import MedDLLib
            from MedDLLib.device import describe_device, select_device

            p = self._parameterNode
            self.device = describe_device(select_device(force_cpu=bool(getattr(p, "forceCpu", False))))
            self.ui.summaryLabel.text = ""
            arguments, outputFolder, referenceVolume = self.prepareRun(p, slicer.app.temporaryPath)
            arguments = [*arguments, *self.logic.dicomSourceArguments(referenceVolume)]
            self._run = (referenceVolume, outputFolder)
            taskLibrary = importlib.import_module(self.taskEntry.split(".")[0])
            self.runner.start(arguments, onFinished=self.onRunFinished, tasks=[self.taskEntry],
                              pythonPaths=libraryPaths(MedDLLib, taskLibrary), device=self.device)

    def onRunFinished(self, outcome) -> None:
        """Called on the main thread when the child ends: load the outputs as new nodes and show them."""
        referenceVolume, outputFolder = self._run
        self._run = None
        self._checkCanApply()
        title = self.title()
        if outcome.status == "failed":
            slicer.util.errorDisplay(_("{title} failed: {message}").format(title=title, message=outcome.message))
        if not outcome.succeeded:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the {title} results.").format(title=title),
                                             waitCursor=True):
            loaded = self.logic.loadResults(outputFolder, referenceVolume)
            self.ui.summaryLabel.text = loaded.summary
            self.showResults(referenceVolume, loaded.nodes)


def describeTaskModule(parent, title: str, helpText: str) -> None:
    """Fill what every MedDL task module tells Slicer besides its title and help: the MedDL category, the
    dependency on the shared library module, contributors and acknowledgement."""
    from slicer.i18n import translate

    parent.title = title
    parent.categories = [translate("qSlicerAbstractCoreModule", "MedDL")]
    parent.dependencies = ["MedDLExtension"]
    parent.contributors = ["MedDL developers"]
    parent.helpText = helpText
    parent.acknowledgementText = _("MedDL is built on 3D Slicer, PyTorch and MONAI. Research use only.")


class TaskModuleTest(ScriptedLoadableModuleTest):
    """A task module's Slicer self-test: the parameter node's defaults (``<Module>Lib.options.INFER``), then the
    shared self-test bodies of ``<Module>Lib.selftests`` (the same ones pytest runs headless) on
    ``slicer.mrmlScene``. A module's ``<Module>Test`` may name ``inputField`` (a volume field of its parameter node).
    """

    inputField = "inputVolume"

    @property
    def moduleName(self) -> str:
        return type(self).__name__[: -len("Test")]

    def createLogic(self):
        return getattr(importlib.import_module(type(self).__module__), f"{self.moduleName}Logic")()

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ParameterNode()
        for test in importlib.import_module(f"{self.moduleName}Lib.selftests").ALL:
            self.setUp()
            self.delayDisplay(f"Running {test.__name__}")
            test(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_ParameterNode(self):
        """The parameter node starts with the declared options' defaults and keeps a selected input volume."""
        from MedDLLib.options import widget_options

        parameterNode = self.createLogic().getParameterNode()
        for option in widget_options(importlib.import_module(f"{self.moduleName}Lib.options").INFER):
            self.assertEqual(getattr(parameterNode, option.field), option.default, option.name)
        self.assertIsNone(getattr(parameterNode, self.inputField))
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        setattr(parameterNode, self.inputField, volumeNode)
        self.assertEqual(getattr(self.createLogic().getParameterNode(), self.inputField).GetID(), volumeNode.GetID())


class TaskLogic(ScriptedLoadableModuleLogic):
    """A task module's logic: parameter node access (the module's ``getParameterNode``) and the two scene-side
    steps of a widget run, through the task's Qt-free ``<Task>Lib.widgetlogic`` (``TASK``, ``infer_arguments``,
    ``load_results``). The computation itself is ``<Task>Lib.logic`` (also usable from the Python console).

    A module names, for a one-volume task, ``inputName`` (the input file's stem); a task with several inputs
    overrides :meth:`prepareRun`. ``widgetlogic`` defaults to ``<Module>Lib.widgetlogic``.
    """

    widgetlogic = ""
    inputName = ""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # sets moduleName from the class name
        self.widgetlogic = self.widgetlogic or f"{self.moduleName}Lib.widgetlogic"

    def prepareRun(self, inputVolume, modelName: str, values: dict | None = None, runRoot: str | None = None
                   ) -> tuple[list[str], Path]:
        """Write ``inputVolume`` to a new run folder; return the ``meddl`` arguments (``values``: the run's
        options by name, see ``MedDLWidgets.parameters.optionValues``) and the output folder."""
        from MedDLLib import results

        taskLogic = importlib.import_module(self.widgetlogic)
        runFolder = results.new_run_folder(taskLogic.TASK, runRoot)
        (inputFile,) = results.prepare_input([inputVolume], runFolder / "input", names=[self.inputName])
        outputFolder = runFolder / "output"
        return taskLogic.infer_arguments(inputFile, modelName, outputFolder, **(values or {})), outputFolder

    def dicomSourceArguments(self, referenceVolume) -> list[str]:
        """``["--dicom-source", FILE]`` when ``referenceVolume`` was loaded through Slicer's DICOM module (its
        ``DICOM.instanceUIDs``, found in ``slicer.dicomDatabase``), else ``[]``: the child then also writes each
        segmentation as DICOM SEG referencing that series (:func:`MedDLLib.pipeline.write_dicom_seg`)."""
        from MedDLLib.nodes import dicom_source_file

        database = getattr(slicer, "dicomDatabase", None)
        source = dicom_source_file(referenceVolume, database.fileForInstance if database is not None else None)
        return ["--dicom-source", source] if source else []

    def loadResults(self, outputFolder: Path, referenceVolume):
        """Add the run's outputs to the reference volume's scene as new nodes; returns
        ``MedDLLib.results.LoadedOutputs`` (``nodes`` with the ``result.json`` values as ``MedDL.*`` attributes,
        ``summary``: the line to show)."""
        return importlib.import_module(self.widgetlogic).load_results(outputFolder, referenceVolume)
