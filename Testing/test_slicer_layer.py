"""MedDL's module files against Slicer's own Python layer (``../shared/reference/slicer/``), not imitations.

- every parameter-node field bound in a module's .ui connects through Slicer 5.12's real ``guiConnectors`` when
  the widget harness runs ``setup()``: a ``float`` on a ``ctkSliderWidget`` needs ``WithinRange``, a ``str`` on a
  ``QComboBox`` needs ``Choice`` (Glioma's unbounded threshold made ``setup()`` and every ``enter()`` raise, so
  Apply never enabled); on Slicer 5.10 each module shows the one line saying it needs 5.12;
- the module files and ``MedDLWidgets`` import in Python 3.9 (Slicer 5.8's), where ``str | None`` in an
  annotation raises at import unless the file postpones annotations, and on Slicer 5.8 each module says in one
  line that MedDL needs Slicer 5.12 (its widget builds nothing else, installs nothing);
- after installing packages, a Slicer session that still has the old version imported (Slicer 5.8/5.10 import
  pydicom 2.4.4 in their DICOM module) is told to restart, never that it succeeded.

Stand-ins are only the Qt/CTK/qMRML widget classes (and, for Python 3.9, ``slicer``/``vtk`` themselves: neither
Slicer nor slicer-core exists for 3.9 here); the parameterNodeWrapper code is Slicer's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "slicer"
CHECKS = Path(__file__).resolve().parent / "slicer_layer"  # py39_import_check.py
MODULES = ("GliomaClassifier", "ICHDetector", "LGGSegmenter", "LungSurvival")


def _setup(version: str, root: Path, module: str, work: Path) -> dict:
    """The widget harness (``slicer_layer/harness.py``) up to ``setup()``/``enter()`` of one module."""
    from test_widget_harness import run_harness

    return run_harness(module, work, root, "setup-only", version=version)


def test_every_bound_field_connects_with_slicers_gui_connectors(tmp_path):
    """Slicer 5.12's ``setup()`` connects every ``SlicerParameterName`` widget through the real guiConnectors."""
    for module in MODULES:
        report = _setup("v5.12.0", ROOT, module, tmp_path / module)
        assert not report["failed"] and {"setup", "enter"} <= set(report["done"]), (module, report["failed"])


def test_on_slicer_5_10_each_module_says_which_slicer_it_needs(tmp_path):
    for module in MODULES:
        report = _setup("v5.10.0", ROOT, module, tmp_path / module)
        assert not report["failed"], (module, report["failed"])
        said = [d for d in report["done"] if d.startswith("unsupported: ")]
        assert said == ["unsupported: MedDL needs 3D Slicer 5.12 or later; this is Slicer 5.10.0. Install a current "
                        "Slicer from https://download.slicer.org."], report["done"]


def test_the_harness_catches_an_unbounded_slider(tmp_path):
    """Setup fails where Slicer fails: the Glioma threshold option without its range (a plain ``float`` field on
    a ctkSliderWidget, as on the old main)."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "MedDLExtension").symlink_to(ROOT / "MedDLExtension")
    shutil.copytree(ROOT / "GliomaClassifier", root / "GliomaClassifier", ignore=shutil.ignore_patterns("__pycache__"))
    options = root / "GliomaClassifier" / "GliomaClassifierLib" / "options.py"
    text = options.read_text()
    assert text.count("range=(0.01, 0.99)") == 1
    options.write_text(text.replace("range=(0.01, 0.99)", "range=None"))
    report = _setup("v5.12.0", root, "GliomaClassifier", tmp_path / "work")
    assert "where the float types is unbounded" in report["failed"].get("setup", ""), report


def _python39() -> str:
    # pyenv's own 3.9 first (its shim on PATH answers "command not found" unless 3.9 is selected)
    found = next((str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"))), None)
    if found is None and shutil.which("python3.9") and "pyenv/shims" not in shutil.which("python3.9"):
        found = shutil.which("python3.9")
    if not found:
        pytest.skip("no Python 3.9 (Slicer 5.8's) on this machine: pyenv install 3.9")
    return found


def test_module_files_import_in_python_39():
    done = subprocess.run([_python39(), str(CHECKS / "py39_import_check.py"), str(ROOT)], capture_output=True,
                          text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert len([line for line in lines if line.startswith("ok ")]) == len(MODULES) + 2  # + MedDLWidgets, MedDLExtension
    said = [line for line in lines if "MedDL needs 3D Slicer 5.12 or later; this is Slicer 5.8.1" in line]
    assert len(said) == len(MODULES), lines


def test_supported_slicer_versions():
    from MedDLLib.guisupport import MINIMUM_SLICER, slicer_version_problem

    assert MINIMUM_SLICER == (5, 12)
    assert slicer_version_problem(5, 12, "5.12.0") is None and slicer_version_problem(6, 0) is None
    assert slicer_version_problem(5, 10, "5.10.0").startswith(
        "MedDL needs 3D Slicer 5.12 or later; this is Slicer 5.10.0")
    readme = (ROOT / "README.md").read_text()
    assert "Slicer 5.12 or later" in readme


def test_an_upgrade_under_a_loaded_package_asks_for_a_restart(tmp_path):
    import types

    from MedDLLib.guisupport import stale_imports

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pydicom>=3.0\nscikit-image>=0.22\n")
    old = {"pydicom": types.SimpleNamespace(__version__="2.4.4"),
           "skimage": types.SimpleNamespace(__version__="0.25.0")}
    assert stale_imports(requirements, old) == ["pydicom 2.4.4 (needs >=3.0)"]
    assert stale_imports(requirements, {"pydicom": types.SimpleNamespace(__version__="3.0.2")}) == []
    assert stale_imports(requirements, {}) == []  # nothing imported yet: the new version is what will load
    # a __version__ that is not PEP 440 is judged by its release numbers (OpenVINO's), never called stale for it
    openvino = tmp_path / "openvino.txt"
    openvino.write_text("openvino>=2024.4\n")
    build = "2026.4.1-22982-e213a147257-releases/2026/4"
    assert stale_imports(openvino, {"openvino": types.SimpleNamespace(__version__=build)}) == []
    old_build = "2023.3.0-13775-ceeafaf64f3-releases/2023/3"
    assert stale_imports(openvino, {"openvino": types.SimpleNamespace(__version__=old_build)}) == [
        f"openvino {old_build} (needs >=2024.4)"]
