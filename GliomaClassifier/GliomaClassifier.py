"""Glioma Classifier: the 3D Slicer module (GUI, parameter node and self-test) of MedDL.

Predicts the MGMT promoter methylation status of a glioma from brain MRI series (FLAIR, T1w, T1wCE, T2w; one or
several), as in the RSNA-MICCAI 2021 radiogenomic classification task, with a Grad-CAM heatmap showing which voxels
drove the prediction. Research use only: published models are close to chance on external data, and the module
says so next to the model and with every result.

The widget is thin (see ARCHITECTURE.md and ``MedDLWidgets``): on Apply it writes the sequence volumes the
selected model needs to a run folder (``<sequence>.nrrd``), runs ``meddl infer glioma`` in a child
``PythonSlicer`` (progress, log, Cancel; the GUI never waits) and loads the outputs as new nodes. Everything but
the Qt calls lives in Qt-free, tested code: ``MedDLLib.results`` (files <-> nodes),
``GliomaClassifierLib.widgetlogic`` (this task's inputs, command line and outputs) and
``GliomaClassifierLib.logic`` (the computation, also usable directly from the Python console).
"""

from __future__ import annotations

from pathlib import Path

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

from GliomaClassifierLib import options
from MedDLWidgets import TaskLogic, TaskModuleTest, TaskWidget, describeTaskModule
from MedDLWidgets.parameters import optionValues, withOptions

#: Sequence name (``GliomaClassifierLib.dataset.SEQUENCES``) -> parameter node field of its volume.
SEQUENCE_PARAMETERS = {"FLAIR": "flairVolume", "T1w": "t1wVolume", "T1wCE": "t1wceVolume", "T2w": "t2wVolume"}

#
# GliomaClassifier
#


class GliomaClassifier(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        # `meddl ... glioma` inside Slicer (console, `Slicer --python-script meddl_batch.py`): no pip metadata there
        from MedDLLib.tasks import register_task_entry

        register_task_entry("glioma", "GliomaClassifierLib.cli:TASK")
        describeTaskModule(
            self.parent,
            _("Glioma Classifier"),
            _(
                "Predicts the MGMT promoter methylation status of a glioma from brain MRI series (FLAIR, T1w, T1wCE, "
                "T2w; the selected model says which it needs), as in the RSNA-MICCAI 2021 radiogenomic classification "
                "task, with a Grad-CAM heatmap showing which voxels drove the prediction and the 64-slice window the "
                "network saw. Select the series and a model (train one with 'meddl train glioma' or import a model "
                "package), then Apply; the computation runs in the background and can be cancelled. "
                "Research use only, not for diagnosis: MGMT status from MRI is close to chance on external data."
            ),
        )


#
# GliomaClassifierParameterNode
#


@parameterNodeWrapper
@withOptions(options.INFER)
class GliomaClassifierParameterNode:
    """The parameters of the module, saved with the scene.

    flairVolume, t1wVolume, t1wceVolume, t2wVolume - The brain MRI series of one study (any plane); only those
        the selected model needs must be set.
    modelName - The selected model package (set by the model selector, not bound to a widget).
    threshold, tumourModel, forceCpu - The run's options, declared once in GliomaClassifierLib.options.INFER (the
        probability at or above which the result reads "methylated"; the imported brats_mri_segmentation bundle,
        set by the tumour model selector, "" for none) plus Force CPU.
    """

    flairVolume: vtkMRMLScalarVolumeNode
    t1wVolume: vtkMRMLScalarVolumeNode
    t1wceVolume: vtkMRMLScalarVolumeNode
    t2wVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""


#
# GliomaClassifierWidget
#


class GliomaClassifierWidget(TaskWidget):
    """Sequences, model and options; Apply runs ``meddl infer glioma`` in the background and shows the results
    (Grad-CAM over the reference series, the 64-slice window ROI, the result table in the layout)."""

    task = "glioma"
    inputHint = _("Select the brain MRI series")
    applyHint = _("Estimate the MGMT methylation probability of the selected study")
    helperModel = ("tumourModel", "tumourModelComboBox", options.TUMOUR_MODEL_OUTPUTS,
                   _("None (no tumour segmentation)"))

    def initializeInputs(self, p: GliomaClassifierParameterNode) -> None:
        """Fill empty sequence fields with the one volume named after each sequence (e.g. "T1wCE"), if any."""
        volumes = {
            node.GetName(): node
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if not node.IsA("vtkMRMLLabelMapVolumeNode")
        }
        for field, name in self.logic.guessSequences(list(volumes)).items():
            if not getattr(p, field):
                setattr(p, field, volumes[name])

    def missingInput(self, p: GliomaClassifierParameterNode) -> str:
        return self.logic.missingInput(p)

    def modelSelected(self, modelName: str) -> None:
        from GliomaClassifierLib import widgetlogic

        self.ui.modelCaveatLabel.text = widgetlogic.model_caveat(modelName or None)

    def prepareRun(self, p: GliomaClassifierParameterNode, runRoot: str):
        values = optionValues(p, options.INFER)
        return self.logic.prepareRun(self.logic.selectedSequences(p), p.modelName, values, runRoot)

    def showResults(self, referenceVolume, nodes: dict) -> None:
        """As every task, plus the window ROI the network saw (locked: moving it changes nothing)."""
        TaskWidget.showResults(self, referenceVolume, nodes)
        window = nodes["window"]
        window.CreateDefaultDisplayNodes()
        window.GetDisplayNode().SetVisibility(True)
        window.SetLocked(True)


#
# GliomaClassifierLogic
#


class GliomaClassifierLogic(TaskLogic):
    """Parameter node access and the scene-side steps of a widget run (Qt-free).

    The computation is ``GliomaClassifierLib.logic.GliomaClassifierLogic``; from the Python console call it
    directly::

        from GliomaClassifierLib.logic import GliomaClassifierLogic, GliomaOptions
        result = GliomaClassifierLogic().process({"T1wCE": t1ceNode, "FLAIR": flairNode}, "my-glioma-model")
    """


    def getParameterNode(self) -> GliomaClassifierParameterNode:
        return GliomaClassifierParameterNode(super().getParameterNode())

    @staticmethod
    def guessSequences(volumeNames: list) -> dict:
        """``{parameter field: volume name}`` for each sequence exactly one of ``volumeNames`` is named after
        (case-insensitive; a "T1wCE" name does not count as T1w)."""
        found = {}
        for sequence, field in SEQUENCE_PARAMETERS.items():
            key = sequence.lower()
            names = [n for n in volumeNames if key in n.lower() and not (key == "t1w" and "t1wce" in n.lower())]
            if len(names) == 1:
                found[field] = names[0]
        return found

    @staticmethod
    def selectedSequences(parameterNode) -> dict:
        """``{sequence: node or None}`` of the parameter node."""
        return {sequence: getattr(parameterNode, field) for sequence, field in SEQUENCE_PARAMETERS.items()}

    def missingInput(self, parameterNode) -> str:
        """Why Apply cannot run yet ("" when it can): no model, or a sequence the model needs is not selected."""
        if not parameterNode:
            return _("Select the brain MRI series")
        if not parameterNode.modelName:
            return _("Select or import a glioma model")
        from GliomaClassifierLib import widgetlogic
        from MedDLLib.errors import MedDLError

        try:
            needed = widgetlogic.model_sequences(parameterNode.modelName)
            widgetlogic.input_nodes(needed, self.selectedSequences(parameterNode))
        except MedDLError as exc:
            return str(exc)
        return ""

    def prepareRun(
        self,
        sequenceVolumes: dict,
        modelName: str,
        values: dict | None = None,
        runRoot: str | None = None,
    ) -> tuple[list[str], Path, object]:
        """Write the sequence volumes the model needs to a new run folder (``<sequence>.nrrd``); return the
        ``meddl`` arguments, the output folder and the reference volume (the model's first sequence)."""
        from GliomaClassifierLib import widgetlogic
        from MedDLLib import nodes, results

        chosen = widgetlogic.input_nodes(widgetlogic.model_sequences(modelName), sequenceVolumes)
        runFolder = results.new_run_folder(widgetlogic.TASK, runRoot)
        results.prepare_input(
            [node for sequence, node in chosen], runFolder / "input", names=[sequence for sequence, node in chosen]
        )
        outputFolder = runFolder / "output"
        dicomDatabase = getattr(slicer, "dicomDatabase", None)
        voiDicom = nodes.dicom_source_files(dict(chosen), dicomDatabase.fileForInstance if dicomDatabase else None)
        arguments = widgetlogic.infer_arguments(
            runFolder / "input", modelName, outputFolder, voi_dicom=voiDicom, **(values or {})
        )
        return arguments, outputFolder, chosen[0][1]


#
# GliomaClassifierTest
#


class GliomaClassifierTest(TaskModuleTest):
    """The parameter node's defaults, then the shared self-test bodies of ``GliomaClassifierLib.selftests``
    (the same ones pytest runs headless)."""

    inputField = "t1wceVolume"
