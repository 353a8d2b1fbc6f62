"""What can be checked of the ICHDetector and LGGSegmenter widgets without Qt.

- the command line each widget builds (``widgetlogic.infer_arguments``) is accepted by the task's own
  ``meddl infer <task>`` parser and parses to the widget's choices;
- the module scripts build it through that function (so this test covers what the widget runs);
- the options each parameter node derives its fields from (``<Task>Lib/options.py``, declared once) agree with the
  Qt-free logic (labels, threshold range, defaults), and the module derives them (``@withOptions``);
- every parameter a user sets is bound to a widget in the .ui (the model is owned by the ModelSelector);
- the LGG input rules and the result summaries.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from MedDLLib.commands_tasks import TASK_COMMANDS, task_parser
from MedDLLib.errors import InputError
from MedDLLib.options import widget_options

ROOT = Path(__file__).resolve().parents[1]
INFER = next(c for c in TASK_COMMANDS if c.name == "infer")


def _parse(arguments: list[str], task):
    """Parse ``meddl <arguments>`` as ``meddl infer <task>`` does (common options plus the task's own)."""
    assert arguments[:2] == ["infer", task.name]
    return task_parser(INFER, task).parse_args(arguments[2:])


def _parameter_fields(module: str, options) -> set[str]:
    """The parameter node's fields: those written in the class plus those ``@withOptions(options.INFER)`` adds."""
    tree = ast.parse((ROOT / module / f"{module}.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}ParameterNode")
    assert [ast.unparse(d) for d in cls.decorator_list] == ["parameterNodeWrapper", "withOptions(options.INFER)"]
    return {s.target.id for s in cls.body if isinstance(s, ast.AnnAssign)} | {
        o.field for o in widget_options(options.INFER)}


def _bound_parameters(module: str) -> set[str]:
    import xml.etree.ElementTree as ET

    tree = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    return {p.findtext("string") for p in tree.iter("property") if p.get("name") == "SlicerParameterName"}


def _calls(module: str, function: str) -> list[ast.Call]:
    tree = ast.parse((ROOT / module / f"{module}.py").read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == function]


# ------------------------------------------------------------------------------------------------------ ICH
def test_ich_arguments_parse_with_the_task_parser(tmp_path):
    from ICHDetectorLib.cli import TASK
    from ICHDetectorLib.widgetlogic import infer_arguments

    args = _parse(infer_arguments(tmp_path / "ct.nrrd", "ich-model", tmp_path / "out", heatmap_label="subdural",
                                  threshold=0.35, force_cpu=True), TASK)
    assert args.accept_non_head is False  # a command-line option the widget does not show
    assert (args.input, args.model, args.output) == (tmp_path / "ct.nrrd", "ich-model", tmp_path / "out")
    assert (args.heatmap_label, args.threshold, args.force_cpu) == ("subdural", 0.35, True)
    defaults = _parse(infer_arguments("ct.nrrd", "m", "out"), TASK)
    assert (defaults.heatmap_label, defaults.threshold, defaults.force_cpu) == ("any", 0.5, False)


def test_ich_arguments_refuse_missing_model_and_unknown_label():
    from ICHDetectorLib.widgetlogic import infer_arguments

    with pytest.raises(InputError, match="no ich model selected"):
        infer_arguments("ct.nrrd", "", "out")
    with pytest.raises(InputError, match="--heatmap-label: 'chronic' is not one of any, epidural"):
        infer_arguments("ct.nrrd", "m", "out", heatmap_label="chronic")
    with pytest.raises(InputError, match=r"--threshold: 1.0 is outside \[0.01, 0.99\]"):
        infer_arguments("ct.nrrd", "m", "out", threshold=1.0)
    with pytest.raises(InputError, match="unknown option.* heatmap"):
        infer_arguments("ct.nrrd", "m", "out", heatmap="any")


def test_ich_parameter_node_agrees_with_the_logic():
    from ICHDetectorLib import options
    from ICHDetectorLib.dataset import LABELS
    from ICHDetectorLib.logic import ICHOptions

    fields = _parameter_fields("ICHDetector", options)
    assert options.HEATMAP_LABEL.choices == tuple(LABELS) and options.HEATMAP_LABEL.field == "heatmapLabel"
    assert options.HEATMAP_LABEL.default == ICHOptions().heatmap_label
    assert options.THRESHOLD.default == ICHOptions().threshold
    low, high = options.THRESHOLD.range
    ICHOptions(threshold=low), ICHOptions(threshold=high)  # both ends of the slider are accepted by the logic
    with pytest.raises(InputError):
        ICHOptions(threshold=1.0)  # which is why the slider stops short of 0 and 1
    assert _bound_parameters("ICHDetector") == fields - {"modelName"}
    assert "acceptNonHead" not in fields  # command line only


def test_ich_widget_builds_its_command_with_widgetlogic():
    """The shared TaskLogic/TaskWidget build the run through ICHDetectorLib.widgetlogic (by Slicer-style naming:
    ``<Module>Lib.widgetlogic``) with the parameter node's option values."""
    source = (ROOT / "ICHDetector" / "ICHDetector.py").read_text()
    assert "class ICHDetectorLogic(TaskLogic)" in source and 'inputName = "head_ct"' in source
    base = (ROOT / "MedDLExtension" / "MedDLWidgets" / "taskwidget.py").read_text()
    for call in ("taskLogic.infer_arguments(", "results.prepare_input(", ".load_results(", "optionValues(",
                 'f"{self.moduleName}Lib.widgetlogic"', 'f"{self.moduleName}Lib.options"'):
        assert call in base, call


def test_ich_summary_is_the_task_summary():
    from ICHDetectorLib.widgetlogic import summary_text
    from MedDLLib.errors import MedDLError

    assert summary_text({"summary": "no ICH detected (any 0.10) [research use only]"}).endswith("research use only]")
    with pytest.raises(MedDLError, match="no 'summary'"):
        summary_text({"tumour_volume_ml": 1.0})


# ------------------------------------------------------------------------------------------------------ LGG
def test_lgg_arguments_parse_with_the_task_parser(tmp_path):
    from LGGSegmenterLib.cli import TASK
    from LGGSegmenterLib.widgetlogic import infer_arguments

    args = _parse(infer_arguments(tmp_path / "FLAIR.nrrd", "lgg-model", tmp_path / "out", gradcam=True,
                                  force_cpu=True), TASK)
    assert (args.input, args.model, args.output, args.gradcam, args.force_cpu) == (
        tmp_path / "FLAIR.nrrd", "lgg-model", tmp_path / "out", True, True)
    defaults = _parse(infer_arguments("FLAIR.nrrd", "m", "out"), TASK)
    assert (defaults.gradcam, defaults.force_cpu) == (False, False)
    with pytest.raises(InputError, match="no lgg model selected"):
        infer_arguments("FLAIR.nrrd", None, "out")


def test_lgg_parameter_node_agrees_with_the_logic():
    from LGGSegmenterLib import options
    from LGGSegmenterLib.logic import LGGOptions

    fields = _parameter_fields("LGGSegmenter", options)
    assert options.GRADCAM.default == LGGOptions().gradcam
    assert _bound_parameters("LGGSegmenter") == fields - {"modelName"}
    (call,) = _calls("LGGSegmenter", "infer_arguments")
    assert [k.arg for k in call.keywords] == [None]  # **values


def test_lgg_inputs_are_flair_or_all_three_channels(tmp_path):
    from LGGSegmenterLib.dataset import CHANNELS
    from LGGSegmenterLib.widgetlogic import input_names, input_nodes, study_input

    assert input_nodes("F") == ["F"]
    assert input_nodes("F", "pre", "post") == ["pre", "F", "post"]  # the order of CHANNELS
    assert input_names(3) == list(CHANNELS) and input_names(1) == ["FLAIR"]
    with pytest.raises(InputError, match="select the FLAIR volume"):
        input_nodes(None, "pre", "post")
    with pytest.raises(InputError, match="both the pre-contrast and the post-contrast volume, or neither"):
        input_nodes("F", "pre", None)
    assert study_input([tmp_path / "FLAIR.nrrd"]) == tmp_path / "FLAIR.nrrd"
    assert study_input([tmp_path / f"{c}.nrrd" for c in CHANNELS]) == tmp_path


def test_lgg_summary_text():
    from LGGSegmenterLib.widgetlogic import summary_text

    text = summary_text({"tumour_volume_ml": 12.345, "centroid_ras_mm": [10.0, -5.25, 31.0],
                         "spread_mm": [8.1, 6.0, 4.2]})
    assert text == ("Tumour volume 12.35 mL; centroid R 10.0, A -5.2, S 31.0 mm; spread 8.1 x 6.0 x 4.2 mm "
                    "(R x A x S) [research use only]")
    empty = {"tumour_volume_ml": 0.0, "centroid_ras_mm": [None, None, None], "spread_mm": [None, None, None]}
    assert summary_text(empty) == "No tumour found [research use only]"
