"""Lung Survival: the 3D Slicer module (GUI, parameter node and self-test) of MedDL.

Segments the lungs on a chest CT and estimates a survival risk score of lung adenocarcinoma, with a Grad-CAM heatmap
and Kaplan-Meier curves where a cohort is given.

This module is a placeholder until its task lands: the widget says so and its Apply button stays disabled.
All computation will live in the Qt-free package ``LungSurvivalLib`` (see ARCHITECTURE.md).
"""

import slicer
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

#
# LungSurvival
#


class LungSurvival(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Lung Survival")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedDL")]
        self.parent.dependencies = ["MedDLExtension"]
        self.parent.contributors = ["MedDL developers"]
        self.parent.helpText = _(
            "Segments the lungs on a chest CT and estimates a survival risk score of lung adenocarcinoma, with a "
            "Grad-CAM heatmap and Kaplan-Meier curves where a cohort is given. "
            "Not available yet: this module's model and logic are still being developed. "
            "Research use only, not for diagnosis."
        )
        self.parent.acknowledgementText = _("MedDL is built on 3D Slicer, PyTorch and MONAI. Research use only.")


#
# LungSurvivalParameterNode
#


@parameterNodeWrapper
class LungSurvivalParameterNode:
    """The parameters of the module, saved with the scene.

    inputVolume - A chest CT series (Hounsfield units).
    """

    inputVolume: vtkMRMLScalarVolumeNode


#
# LungSurvivalWidget
#


class LungSurvivalWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Placeholder GUI: input selection only; Apply stays disabled until the module's logic lands."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LungSurvival.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LungSurvivalLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Nothing can be computed yet: the .ui's statusLabel says so, and Apply stays disabled.
        self.ui.applyButton.enabled = False
        self.ui.applyButton.toolTip = _("Not available yet")

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
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

    def setParameterNode(self, inputParameterNode: LungSurvivalParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets in the .ui carry the dynamic property "SlicerParameterName" naming their field.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)


#
# LungSurvivalLogic
#


class LungSurvivalLogic(ScriptedLoadableModuleLogic):
    """Parameter node access. The computation will come from the Qt-free ``LungSurvivalLib.logic``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> LungSurvivalParameterNode:
        return LungSurvivalParameterNode(super().getParameterNode())


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
        """The parameter node is created in the scene, starts empty and keeps a selected input volume."""
        parameterNode = LungSurvivalLogic().getParameterNode()
        self.assertIsNone(parameterNode.inputVolume)
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        parameterNode.inputVolume = volumeNode
        self.assertEqual(LungSurvivalLogic().getParameterNode().inputVolume.GetID(), volumeNode.GetID())
