"""Lung Survival: the 3D Slicer module (GUI, parameter node and self-test) of MedDL.

Segments the lungs on a chest CT (right and left lung, volumes in mL) and estimates a survival risk score
(relative to the training cohort, low/high group) with a Grad-CAM heatmap of the region that drove it.

The widget is thin (see ARCHITECTURE.md and ``MedDLWidgets``): on Apply it writes the input volume to a run
folder, runs ``meddl infer lung`` in a child ``PythonSlicer`` (progress, log, Cancel; the GUI never waits) and
loads the outputs as new nodes. Everything but the Qt calls lives in Qt-free, tested code:
``MedDLLib.results`` (files <-> nodes), ``LungSurvivalLib.widgetlogic`` (this task's command line and outputs)
and ``LungSurvivalLib.logic`` (the computation, also usable directly from the Python console).
"""

from __future__ import annotations

from pathlib import Path
import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

from LungSurvivalLib import options
from MedDLWidgets import TaskWidget
from MedDLWidgets.parameters import optionValues, withOptions

#
# LungSurvival
#


class LungSurvival(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        # `meddl ... lung` inside Slicer (console, `Slicer --python-script meddl_batch.py`): no pip metadata there
        from MedDLLib.tasks import register_task_entry

        register_task_entry("lung", "LungSurvivalLib.cli:TASK")
        self.parent.title = _("Lung Survival")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedDL")]
        self.parent.dependencies = ["MedDLExtension"]
        self.parent.contributors = ["MedDL developers"]
        self.parent.helpText = _(
            "Segments the lungs on a chest CT (right and left lung, volumes in mL) and estimates a survival risk "
            "score relative to the training cohort (low or high risk), with a Grad-CAM heatmap of the region that "
            "drove it. Select the chest CT and a model (train one with 'meddl train lung' or import a model "
            "package), then Apply; the computation runs in the background and can be cancelled. "
            "Research use only, not for diagnosis: the risk is not a survival time."
        )
        self.parent.acknowledgementText = _("MedDL is built on 3D Slicer, PyTorch and MONAI. Research use only.")


#
# LungSurvivalParameterNode
#


@parameterNodeWrapper
@withOptions(options.INFER)
class LungSurvivalParameterNode:
    """The parameters of the module, saved with the scene.

    inputVolume - An axial chest CT (Hounsfield units).
    modelName - The selected model package (set by the model selector, not bound to a widget).
    forceCpu - Run the network on the CPU even when a GPU is available (LungSurvivalLib.options.INFER: no option
        of its own).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""


#
# LungSurvivalWidget
#


class LungSurvivalWidget(TaskWidget):
    """Input, model and options; Apply runs ``meddl infer lung`` in the background and shows the results (the
    volumes table in the layout, Grad-CAM over the CT, the lung segments outlined)."""

    task = "lung"
    taskEntry = "LungSurvivalLib.cli:TASK"
    inputHint = _("Select the chest CT volume")
    modelHint = _("Select or import a lung survival model")
    applyHint = _("Segment the lungs and estimate the survival risk on the selected chest CT")

    def createLogic(self) -> LungSurvivalLogic:
        return LungSurvivalLogic()

    def prepareRun(self, p: LungSurvivalParameterNode, runRoot: str):
        values = optionValues(p, options.INFER)
        arguments, outputFolder = self.logic.prepareRun(p.inputVolume, p.modelName, values, runRoot)
        return arguments, outputFolder, p.inputVolume


#
# LungSurvivalLogic
#


class LungSurvivalLogic(ScriptedLoadableModuleLogic):
    """Parameter node access and the two scene-side steps of a widget run (Qt-free).

    The computation is ``LungSurvivalLib.logic.LungSurvivalLogic``; from the Python console call it directly::

        from LungSurvivalLib.logic import LungOptions, LungSurvivalLogic
        outputs = LungSurvivalLogic().process(chestCtNode, "my-lung-model", LungOptions())
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> LungSurvivalParameterNode:
        return LungSurvivalParameterNode(super().getParameterNode())

    def prepareRun(
        self,
        inputVolume,
        modelName: str,
        values: dict | None = None,
        runRoot: str | None = None,
    ) -> tuple[list[str], Path]:
        """Write ``inputVolume`` to a new run folder; return the ``meddl`` arguments and the output folder."""
        from LungSurvivalLib import widgetlogic
        from MedDLLib import results

        runFolder = results.new_run_folder(widgetlogic.TASK, runRoot)
        (inputFile,) = results.prepare_input([inputVolume], runFolder / "input", names=["chest_ct"])
        outputFolder = runFolder / "output"
        arguments = widgetlogic.infer_arguments(inputFile, modelName, outputFolder, **(values or {}))
        return arguments, outputFolder

    def loadResults(self, outputFolder: Path, inputVolume):
        """Add the run's outputs to the input's scene as new nodes; returns ``MedDLLib.results.LoadedOutputs``
        (``nodes``: segmentation, labelmap, heatmap, table, with the ``result.json`` values as ``MedDL.*``
        attributes; ``summary``: volumes, risk and the caveat)."""
        from LungSurvivalLib import widgetlogic

        return widgetlogic.load_results(outputFolder, inputVolume)


#
# LungSurvivalTest
#


class LungSurvivalTest(ScriptedLoadableModuleTest):
    """Runs the shared self-test bodies of ``LungSurvivalLib.selftests`` (the same ones pytest runs headless)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ParameterNode()
        import LungSurvivalLib.selftests

        for test in LungSurvivalLib.selftests.ALL:
            self.setUp()
            self.delayDisplay(f"Running {test.__name__}")
            test(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_ParameterNode(self):
        """The parameter node starts with the logic's defaults and keeps a selected input volume."""
        from LungSurvivalLib.logic import LungOptions

        parameterNode = LungSurvivalLogic().getParameterNode()
        self.assertIsNone(parameterNode.inputVolume)
        self.assertEqual(parameterNode.forceCpu, LungOptions().force_cpu)
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        parameterNode.inputVolume = volumeNode
        self.assertEqual(LungSurvivalLogic().getParameterNode().inputVolume.GetID(), volumeNode.GetID())
