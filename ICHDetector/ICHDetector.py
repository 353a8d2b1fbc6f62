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

from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

from ICHDetectorLib import options
from MedDLWidgets import TaskLogic, TaskModuleTest, TaskWidget, describeTaskModule
from MedDLWidgets.parameters import withOptions

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
        describeTaskModule(
            self.parent,
            _("ICH Detector"),
            _(
                "Detects intracranial hemorrhage and its subtype (epidural, intraparenchymal, intraventricular, "
                "subarachnoid, subdural) on a non-contrast head CT, slice by slice and for the whole study. "
                "Outputs: a table and a plot of the per-slice probabilities, the study-level result, a Grad-CAM "
                "heatmap of the chosen label and a suspected-region segmentation. "
                "Select the head CT and a model (train one with 'meddl train ich' or import a model package), then "
                "Apply; the computation runs in the background and can be cancelled. "
                "Research use only, not for diagnosis."
            ),
        )


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
    inputHint = _("Select the head CT volume")
    modelHint = _("Select or import an ICH model")
    applyHint = _("Detect hemorrhage on the selected head CT")


#
# ICHDetectorLogic
#


class ICHDetectorLogic(TaskLogic):
    """Parameter node access and the two scene-side steps of a widget run (Qt-free).

    The computation is ``ICHDetectorLib.logic.ICHDetectorLogic``; from the Python console call it directly::

        from ICHDetectorLib.logic import ICHDetectorLogic, ICHOptions
        result = ICHDetectorLogic().process(volumeNode, "my-ich-model", ICHOptions(heatmap_label="subdural"))
    """

    inputName = "head_ct"

    def getParameterNode(self) -> ICHDetectorParameterNode:
        return ICHDetectorParameterNode(super().getParameterNode())


#
# ICHDetectorTest
#


class ICHDetectorTest(TaskModuleTest):
    """The parameter node's defaults, then the shared self-test bodies of ``ICHDetectorLib.selftests``
    (the same ones pytest runs headless)."""
