"""ICH Detector: the 3D Slicer module (GUI, parameter node and self-test) of MedDL.

Detects intracranial hemorrhage and its subtype (epidural, intraparenchymal, intraventricular, subarachnoid,
subdural) on a head CT, slice by slice and for the whole study, with a Grad-CAM heatmap and a suspected-region
segmentation.

The widget is thin (see ARCHITECTURE.md and ``MedDLWidgets``): on Apply it writes the input volume to a run
folder, runs ``meddl infer ich`` in a child ``PythonSlicer`` (progress, log, Cancel; the GUI never waits) and
loads the outputs as new nodes. Everything but the Qt calls lives in Qt-free, tested code:
``MedDLLib.results`` (files <-> nodes), ``ICHDetectorLib.widgetlogic`` (this task's command line and outputs) and
``ICHDetectorLib.logic`` (the computation, also usable directly from the Python console).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Opacity of the Grad-CAM heatmap over the CT in the slice views.
HEATMAP_OPACITY = 0.5

#
# ICHDetector
#


class ICHDetector(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        # `meddl ... ich` inside Slicer (console, `Slicer --python-script meddl_batch.py`): no pip metadata there
        from MedDLLib.tasks import register_task_entry

        register_task_entry("ich", "ICHDetectorLib.cli:TASK")
        self.parent.title = _("ICH Detector")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedDL")]
        self.parent.dependencies = ["MedDLExtension"]
        self.parent.contributors = ["MedDL developers"]
        self.parent.helpText = _(
            "Detects intracranial hemorrhage and its subtype (epidural, intraparenchymal, intraventricular, "
            "subarachnoid, subdural) on a non-contrast head CT, slice by slice and for the whole study. "
            "Outputs: a table and a plot of the per-slice probabilities, the study-level result, a Grad-CAM "
            "heatmap of the chosen label and a suspected-region segmentation. "
            "Select the head CT and a model (train one with 'meddl train ich' or import a model package), then "
            "Apply; the computation runs in the background and can be cancelled. "
            "Research use only, not for diagnosis."
        )
        self.parent.acknowledgementText = _("MedDL is built on 3D Slicer, PyTorch and MONAI. Research use only.")


#
# ICHDetectorParameterNode
#


@parameterNodeWrapper
class ICHDetectorParameterNode:
    """The parameters of the module, saved with the scene.

    inputVolume - A non-contrast head CT series (Hounsfield units).
    modelName - The selected model package (set by the model selector, not bound to a widget).
    heatmapLabel - The label Grad-CAM explains (ICHDetectorLib.dataset.LABELS).
    threshold - Decision threshold on the study-level 'any' probability (ICHDetectorLib.logic.ICHOptions).
    forceCpu - Run the network on the CPU even when a GPU is available.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""
    heatmapLabel: Annotated[
        str, Choice(["any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"])
    ] = "any"
    threshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5
    forceCpu: bool = False


#
# ICHDetectorWidget
#


class ICHDetectorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Input, model and options; Apply runs ``meddl infer ich`` in the background and shows the results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self.models = None
        self.runner = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None  # (input volume, output folder) of the run in progress

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from MedDLWidgets import showUnsupportedSlicer

        if showUnsupportedSlicer(self.layout):  # one line saying which Slicer MedDL needs, nothing else
            return

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ICHDetector.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ICHDetectorLogic()

        from MedDLWidgets import BackgroundRunner, ModelSelector

        self.models = ModelSelector(
            "ich",
            self.ui.modelComboBox,
            self.ui.modelCardView,
            self.ui.importModelButton,
            self.ui.openModelCacheButton,
            onChanged=self.onModelChanged,
        )
        self.runner = BackgroundRunner(self.ui.applyButton, self.ui.progressBar, self.ui.logView, self.ui.statusLabel)

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
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.runner.cancel()  # its input and outputs belong to the scene being closed
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: ICHDetectorParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets in the .ui carry the dynamic property "SlicerParameterName" naming their field.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.models.refresh(select=self._parameterNode.modelName or None)
            self._checkCanApply()

    def onModelChanged(self, modelName: str | None) -> None:
        if self._parameterNode:
            self._parameterNode.modelName = modelName or ""

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self.runner.isRunning():
            return  # the button is Cancel until the run ends
        if not self._parameterNode or not self._parameterNode.inputVolume:
            self.ui.applyButton.toolTip = _("Select the head CT volume")
            self.ui.applyButton.enabled = False
        elif not self.models.currentModel():  # none selected, or the saved one is missing/broken
            self.ui.applyButton.toolTip = _("Select or import an ICH model")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Detect hemorrhage on the selected head CT")
            self.ui.applyButton.enabled = True

    def onApplyButton(self) -> None:
        """Start a run, or cancel the one in progress (the button reads Cancel meanwhile)."""
        if self.runner.isRunning():
            self.runner.cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start ICH detection."), waitCursor=True):
            from MedDLWidgets import ensureDependencies, libraryPaths

            if not ensureDependencies(requester=_("ICH Detector")):
                return
            import ICHDetectorLib
            import MedDLLib
            from ICHDetectorLib import widgetlogic

            p = self._parameterNode
            self.ui.summaryLabel.text = ""
            arguments, outputFolder = self.logic.prepareRun(
                p.inputVolume, p.modelName, p.heatmapLabel, p.threshold, p.forceCpu, slicer.app.temporaryPath
            )
            self._run = (p.inputVolume, outputFolder)
            self.runner.start(
                arguments,
                onFinished=self.onRunFinished,
                tasks=[widgetlogic.TASK_ENTRY],
                pythonPaths=libraryPaths(MedDLLib, ICHDetectorLib),
            )

    def onRunFinished(self, outcome) -> None:
        """Called on the main thread when the child ends: load the outputs as new nodes and show them."""
        inputVolume, outputFolder = self._run
        self._run = None
        self._checkCanApply()
        if outcome.status == "failed":
            slicer.util.errorDisplay(_("ICH detection failed: {message}").format(message=outcome.message))
        if not outcome.succeeded:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the ICH results."), waitCursor=True):
            loaded = self.logic.loadResults(outputFolder, inputVolume)
            self.ui.summaryLabel.text = loaded.summary
            self.showResults(inputVolume, loaded.nodes)

    def showResults(self, inputVolume, nodes: dict) -> None:
        """Slice views: CT below, heatmap on top, segmentation outlined; the table and the plot in the layout."""
        slicer.util.setSliceViewerLayers(
            background=inputVolume, foreground=nodes["heatmap"], foregroundOpacity=HEATMAP_OPACITY, label=None
        )
        nodes["segmentation"].GetDisplayNode().SetVisibility(True)
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        applicationLogic = slicer.app.applicationLogic()
        selectionNode = applicationLogic.GetSelectionNode()
        selectionNode.SetActiveTableID(nodes["table"].GetID())
        applicationLogic.PropagateTableSelection()
        selectionNode.SetActivePlotChartID(nodes["plot"].GetID())
        applicationLogic.PropagatePlotChartSelection()


#
# ICHDetectorLogic
#


class ICHDetectorLogic(ScriptedLoadableModuleLogic):
    """Parameter node access and the two scene-side steps of a widget run (Qt-free).

    The computation is ``ICHDetectorLib.logic.ICHDetectorLogic``; from the Python console call it directly::

        from ICHDetectorLib.logic import ICHDetectorLogic, ICHOptions
        result = ICHDetectorLogic().process(volumeNode, "my-ich-model", ICHOptions(heatmap_label="subdural"))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> ICHDetectorParameterNode:
        return ICHDetectorParameterNode(super().getParameterNode())

    def prepareRun(
        self,
        inputVolume,
        modelName: str,
        heatmapLabel: str = "any",
        threshold: float = 0.5,
        forceCpu: bool = False,
        runRoot: str | None = None,
    ) -> tuple[list[str], Path]:
        """Write ``inputVolume`` to a new run folder; return the ``meddl`` arguments and the output folder."""
        from ICHDetectorLib import widgetlogic
        from MedDLLib import results

        runFolder = results.new_run_folder(widgetlogic.TASK, runRoot)
        (inputFile,) = results.prepare_input([inputVolume], runFolder / "input", names=["head_ct"])
        outputFolder = runFolder / "output"
        arguments = widgetlogic.infer_arguments(
            inputFile, modelName, outputFolder, heatmap_label=heatmapLabel, threshold=threshold, force_cpu=forceCpu
        )
        return arguments, outputFolder

    def loadResults(self, outputFolder: Path, inputVolume):
        """Add the run's outputs to the input's scene as new nodes; returns ``MedDLLib.results.LoadedOutputs``
        (``nodes``: heatmap, segmentation, table, plot, with the ``result.json`` values as ``MedDL.*``
        attributes; ``summary``: the line to show)."""
        from ICHDetectorLib import widgetlogic

        return widgetlogic.load_results(outputFolder, inputVolume)


#
# ICHDetectorTest
#


class ICHDetectorTest(ScriptedLoadableModuleTest):
    """Runs the shared self-test bodies of ``ICHDetectorLib.selftests`` (the same ones pytest runs headless)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ParameterNode()
        import ICHDetectorLib.selftests

        for test in ICHDetectorLib.selftests.ALL:
            self.setUp()
            self.delayDisplay(f"Running {test.__name__}")
            test(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_ParameterNode(self):
        """The parameter node starts with the logic's defaults and keeps a selected input volume."""
        from ICHDetectorLib.logic import ICHOptions
        from ICHDetectorLib.widgetlogic import HEATMAP_LABELS

        parameterNode = ICHDetectorLogic().getParameterNode()
        self.assertIsNone(parameterNode.inputVolume)
        self.assertEqual(parameterNode.heatmapLabel, ICHOptions().heatmap_label)
        self.assertAlmostEqual(parameterNode.threshold, ICHOptions().threshold)
        self.assertIn(parameterNode.heatmapLabel, HEATMAP_LABELS)
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        parameterNode.inputVolume = volumeNode
        self.assertEqual(ICHDetectorLogic().getParameterNode().inputVolume.GetID(), volumeNode.GetID())
