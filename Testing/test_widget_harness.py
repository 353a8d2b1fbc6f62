"""Every module's ``<Module>.py`` run as Slicer runs it, against Slicer 5.12's own Python layer (issue 16).

``Testing/slicer_layer/harness.py`` loads Slicer's real ``slicer`` package (``util``, ``ScriptedLoadableModule``,
``parameterNodeWrapper``, ``i18n``) from ``../shared/reference/slicer``, real MRML from slicer-core, and stand-ins
only for the Qt/CTK/qMRML widget classes (``standins.py``: exactly the properties and signals of the real classes,
PythonQt semantics). ``slicer.util.loadUI`` builds the widget tree from the module's real ``.ui``. For each module:
``setup``; every bound widget round-trips with the parameter node; Apply starts the real ``meddl infer`` child and
its outputs load as new nodes (the device the run uses is shown); Cancel; a failing run (tampered weights) reaches
``slicer.util.errorDisplay``; exit/enter; scene close; a saved scene whose model is not in the cache keeps the
choice, shown missing, with Apply off. The negative controls show the harness fails where Slicer would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "slicer"
LAYER = Path(__file__).resolve().parent / "slicer_layer"
TASK_MODULES = ("ICHDetector", "LungSurvival", "LGGSegmenter", "GliomaClassifier")
#: What the harness must have done for every task module (beside the per-field round trips).
TASK_CHECKS = {"setup", "enter", "round trips", "Apply enables on inputs and model",
               "Apply runs the child and loads its outputs", "Cancel", "a failing run reaches errorDisplay",
               "exit and enter", "scene close and reopen with a missing model", "cleanup",
               "the module's test_ParameterNode"}


def _paths(version: str = "v5.12.0") -> tuple[Path, Path]:
    base, headers = REFERENCE / version / "Base" / "Python", REFERENCE / "widget-headers"
    if not (base / "slicer" / "ScriptedLoadableModule.py").is_file() or not headers.is_dir():
        pytest.skip(f"Slicer's Python layer or the widget headers not found under {REFERENCE}")
    return base, headers


def run_harness(module: str, work: Path, root: Path = ROOT, *extra: str, version: str = "v5.12.0") -> dict:
    base, headers = _paths(version)
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, str(LAYER / "harness.py"), str(base), str(headers), str(root), module,
                           str(work), *extra], capture_output=True, text=True, timeout=900, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(lines[-1])
    report["returncode"] = done.returncode
    return report


@pytest.mark.parametrize("module", TASK_MODULES)
def test_task_module_runs_in_slicers_python_layer(module, tmp_path):
    report = run_harness(module, tmp_path)
    assert not report["failed"], "\n\n".join(f"{k}: {v}" for k, v in report["failed"].items())
    assert report["returncode"] == 0
    assert TASK_CHECKS <= set(report["done"]), TASK_CHECKS - set(report["done"])
    fields = next(d for d in report["done"] if d.startswith("fields "))
    assert "forceCpu" in fields  # every task binds Force CPU
    outputs = next(d for d in report["done"] if d.startswith("outputs: "))
    assert len(outputs) > 20, outputs


def test_library_module_runs_in_slicers_python_layer(tmp_path):
    report = run_harness("MedDLExtension", tmp_path)
    assert not report["failed"] and report["returncode"] == 0, report["failed"]
    assert {"setup", "enter", "exit", "scene close", "enter after close"} <= set(report["done"])


def _module_copy(tmp_path: Path, module: str) -> Path:
    """A repository root holding the shared library and one module, copied so it can be broken."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "MedDLExtension").symlink_to(ROOT / "MedDLExtension")
    shutil.copytree(ROOT / module, root / module, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_a_misspelt_property_in_a_ui_file_fails_setup(tmp_path):
    root = _module_copy(tmp_path, "ICHDetector")
    ui = root / "ICHDetector" / "Resources" / "UI" / "ICHDetector.ui"
    text = ui.read_text()
    assert '<property name="wordWrap">' in text
    ui.write_text(text.replace('<property name="wordWrap">', '<property name="wordwrap">', 1))
    report = run_harness("ICHDetector", tmp_path / "work", root, "setup-only")
    assert "setup" in report["failed"] and report["returncode"] == 1
    assert "has no property 'wordwrap'" in report["failed"]["setup"]


def test_stand_ins_know_the_real_properties_and_signals():
    sys.path.insert(0, str(LAYER))
    try:
        import standins
    finally:
        sys.path.remove(str(LAYER))
    _, headers = _paths()
    qt, ctk, classes = standins.make_modules(headers)
    button = qt.QPushButton()
    button.enabled = False  # a QWidget property
    with pytest.raises(AttributeError, match="has no property 'enable'"):
        button.enable = True
    with pytest.raises(AttributeError, match="no signal 'clicked\\(int\\)'"):
        button.connect("clicked(int)", print)
    got = []
    box = qt.QCheckBox()
    box.connect("toggled(bool)", lambda: got.append("no argument"))  # PythonQt drops the extra argument
    box.stateChanged.connect(got.append)
    box.checked = True
    assert got == [2, "no argument"] or got == ["no argument", 2]
    slider = ctk.ctkSliderWidget()
    assert "valueChanged(double)" in slider._facts["signals"] and "decimals" in slider._facts["properties"]
    combo = classes["qMRMLNodeComboBox"]()
    assert "currentNodeChanged(vtkMRMLNode*)" in combo._facts["signals"]
    assert combo._facts["properties"]["nodeTypes"]["type"] == "QStringList"
    with pytest.raises(AttributeError):
        combo.nodeType = ["vtkMRMLScalarVolumeNode"]
