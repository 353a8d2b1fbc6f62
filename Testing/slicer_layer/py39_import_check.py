"""Import MedDL's Slicer-side files (the ``<Module>.py`` files and ``MedDLWidgets``) in an old Python.

Slicer 5.8 runs Python 3.9, which evaluates annotations such as ``str | None`` when a function is defined unless
the file has ``from __future__ import annotations``: such a file does not import and the module never appears.
Run with that Python::

    python3.9 py39_import_check.py <repo root>

``slicer``, ``vtk``, ``qt`` and ``ctk`` are permissive stand-ins (any attribute is a class that accepts anything),
since neither the application nor slicer-core exists for Python 3.9 here; ``MedDLWidgets`` and ``MedDLLib``
are the real files. Then, as Slicer 5.8.1 (``slicer.app`` says 5.8), each task module is instantiated and its
widget goes through ``setup``, ``enter``, ``exit``, ``cleanup``: it must say in one line which Slicer MedDL needs
and raise nothing. Prints one line per file: ``ok <file>: <message>`` or ``FAILED <file>: <error>``; exits 1 on a
failure.
"""

import importlib.abc
import logging
import importlib.machinery
import importlib.util
import sys
import traceback
import types
from pathlib import Path

STUBBED = ("slicer", "vtk", "qt", "ctk")


class _AnythingType(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: _Anything()


class _Anything(metaclass=_AnythingType):
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return _Anything()

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _Anything()


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        classy = name[:1].isupper() or name.startswith(("vtk", "q", "ctk"))
        value = type(name, (_Anything,), {}) if classy else _Anything()
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _as_old_slicer(name: str, module: types.ModuleType, messages: _Messages) -> str:
    """Module and widget lifecycle as Slicer 5.8.1 runs it; the one line the module says."""
    messages.lines.clear()
    getattr(module, name)(_Anything())
    widget = getattr(module, f"{name}Widget")(_Anything())
    widget.setup()
    widget.enter()
    widget.exit()
    widget.cleanup()
    said = [line for line in messages.lines if "needs 3D Slicer 5.12" in line]
    if len(said) != 1 or len(messages.lines) != 1:
        raise AssertionError(f"expected one line naming the Slicer MedDL needs, got {messages.lines}")
    return said[0]


def main(root: Path) -> int:
    sys.meta_path.insert(0, _StubFinder())
    import slicer

    slicer.app = types.SimpleNamespace(majorVersion=5, minorVersion=8, applicationVersion="5.8.1")
    messages = _Messages()
    logging.getLogger().addHandler(messages)
    modules = [str(p) for p in sorted(root.iterdir()) if (p / f"{p.name}.py").is_file()]
    sys.path[:0] = [str(root / "MedDLExtension")] + modules
    files = [root / "MedDLExtension" / "MedDLWidgets" / "__init__.py"]
    files += sorted(p / f"{p.name}.py" for p in root.iterdir() if (p / f"{p.name}.py").is_file())
    failed = 0
    for path in files:
        name = "MedDLWidgets" if path.name == "__init__.py" else path.stem
        try:
            if name == "MedDLWidgets":
                import MedDLWidgets  # noqa: F401
                said = "imported"
            else:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                said = "imported" if name == "MedDLExtension" else _as_old_slicer(name, module, messages)
            print(f"ok {path.relative_to(root)}: {said}")
        except Exception as exc:  # noqa: BLE001 - reported
            failed += 1
            where = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"FAILED {path.relative_to(root)}: {type(exc).__name__}: {exc} ({where.filename}:{where.lineno})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
