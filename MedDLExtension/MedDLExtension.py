"""MedDLExtension: the hidden 3D Slicer module that carries MedDL's shared library.

It puts ``MedDLLib`` (Qt-free: DICOM, intensity, resampling, MRML adapters, models, training, evaluation, batch,
the ``meddl`` command) and ``MedDLWidgets`` (the Qt helpers the four task modules' widgets share) on Slicer's
Python path, ships ``Resources/requirements.txt`` (the pip requirements other than torch, installed on first
Apply) and runs the library's shared self-tests inside Slicer. It has no computation of its own.
"""

from __future__ import annotations

import slicer
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
# MedDLExtension
#


class MedDLExtension(ScriptedLoadableModule):
    """Hidden module: shared library of the MedDL modules."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedDL shared library")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedDL")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDL developers"]
        self.parent.helpText = _(
            "Shared components of the MedDL modules (Glioma Classifier, LGG Segmenter, Lung Survival, ICH Detector): "
            "DICOM reading, preprocessing, model packages, training, evaluation, Grad-CAM and batch processing. "
            "Research use only, not for diagnosis."
        )
        self.parent.acknowledgementText = _("MedDL is built on 3D Slicer, PyTorch and MONAI. Research use only.")
        self.parent.hidden = True  # a library, not a user-facing module


#
# MedDLExtensionParameterNode
#


@parameterNodeWrapper
class MedDLExtensionParameterNode:
    """The shared library has no parameters of its own; the task modules keep theirs in their parameter nodes."""


#
# MedDLExtensionWidget
#


class MedDLExtensionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Shown only if selected explicitly (the module is hidden): says what the library is and where to go."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDLExtension.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedDLExtensionLogic()

    def cleanup(self) -> None:
        self.removeObservers()


#
# MedDLExtensionLogic
#


class MedDLExtensionLogic(ScriptedLoadableModuleLogic):
    """Parameter node access; everything else lives in the Qt-free ``MedDLLib`` package."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> MedDLExtensionParameterNode:
        return MedDLExtensionParameterNode(super().getParameterNode())


#
# MedDLExtensionTest
#


class MedDLExtensionTest(ScriptedLoadableModuleTest):
    """Runs the shared self-test bodies of ``MedDLLib.selftests`` (the same ones pytest runs headless)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LibraryImportsWithoutQt()
        import MedDLLib.selftests

        for test in MedDLLib.selftests.ALL:
            self.setUp()
            self.delayDisplay(f"Running {test.__name__}")
            test(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_LibraryImportsWithoutQt(self):
        """MedDLLib is importable inside Slicer and its command line parser builds."""
        import MedDLLib
        import MedDLLib.cli

        self.assertTrue(MedDLLib.__version__)
        parser = MedDLLib.cli.build_parser()
        self.assertEqual(parser.prog, "meddl")
