"""MedDL laid out as Slicer installs it, with no pip metadata: the tasks are found as they are in Slicer.

``slicerMacroBuildScriptedModule`` copies every file a module's CMakeLists.txt lists into one folder,
``qt-scripted-modules/``; the extension has no ``*.dist-info`` there, so ``pyproject.toml``'s ``meddl.tasks``
entry points do not exist. ``meddl_batch.py`` (the README's headless command) must still find every task: the
modules register theirs when Slicer loads them, and the script registers the extension's own when it runs in
``PythonSlicer``. The child below hides the development install's entry points and checks that every package
it imports comes from the installed layout.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("MedDLExtension", "GliomaClassifier", "ICHDetector", "LGGSegmenter", "LungSurvival")
_spec = importlib.util.spec_from_file_location("update_cmake_lists", ROOT / "scripts" / "update_cmake_lists.py")
cmake_lists = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cmake_lists)

#: Run in the child: no ``meddl.tasks`` metadata (as in Slicer), then the installed ``meddl_batch.py``.
CHILD = r"""
import importlib.metadata, json, runpy, sys
real = importlib.metadata.entry_points
importlib.metadata.entry_points = lambda **kw: [] if kw.get("group") == "meddl.tasks" else real(**kw)
script, out, *argv = sys.argv[1:]
sys.argv = [script, *argv]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    status = exc.code
import MedDLLib, MedDLLib.tasks
libraries = {name: sys.modules[name].__file__ for name in sys.modules
             if name.endswith("Lib") and "." not in name and getattr(sys.modules[name], "__file__", None)}
json.dump({"status": status, "libraries": libraries}, open(out, "w"))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``qt-scripted-modules/`` with exactly the files the CMakeLists list."""
    target = tmp_path_factory.mktemp("Slicer") / "lib" / "Slicer-5.12" / "qt-scripted-modules"
    for module in MODULES:
        scripts, resources = cmake_lists.listed_files(ROOT / module)
        for rel in scripts + resources:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / module / rel, target / rel)
    return target


def _run(installed: Path, tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "child.json"
    done = subprocess.run([sys.executable, "-c", CHILD, str(installed / "MedDLScripts" / "meddl_batch.py"),
                           str(out), *argv], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.is_file(), done.stdout[-2000:] + done.stderr[-3000:]
    return {**json.loads(out.read_text()), "stdout": done.stdout, "stderr": done.stderr}


@pytest.mark.parametrize("task", ["glioma", "ich", "lgg", "lung"])
def test_meddl_batch_finds_each_task_in_the_installed_layout(installed, tmp_path, task):
    """``meddl_batch.py -- phantom <task>`` runs from ``qt-scripted-modules`` (was: "unknown task")."""
    run = _run(installed, tmp_path, "--", "phantom", task, str(tmp_path / "phantoms"), "--cases", "2",
               "--seed", "0")
    assert run["status"] in (0, None), run["stdout"][-1500:] + run["stderr"][-1500:]
    assert any((tmp_path / "phantoms").iterdir())
    assert "MedDLLib" in run["libraries"] and run["libraries"], run
    for name, path in run["libraries"].items():
        assert Path(path).is_relative_to(installed), f"{name} imported from {path}, not the installed extension"


def test_without_registration_the_task_is_unknown(installed, tmp_path):
    """The check can fail: with the script's registration removed, the task is not found (today's break)."""
    script = installed / "MedDLScripts" / "meddl_batch.py"
    broken = installed.parent / "broken" / "MedDLScripts" / "meddl_batch.py"
    shutil.copytree(installed, broken.parents[1], dirs_exist_ok=True)
    source = script.read_text()
    assert "register_task_entry(name, entry)" in source
    broken.write_text(source.replace("register_task_entry(name, entry)", "pass"))
    run = _run(broken.parents[1], tmp_path, "--", "phantom", "ich", str(tmp_path / "p"), "--cases", "1")
    assert run["status"] not in (0, None)
    assert "unknown task 'ich'" in run["stdout"] + run["stderr"]


def test_one_list_of_task_entries():
    """pyproject's entry points, meddl_batch.py's list and each module's registration name the same tasks."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["meddl.tasks"]
    spec = importlib.util.spec_from_file_location("meddl_batch", ROOT / "MedDLExtension" / "MedDLScripts" /
                                                  "meddl_batch.py")
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    assert batch.EXTENSION_TASKS == declared
    registered = {}
    for module in MODULES[1:]:
        tree = ast.parse((ROOT / module / f"{module}.py").read_text())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == module)
        init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
        calls = [n for n in ast.walk(init) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", "") == "register_task_entry"]
        assert len(calls) == 1, f"{module}: the module class registers its task once when Slicer loads it"
        name, entry = (ast.literal_eval(a) for a in calls[0].args)
        registered[name] = entry
    assert registered == declared
