"""MedDL's module files against Slicer's own Python layer (``../shared/reference/slicer/``), not imitations.

- every parameter-node field bound in a module's .ui connects through Slicer's real ``guiConnectors`` (Slicer
  5.12 and 5.10): a ``float`` on a ``ctkSliderWidget`` needs ``WithinRange``, a ``str`` on a ``QComboBox`` needs
  ``Choice`` (Glioma's unbounded threshold made ``setup()`` and every ``enter()`` raise, so Apply never enabled);
- the module files and ``MedDLWidgets`` import in Python 3.9 (Slicer 5.8's), where ``str | None`` in an
  annotation raises at import unless the file postpones annotations, and on Slicer 5.8 each module says in one
  line that MedDL needs Slicer 5.12 (its widget builds nothing else, installs nothing);
- after installing packages, a Slicer session that still has the old version imported (Slicer 5.8/5.10 import
  pydicom 2.4.4 in their DICOM module) is told to restart, never that it succeeded.

Stand-ins are only the Qt/CTK/qMRML widget classes (and, for Python 3.9, ``slicer``/``vtk`` themselves: neither
Slicer nor slicer-core exists for 3.9 here); the parameterNodeWrapper code is Slicer's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "slicer"
CHECKS = Path(__file__).resolve().parent / "slicer_layer"
MODULES = ("GliomaClassifier", "ICHDetector", "LGGSegmenter", "LungSurvival")


def _reference(version: str) -> Path:
    base = REFERENCE / version / "Base" / "Python"
    if not (base / "slicer" / "parameterNodeWrapper").is_dir():
        pytest.skip(f"Slicer's Python layer not found at {base}")
    return base


def _connect(version: str, root: Path, modules=MODULES) -> dict:
    done = subprocess.run([sys.executable, str(CHECKS / "connect_gui_check.py"), str(_reference(version)),
                           str(root), *modules], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("version", ["v5.12.0", "v5.10.0"])
def test_every_bound_field_connects_with_slicers_gui_connectors(version):
    report = _connect(version, ROOT)
    assert set(report) == set(MODULES)
    assert all(report[m] for m in MODULES), report  # each module binds widgets
    failures = {f"{m}.{field}": error for m in MODULES for field, error in report[m].items() if error}
    assert not failures, failures


def test_the_connector_check_catches_an_unbounded_slider(tmp_path):
    """The check fails where Slicer fails: the Glioma threshold without its WithinRange (as on the old main)."""
    module = tmp_path / "GliomaClassifier"
    shutil.copytree(ROOT / "GliomaClassifier" / "Resources", module / "Resources")
    source = (ROOT / "GliomaClassifier" / "GliomaClassifier.py").read_text()
    bounded = "threshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5"
    assert bounded in source
    (module / "GliomaClassifier.py").write_text(source.replace(bounded, "threshold: float = 0.5"))
    report = _connect("v5.12.0", tmp_path, ["GliomaClassifier"])
    assert "where the float types is unbounded" in report["GliomaClassifier"]["threshold"]
    assert report["GliomaClassifier"]["forceCpu"] is None


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
    assert slicer_version_problem(5, 10, "5.10.0").startswith("MedDL needs 3D Slicer 5.12 or later; this is Slicer 5.10.0")
    readme = (ROOT / "README.md").read_text()
    assert "Slicer 5.12 or later" in readme


def test_an_upgrade_under_a_loaded_package_asks_for_a_restart(tmp_path):
    import types

    from MedDLLib.guisupport import stale_imports

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pydicom>=3.0\nscikit-image>=0.22\n")
    old = {"pydicom": types.SimpleNamespace(__version__="2.4.4"), "skimage": types.SimpleNamespace(__version__="0.25.0")}
    assert stale_imports(requirements, old) == ["pydicom 2.4.4 (needs >=3.0)"]
    assert stale_imports(requirements, {"pydicom": types.SimpleNamespace(__version__="3.0.2")}) == []
    assert stale_imports(requirements, {}) == []  # nothing imported yet: the new version is what will load
