"""LGG Segmenter: the 3D Slicer module (GUI, parameter node and self-test) of MedDL.

Segments a lower-grade glioma on brain MRI (FLAIR, or the pre-contrast/FLAIR/post-contrast stack of TCGA-LGG) and
reports its size, location and spread as a table.

The widget is thin (see ARCHITECTURE.md and ``MedDLWidgets``): on Apply it writes the input volume(s) to a run
folder, runs ``meddl infer lgg`` in a child ``PythonSlicer`` (progress, log, Cancel; the GUI never waits) and
loads the outputs as new nodes. Everything but the Qt calls lives in Qt-free, tested code:
``MedDLLib.results`` (files <-> nodes), ``LGGSegmenterLib.widgetlogic`` (this task's inputs, command line and
outputs) and ``LGGSegmenterLib.logic`` (the computation, also usable directly from the Python console).
"""

from __future__ import annotations

from pathlib import Path

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Opacity of the Grad-CAM heatmap over the FLAIR in the slice views.
HEATMAP_OPACITY = 0.5

#
# LGGSegmenter
#


class LGGSegmenter(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        # `meddl ... lgg` inside Slicer (console, `Slicer --python-script meddl_batch.py`): no pip metadata there
        from MedDLLib.tasks import register_task_entry

        register_task_entry("lgg", "LGGSegmenterLib.cli:TASK")
        self.parent.title = _("LGG Segmenter")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedDL")]
        self.parent.dependencies = ["MedDLExtension"]
        self.parent.contributors = ["MedDL developers"]
        self.parent.helpText = _(
            "Segments a lower-grade glioma on brain MRI (FLAIR, or the pre-contrast/FLAIR/post-contrast stack of "
            "TCGA-LGG) and reports its size, location and spread: a tumour segmentation (reference geometry = the "
            "FLAIR), a labelmap, a features table (per-slice area, volume in mL, centroid and spread in mm) and, "
            "optionally, a Grad-CAM heatmap. "
            "Select the FLAIR (and, for a three-channel model, the pre- and post-contrast volumes on the same voxel "
            "grid) and a model, then Apply; the computation runs in the background and can be cancelled. "
            "Research use only, not for diagnosis."
        )
        self.parent.acknowledgementText = _("MedDL is built on 3D Slicer, PyTorch and MONAI. Research use only.")


#
# LGGSegmenterParameterNode
#


@parameterNodeWrapper
class LGGSegmenterParameterNode:
    """The parameters of the module, saved with the scene.

    inputVolume - The brain MRI FLAIR volume.
    preContrastVolume - Optional pre-contrast T1 on the FLAIR's grid (three-channel models, with postContrastVolume).
    postContrastVolume - Optional post-contrast T1 on the FLAIR's grid.
    modelName - The selected model package (set by the model selector, not bound to a widget).
    gradcam - Also compute a Grad-CAM heatmap of the tumour prediction.
    forceCpu - Run the network on the CPU even when a GPU is available.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    preContrastVolume: vtkMRMLScalarVolumeNode
    postContrastVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""
    gradcam: bool = False
    forceCpu: bool = False


#
# LGGSegmenterWidget
#


class LGGSegmenterWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Input, model and options; Apply runs ``meddl infer lgg`` in the background and shows the results."""

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

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LGGSegmenter.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LGGSegmenterLogic()

        from MedDLWidgets import BackgroundRunner, ModelSelector

        self.models = ModelSelector(
            "lgg",
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

    def setParameterNode(self, inputParameterNode: LGGSegmenterParameterNode | None) -> None:
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
            self.ui.applyButton.toolTip = _("Select the FLAIR volume")
            self.ui.applyButton.enabled = False
        elif not self.models.currentModel():  # none selected, or the saved one is missing/broken
            self.ui.applyButton.toolTip = _("Select or import an LGG model")
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = _("Segment the tumour on the selected volume(s)")
            self.ui.applyButton.enabled = True

    def onApplyButton(self) -> None:
        """Start a run, or cancel the one in progress (the button reads Cancel meanwhile)."""
        if self.runner.isRunning():
            self.runner.cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start LGG segmentation."), waitCursor=True):
            from MedDLWidgets import ensureDependencies, libraryPaths

            if not ensureDependencies(requester=_("LGG Segmenter")):
                return
            import LGGSegmenterLib
            import MedDLLib
            from LGGSegmenterLib import widgetlogic

            p = self._parameterNode
            self.ui.summaryLabel.text = ""
            arguments, outputFolder = self.logic.prepareRun(
                p.inputVolume,
                p.modelName,
                p.preContrastVolume,
                p.postContrastVolume,
                p.gradcam,
                p.forceCpu,
                slicer.app.temporaryPath,
            )
            self._run = (p.inputVolume, outputFolder)
            self.runner.start(
                arguments,
                onFinished=self.onRunFinished,
                tasks=[widgetlogic.TASK_ENTRY],
                pythonPaths=libraryPaths(MedDLLib, LGGSegmenterLib),
            )

    def onRunFinished(self, outcome) -> None:
        """Called on the main thread when the child ends: load the outputs as new nodes and show them."""
        inputVolume, outputFolder = self._run
        self._run = None
        self._checkCanApply()
        if outcome.status == "failed":
            slicer.util.errorDisplay(_("LGG segmentation failed: {message}").format(message=outcome.message))
        if not outcome.succeeded:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the LGG results."), waitCursor=True):
            loaded = self.logic.loadResults(outputFolder, inputVolume)
            self.ui.summaryLabel.text = loaded.summary
            self.showResults(inputVolume, loaded.nodes)

    def showResults(self, inputVolume, nodes: dict) -> None:
        """Slice views: FLAIR below, Grad-CAM on top (when computed), tumour segmentation; the features table in
        the layout."""
        slicer.util.setSliceViewerLayers(
            background=inputVolume, foreground=nodes.get("heatmap"), foregroundOpacity=HEATMAP_OPACITY, label=None
        )
        nodes["segmentation"].GetDisplayNode().SetVisibility(True)
        nodes["labelmap"].GetDisplayNode().SetVisibility(False)  # the segmentation shows the same voxels
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        applicationLogic = slicer.app.applicationLogic()
        applicationLogic.GetSelectionNode().SetActiveTableID(nodes["table"].GetID())
        applicationLogic.PropagateTableSelection()


#
# LGGSegmenterLogic
#


class LGGSegmenterLogic(ScriptedLoadableModuleLogic):
    """Parameter node access and the two scene-side steps of a widget run (Qt-free).

    The computation is ``LGGSegmenterLib.logic.LGGSegmenterLogic``; from the Python console call it directly::

        from LGGSegmenterLib.logic import LGGOptions, LGGSegmenterLogic
        outputs = LGGSegmenterLogic().process(flairNode, "my-lgg-model", LGGOptions(gradcam=True))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> LGGSegmenterParameterNode:
        return LGGSegmenterParameterNode(super().getParameterNode())

    def prepareRun(
        self,
        flairVolume,
        modelName: str,
        preContrastVolume=None,
        postContrastVolume=None,
        gradcam: bool = False,
        forceCpu: bool = False,
        runRoot: str | None = None,
    ) -> tuple[list[str], Path]:
        """Write the input volume(s) to a new run folder; return the ``meddl`` arguments and the output folder."""
        from LGGSegmenterLib import widgetlogic
        from MedDLLib import results

        volumes = widgetlogic.input_nodes(flairVolume, preContrastVolume, postContrastVolume)
        runFolder = results.new_run_folder(widgetlogic.TASK, runRoot)
        files = results.prepare_input(volumes, runFolder / "input", names=widgetlogic.input_names(len(volumes)))
        outputFolder = runFolder / "output"
        arguments = widgetlogic.infer_arguments(
            widgetlogic.study_input(files), modelName, outputFolder, gradcam=gradcam, force_cpu=forceCpu
        )
        return arguments, outputFolder

    def loadResults(self, outputFolder: Path, flairVolume):
        """Add the run's outputs to the FLAIR's scene as new nodes; returns ``MedDLLib.results.LoadedOutputs``
        (``nodes``: segmentation, labelmap, table and, with Grad-CAM, heatmap, with the ``result.json`` values as
        ``MedDL.*`` attributes; ``summary``: volume, centroid and spread)."""
        from LGGSegmenterLib import widgetlogic

        return widgetlogic.load_results(outputFolder, flairVolume)


#
# LGGSegmenterTest
#


class LGGSegmenterTest(ScriptedLoadableModuleTest):
    """Runs the shared self-test bodies of ``LGGSegmenterLib.selftests`` (the same ones pytest runs headless)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ParameterNode()
        import LGGSegmenterLib.selftests

        for test in LGGSegmenterLib.selftests.ALL:
            self.setUp()
            self.delayDisplay(f"Running {test.__name__}")
            test(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_ParameterNode(self):
        """The parameter node starts empty with the logic's defaults and keeps selected input volumes."""
        from LGGSegmenterLib.logic import LGGOptions

        parameterNode = LGGSegmenterLogic().getParameterNode()
        self.assertIsNone(parameterNode.inputVolume)
        self.assertIsNone(parameterNode.preContrastVolume)
        self.assertEqual(parameterNode.gradcam, LGGOptions().gradcam)
        self.assertEqual(parameterNode.forceCpu, LGGOptions().force_cpu)
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        parameterNode.inputVolume = volumeNode
        self.assertEqual(LGGSegmenterLogic().getParameterNode().inputVolume.GetID(), volumeNode.GetID())
