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

from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

from LGGSegmenterLib import options
from MedDLWidgets import TaskLogic, TaskModuleTest, TaskWidget, describeTaskModule
from MedDLWidgets.parameters import optionValues, withOptions

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
        describeTaskModule(
            self.parent,
            _("LGG Segmenter"),
            _(
                "Segments a lower-grade glioma on brain MRI (FLAIR, or the pre-contrast/FLAIR/post-contrast stack of "
                "TCGA-LGG) and reports its size, location and spread: a tumour segmentation (reference geometry = the "
                "FLAIR), a labelmap, a features table (per-slice area, volume in mL, centroid and spread in mm) and, "
                "optionally, a Grad-CAM heatmap. "
                "Select the FLAIR (and, for a three-channel model, the pre- and post-contrast volumes on the same "
                "voxel grid) and a model, then Apply; the computation runs in the background and can be cancelled. "
                "Research use only, not for diagnosis."
            ),
        )


#
# LGGSegmenterParameterNode
#


@parameterNodeWrapper
@withOptions(options.INFER)
class LGGSegmenterParameterNode:
    """The parameters of the module, saved with the scene.

    inputVolume - The brain MRI FLAIR volume.
    preContrastVolume - Optional pre-contrast T1 on the FLAIR's grid (three-channel models, with postContrastVolume).
    postContrastVolume - Optional post-contrast T1 on the FLAIR's grid.
    modelName - The selected model package (set by the model selector, not bound to a widget).
    gradcam, forceCpu - The run's options, declared once in LGGSegmenterLib.options.INFER (also compute a Grad-CAM
        heatmap of the tumour prediction) plus Force CPU.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    preContrastVolume: vtkMRMLScalarVolumeNode
    postContrastVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""


#
# LGGSegmenterWidget
#


class LGGSegmenterWidget(TaskWidget):
    """FLAIR (and optional pre/post-contrast), model and options; Apply runs ``meddl infer lgg`` in the background
    and shows the results (the features table in the layout, the tumour segmentation, Grad-CAM when asked)."""

    task = "lgg"
    inputHint = _("Select the FLAIR volume")
    modelHint = _("Select or import an LGG model")
    applyHint = _("Segment the tumour on the selected volume(s)")


    def prepareRun(self, p: LGGSegmenterParameterNode, runRoot: str):
        volumes = (p.inputVolume, p.preContrastVolume, p.postContrastVolume)
        values = optionValues(p, options.INFER)
        arguments, outputFolder = self.logic.prepareRun(*volumes, p.modelName, values, runRoot)
        return arguments, outputFolder, p.inputVolume


#
# LGGSegmenterLogic
#


class LGGSegmenterLogic(TaskLogic):
    """Parameter node access and the two scene-side steps of a widget run (Qt-free).

    The computation is ``LGGSegmenterLib.logic.LGGSegmenterLogic``; from the Python console call it directly::

        from LGGSegmenterLib.logic import LGGOptions, LGGSegmenterLogic
        outputs = LGGSegmenterLogic().process(flairNode, "my-lgg-model", LGGOptions(gradcam=True))
    """


    def getParameterNode(self) -> LGGSegmenterParameterNode:
        return LGGSegmenterParameterNode(super().getParameterNode())

    def prepareRun(
        self,
        flairVolume,
        preContrastVolume=None,
        postContrastVolume=None,
        modelName: str = "",
        values: dict | None = None,
        runRoot: str | None = None,
    ) -> tuple[list[str], Path]:
        """Write the input volume(s) to a new run folder; return the ``meddl`` arguments and the output folder."""
        from LGGSegmenterLib import widgetlogic
        from MedDLLib import results

        volumes = widgetlogic.input_nodes(flairVolume, preContrastVolume, postContrastVolume)
        runFolder = results.new_run_folder(widgetlogic.TASK, runRoot)
        files = results.prepare_input(volumes, runFolder / "input", names=widgetlogic.input_names(len(volumes)))
        outputFolder = runFolder / "output"
        arguments = widgetlogic.infer_arguments(widgetlogic.study_input(files), modelName, outputFolder,
                                                **(values or {}))
        return arguments, outputFolder


#
# LGGSegmenterTest
#


class LGGSegmenterTest(TaskModuleTest):
    """The parameter node's defaults, then the shared self-test bodies of ``LGGSegmenterLib.selftests``
    (the same ones pytest runs headless)."""
