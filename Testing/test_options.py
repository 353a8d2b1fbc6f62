"""``MedDLLib.options``: each task option declared once; the command line, parameter node and child command derive.

- an option's flag, field, help and checks (range, choices, type) come from its one declaration, a bad value is one
  line naming the flag;
- for every task, ``meddl infer``/``batch`` parse exactly the declared options with their defaults, and the
  widget's child command (``widgetlogic.infer_arguments``) parses back to the values it was given;
- the option files are light (no numpy/torch: the module files import them when Slicer starts).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from MedDLLib.commands_tasks import TASK_COMMANDS, task_parser
from MedDLLib.errors import InputError
from MedDLLib.options import FORCE_CPU, Option, add_arguments, command_arguments, widget_options

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"ich": "ICHDetectorLib", "glioma": "GliomaClassifierLib", "lgg": "LGGSegmenterLib", "lung": "LungSurvivalLib"}


def _task(name: str):
    import importlib

    return importlib.import_module(f"{TASKS[name]}.cli").TASK, importlib.import_module(f"{TASKS[name]}.options")


def test_an_option_derives_flag_field_and_checks():
    option = Option("heatmap_label", str, "any", "label", choices=("any", "subdural"))
    assert (option.flag, option.field) == ("--heatmap-label", "heatmapLabel")
    assert option.arguments("subdural") == ["--heatmap-label", "subdural"]
    with pytest.raises(InputError, match="--heatmap-label: 'chronic' is not one of any, subdural"):
        option.check("chronic")
    ranged = Option("margin", float, 2.0, "margin", range=(0.0, 10.0), unit="mm")
    assert ranged.arguments(2.5) == ["--margin", "2.5"]
    with pytest.raises(InputError, match=r"--margin: 11.0 is outside \[0.0, 10.0\] mm"):
        ranged.check(11)
    with pytest.raises(InputError, match="expected float, got 'wide'"):
        ranged.check("wide")
    with pytest.raises(InputError, match="outside"):
        Option("bad", float, 20.0, "default outside its range", range=(0.0, 10.0))
    with pytest.raises(TypeError, match="a flag defaults to False"):
        Option("on", bool, True, "a flag")


def test_command_line_errors_are_one_usage_line(capsys):
    parser = argparse.ArgumentParser(prog="meddl infer x")
    add_arguments(parser, [Option("margin", float, 2.0, "margin in mm", range=(0.0, 10.0), unit="mm")])
    assert parser.parse_args([]).margin == 2.0
    assert "margin in mm (default 2.0 mm, 0.0..10.0 mm)" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):
        parser.parse_args(["--margin", "12"])
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == "meddl infer x: error: argument --margin: 12.0 is outside [0.0, 10.0] mm"


@pytest.mark.parametrize("subcommand", ["infer", "batch"])
@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_task_parsers_read_the_declared_options(name, subcommand):
    task, options = _task(name)
    command = next(c for c in TASK_COMMANDS if c.name == subcommand)
    parser = task_parser(command, task)
    declared = {o.flag for o in options.INFER}
    flags = {f for action in parser._actions for f in action.option_strings}
    assert declared <= flags and FORCE_CPU.flag in flags
    required = {"infer": ["--input", "i", "--output", "o"], "batch": ["--input", "i", "--output", "o"]}[subcommand]
    parsed = parser.parse_args(required)
    for option in options.INFER:
        assert getattr(parsed, option.name) == option.default, option.name


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_widget_command_parses_back_to_its_values(name, tmp_path):
    import importlib

    task, options = _task(name)
    widgetlogic = importlib.import_module(f"{TASKS[name]}.widgetlogic")
    values = {}
    for option in widget_options(options.INFER):  # a value other than the default for each
        if option.type is bool:
            values[option.name] = True
        elif option.choices:
            values[option.name] = option.choices[-1]
        elif option.range:
            values[option.name] = round(option.range[0] + 0.25 * (option.range[1] - option.range[0]), 4)
    arguments = widgetlogic.infer_arguments(tmp_path / "in", "model", tmp_path / "out", **values)
    assert arguments[:2] == ["infer", name]
    parsed = task_parser(next(c for c in TASK_COMMANDS if c.name == "infer"), task).parse_args(arguments[2:])
    assert {k: getattr(parsed, k) for k in values} == values
    defaults = parser_defaults = task_parser(next(c for c in TASK_COMMANDS if c.name == "infer"), task).parse_args(
        ["--input", "i", "--output", "o", *command_arguments(options.INFER, {})])
    assert all(getattr(defaults, o.name) == o.default for o in options.INFER), parser_defaults


def test_the_ich_threshold_is_declared_once():
    """The 0.5 default lives in ICHDetectorLib/options.py; the command line, the parameter node and the widget's
    command take it from there (the .ui sets no value of its own)."""
    from ICHDetectorLib import options

    assert options.THRESHOLD.default == 0.5
    places = [p for p in [ROOT / "ICHDetector" / "ICHDetector.py", ROOT / "ICHDetector" / "ICHDetectorLib" / "cli.py",
                          ROOT / "ICHDetector" / "ICHDetectorLib" / "widgetlogic.py",
                          ROOT / "ICHDetector" / "Resources" / "UI" / "ICHDetector.ui"]
              if "0.5" in p.read_text().replace("0.5,", "")]
    source = (ROOT / "ICHDetector" / "ICHDetectorLib" / "cli.py").read_text()
    assert '"--threshold", type=float, default=0.5' not in source
    assert not [p for p in places if p.suffix in (".ui",) or p.name in ("ICHDetector.py", "widgetlogic.py")], places
    # no threshold defaults to its own 0.5 anywhere in the task (logic's ICHOptions, model's evaluate_model, ...)
    import re

    written = [f"{p.name}:{n}" for p in sorted((ROOT / "ICHDetector").rglob("*.py"))
               for n, line in enumerate(p.read_text().splitlines(), 1)
               if re.search(r"threshold\b[^=\n]*=\s*0\.5\b|\"threshold\", float, 0\.5\b", line)]
    assert written == ["options.py:16"], written


@pytest.mark.parametrize("module", ["ICHDetectorLib", "LGGSegmenterLib"])
def test_logic_options_take_the_declared_defaults(module):
    """The logic's options dataclass (console, pipeline) starts from the declared defaults, and the task's
    cli.py reads what its parser always sets directly (no second default in a getattr)."""
    import importlib

    declared = importlib.import_module(f"{module}.options").INFER
    logic = importlib.import_module(f"{module}.logic")
    made = (logic.ICHOptions if module == "ICHDetectorLib" else logic.LGGOptions)()
    assert {o.name: getattr(made, o.name) for o in declared} == {o.name: o.default for o in declared}
    cli = (ROOT / module.replace("Lib", "") / module / "cli.py").read_text()
    assert "getattr(args" not in cli


def test_option_files_are_light():
    code = ("import sys; sys.path[:0] = %r\n"
            "import ICHDetectorLib.options, GliomaClassifierLib.options, LGGSegmenterLib.options, "
            "LungSurvivalLib.options\n"
            "heavy = sorted(m for m in ('numpy', 'torch', 'pydicom', 'SimpleITK', 'vtk') if m in sys.modules)\n"
            "assert not heavy, heavy\n") % ([str(ROOT / "MedDLExtension")] + [
        str(ROOT / d) for d in ("ICHDetector", "GliomaClassifier", "LGGSegmenter", "LungSurvival")])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_ich_heatmap_label_choices_are_the_dataset_labels():
    from ICHDetectorLib import options
    from ICHDetectorLib.dataset import LABELS

    assert options.HEATMAP_LABELS == tuple(LABELS)
