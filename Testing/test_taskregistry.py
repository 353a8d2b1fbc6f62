"""The task registry (issue 17): one task loads only its own library, a task's networks are found through its
declaration, and no import cycle runs through the model packages, the task registry or the Task base."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from MedDLLib import models


def test_get_task_imports_only_that_task_library():
    code = ("import sys; from MedDLLib.tasks import get_task; get_task('ich'); print(sorted(m for m in sys.modules "
            "if m.split('.')[0].endswith('Lib') and m.split('.')[0] != 'MedDLLib'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {name.split(".")[0] for name in eval(out)}  # noqa: S307 - our own printed list
    assert loaded == {"ICHDetectorLib"}, out


def test_verify_of_a_task_network_loads_only_that_task(tmp_path):
    from ICHDetectorLib.model import untrained_package

    package = untrained_package(tmp_path, 32)
    code = ("import sys; from MedDLLib.models import verify_model; r = verify_model(sys.argv[1]); "
            "print(r['network'], sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0].endswith('Lib')}))")
    out = subprocess.run([sys.executable, "-c", code, str(package)], capture_output=True, text=True, check=True)
    assert "built and loaded (strict)" in out.stdout and "['ICHDetectorLib', 'MedDLLib']" in out.stdout, out


def test_help_and_bench_dicom_load_no_task_library(tmp_path):
    """``meddl <subcommand> -h`` lists the tasks and ``meddl bench dicom`` runs without importing a task library
    (the registry's names, not the task objects)."""
    code = ("import contextlib, io, sys; from MedDLLib.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    assert main(['bench', '-h']) == 0 and main(['train', '-h']) == 0\n"
            "    main(['bench', 'dicom', '--input', sys.argv[1]])\n"
            "assert 'ich' in out.getvalue(), out.getvalue()\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0].endswith('Lib')}))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "['MedDLLib']", done.stdout + done.stderr[-2000:]


def test_no_import_cycle_in_the_shared_library_and_no_task_library_import():
    """No import in MedDLLib (module level or inside a function) names a task library, and no import cycle runs
    through the model packages, the task registry or the Task base (issue 17: models <-> tasks)."""
    import ast

    root = Path(models.__file__).resolve().parents[1]
    modules = {}
    for file in root.rglob("*.py"):
        rel = file.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(["MedDLLib", *parts]) if parts else "MedDLLib"] = file
    graph: dict[str, set[str]] = {name: set() for name in modules}
    task_imports = []
    for name, file in modules.items():
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(file.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                top = target.split(".")[0]
                if top.endswith("Lib") and top != "MedDLLib":
                    task_imports.append((name, target))
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    assert not task_imports, task_imports
    cycles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    ours = ("MedDLLib.models", "MedDLLib.tasks", "MedDLLib.taskregistry", "MedDLLib.commands_models",
            "MedDLLib.bundles", "MedDLLib.commands_tasks", "MedDLLib.demo")
    mine = [c for c in cycles if any(m == o or m.startswith(o + ".") for m in c for o in ours)]
    assert not mine, mine


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components (iterative enough for a few hundred modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.add(item)
                if item == node:
                    break
            out.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return out
