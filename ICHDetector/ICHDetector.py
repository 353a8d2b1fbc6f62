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

from ICHDetectorLib import options
from MedDLWidgets import TaskWidget
from MedDLWidgets.parameters import optionValues, withOptions

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
@withOptions(options.INFER)
class ICHDetectorParameterNode:
    """The parameters of the module, saved with the scene.

    inputVolume - A non-contrast head CT series (Hounsfield units).
    modelName - The selected model package (set by the model selector, not bound to a widget).
    heatmapLabel, threshold, forceCpu - The run's options, declared once in ICHDetectorLib.options.INFER (the
        label Grad-CAM explains; the decision threshold on the study-level 'any' probability) plus Force CPU.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""


#
# ICHDetectorWidget
#


class ICHDetectorWidget(TaskWidget):
    """Input, model and options; Apply runs ``meddl infer ich`` in the background and shows the results (the
    table and the per-slice plot in the layout, the heatmap over the CT, the suspected region outlined)."""

    task = "ich"
    taskEntry = "ICHDetectorLib.cli:TASK"
    inputHint = _("Select the head CT volume")
    modelHint = _("Select or import an ICH model")
    applyHint = _("Detect hemorrhage on the selected head CT")

    def createLogic(self) -> ICHDetectorLogic:
        return ICHDetectorLogic()

    def prepareRun(self, p: ICHDetectorParameterNode, runRoot: str):
        values = optionValues(p, options.INFER)
        arguments, outputFolder = self.logic.prepareRun(p.inputVolume, p.modelName, values, runRoot)
        return arguments, outputFolder, p.inputVolume


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
        values: dict | None = None,
        runRoot: str | None = None,
    ) -> tuple[list[str], Path]:
        """Write ``inputVolume`` to a new run folder; return the ``meddl`` arguments and the output folder."""
        from ICHDetectorLib import widgetlogic
        from MedDLLib import results

        runFolder = results.new_run_folder(widgetlogic.TASK, runRoot)
        (inputFile,) = results.prepare_input([inputVolume], runFolder / "input", names=["head_ct"])
        outputFolder = runFolder / "output"
        arguments = widgetlogic.infer_arguments(inputFile, modelName, outputFolder, **(values or {}))
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
