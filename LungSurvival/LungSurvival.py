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

from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

from LungSurvivalLib import options
from MedDLWidgets import TaskLogic, TaskModuleTest, TaskWidget, describeTaskModule
from MedDLWidgets.parameters import withOptions

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
        describeTaskModule(
            self.parent,
            _("Lung Survival"),
            _(
                "Segments the lungs on a chest CT (right and left lung, volumes in mL) and estimates a survival risk "
                "score relative to the training cohort (low or high risk), with a Grad-CAM heatmap of the region that "
                "drove it. Select the chest CT and a model (train one with 'meddl train lung' or import a model "
                "package), then Apply; the computation runs in the background and can be cancelled. "
                "Research use only, not for diagnosis: the risk is not a survival time."
            ),
        )


#
# LungSurvivalParameterNode
#


@parameterNodeWrapper
@withOptions(options.INFER)
class LungSurvivalParameterNode:
    """The parameters of the module, saved with the scene.

    inputVolume - An axial chest CT (Hounsfield units).
    modelName - The selected model package (set by the model selector, not bound to a widget).
    lobeModel, forceCpu - The run's options (LungSurvivalLib.options.INFER plus Force CPU): the imported
        wholeBody_ct_segmentation bundle for the lungs and lobes (set by the lobe model selector, "" for none).
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
    inputHint = _("Select the chest CT volume")
    modelHint = _("Select or import a lung survival model")
    applyHint = _("Segment the lungs and estimate the survival risk on the selected chest CT")
    helperModel = ("lobeModel", "lobeModelComboBox", options.LOBE_CLASSES,
                   _("None (MedDL's own lung segmentation)"))


#
# LungSurvivalLogic
#


class LungSurvivalLogic(TaskLogic):
    """Parameter node access and the two scene-side steps of a widget run (Qt-free).

    The computation is ``LungSurvivalLib.logic.LungSurvivalLogic``; from the Python console call it directly::

        from LungSurvivalLib.logic import LungOptions, LungSurvivalLogic
        outputs = LungSurvivalLogic().process(chestCtNode, "my-lung-model", LungOptions())
    """

    inputName = "chest_ct"

    def getParameterNode(self) -> LungSurvivalParameterNode:
        return LungSurvivalParameterNode(super().getParameterNode())


#
# LungSurvivalTest
#


class LungSurvivalTest(TaskModuleTest):
    """The parameter node's defaults, then the shared self-test bodies of ``LungSurvivalLib.selftests``
    (the same ones pytest runs headless)."""
