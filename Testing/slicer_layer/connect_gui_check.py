"""Bind every module's parameter-node fields to the widgets of its .ui with Slicer's own ``guiConnectors``.

Run as a script in a fresh interpreter (it puts stand-ins for ``qt`` and ``ctk`` into ``sys.modules``)::

    python connect_gui_check.py <Slicer Base/Python folder> <repo root> <Module> [<Module> ...]

For each ``SlicerParameterName`` widget of ``<Module>/Resources/UI/<Module>.ui`` it builds a stand-in of the
widget's class and the field's annotated type (evaluated from ``<Module>.py`` with the real
``slicer.parameterNodeWrapper`` validators) and calls the real ``createGuiConnector``; that is the call that
raises "Cannot have a connection to ctkSliderWidget where the float types is unbounded" in Slicer's
``connectGui``. Prints one JSON object ``{module: {field: error or null}}``.

Stand-ins: only the Qt/CTK/qMRML widget classes (a permissive object whose type is the named class, as
``guiConnectors`` compares ``type(widget)``). MRML classes are the real ones from ``slicer-core``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import types
import typing
import xml.etree.ElementTree as ET
from pathlib import Path


class _Widget:
    """Accepts any property assignment and any method call (the connectors configure ranges, items, ...)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _widget_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    classes: dict[str, type] = {}

    def __getattr__(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        if attribute not in classes:
            classes[attribute] = type(attribute, (_Widget,), {})
        return classes[attribute]

    module.__getattr__ = __getattr__
    return module


def main(base_python: Path, root: Path, modules: list[str]) -> dict:
    sys.modules["qt"] = _widget_module("qt")
    sys.modules["ctk"] = _widget_module("ctk")
    import slicer  # real MRML (slicer-core)

    qmrml = _widget_module("slicer")  # the qMRML/qSlicer widget classes slicer-core (no Qt) lacks

    def missing(attribute: str):
        if attribute.startswith(("qMRML", "qSlicer")):
            return getattr(qmrml, attribute)
        raise AttributeError(attribute)

    slicer.__getattr__ = missing
    package = base_python / "slicer" / "parameterNodeWrapper"
    spec = importlib.util.spec_from_file_location("slicer.parameterNodeWrapper", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    pnw = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pnw
    spec.loader.exec_module(pnw)
    from slicer.parameterNodeWrapper.guiConnectors import createGuiConnector

    namespace = {**vars(typing), **{k: getattr(pnw, k) for k in dir(pnw) if not k.startswith("_")},
                 **{k: getattr(slicer, k) for k in dir(slicer) if k.startswith("vtkMRML")}}
    report: dict = {}
    for module in modules:
        source = (root / module / f"{module}.py").read_text()
        tree = ast.parse(source)
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}ParameterNode")
        fields = {s.target.id: eval(ast.get_source_segment(source, s.annotation), namespace)  # noqa: S307
                  for s in cls.body if isinstance(s, ast.AnnAssign)}
        ui = ET.parse(root / module / "Resources" / "UI" / f"{module}.ui")
        report[module] = {}
        for widget in ui.iter("widget"):
            bound = [p.findtext("string") for p in widget.findall("property") if p.get("name") == "SlicerParameterName"]
            for field in bound:
                cls_name = widget.get("class")
                owner = sys.modules["ctk"] if cls_name.startswith("ctk") else (
                    slicer if cls_name.startswith("qMRML") else sys.modules["qt"])
                try:
                    if field not in fields:
                        raise KeyError(f"no parameter-node field {field!r}")
                    createGuiConnector(getattr(owner, cls_name)(), fields[field])
                    report[module][field] = None
                except Exception as exc:  # noqa: BLE001 - reported to the test
                    report[module][field] = f"{cls_name}: {type(exc).__name__}: {exc}"
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])))
