"""Static checks of the Slicer extension: what a Slicer build would otherwise find out too late.

The Slicer application is not available here, so these tests read the files Slicer reads (CMake lists, .ui
XML, module scripts parsed with :mod:`ast`, the ExtensionsIndex entry) and check them against Slicer's rules:

- the top-level CMakeLists.txt has the extension metadata, depends on PyTorch and adds every module;
- ``MedDL.json`` is a valid ExtensionsIndex entry (catalog entry schema v1.0.2) that agrees with the CMake file;
- every module folder has the template's files, and its CMakeLists lists every script and resource on disk
  (a file left out is silently missing from the packaged extension) and nothing that does not exist;
- every ``self.ui.<name>`` a module script uses exists in its .ui, and every ``SlicerParameterName`` in the .ui
  is a field of the module's ``@parameterNodeWrapper`` class whose type that widget can show;
- module scripts have the four template classes (plus the parameter node), wrap user-visible text in ``_()``
  and import nothing heavy at file scope; the Qt-free libraries never import Qt or Slicer's GUI-side Python;
- icons are real 128x128 PNGs, all different.

Each checker is a plain function returning a list of problems, so the tests can also feed it a broken copy
and see it complain (the ``*_detects_*`` tests): a check that cannot fail checks nothing.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(__file__).resolve().parent / "data" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
SHARED_SCHEMA = ROOT.parent / "shared" / "docs" / "schemas" / SCHEMA.name

MODULES = ["MedDLExtension", "GliomaClassifier", "LGGSegmenter", "LungSurvival", "ICHDetector"]
TASK_MODULES = MODULES[1:]
#: The Qt-free package of each module (the shared library for MedDLExtension).
LIBRARIES = {"MedDLExtension": "MedDLLib", **{m: f"{m}Lib" for m in TASK_MODULES}}
#: Qt-side helper packages: imported by <Module>.py files only, never by a library.
QT_SIDE_PACKAGES = {"MedDLWidgets"}

EXTENSION_KEYS = [
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
    "EXTENSION_DEPENDS",
]
#: Modules a library must never import (they exist only inside the Slicer application, with Qt).
FORBIDDEN_IN_LIBRARIES = {
    "qt",
    "ctk",
    "PythonQt",
    "slicer.ScriptedLoadableModule",
    "slicer.parameterNodeWrapper",
    *QT_SIDE_PACKAGES,
}
#: Top-level modules a <Module>.py may import at file scope besides the standard library (and its own light
#: ``<Module>Lib.options``, the declared options its parameter node is made of).
ALLOWED_FILE_SCOPE_IMPORTS = {"slicer", "vtk", "qt", "ctk", "__future__"}
#: Qt-side packages a <Module>.py may import at file scope (the task modules' shared base classes).
MODULE_FILE_SCOPE_PACKAGES = {"MedDLWidgets"}
#: Template class -> the MedDLWidgets base a task module's class may derive from instead.
TASK_BASES = {"ScriptedLoadableModuleWidget": "TaskWidget", "ScriptedLoadableModuleLogic": "TaskLogic",
              "ScriptedLoadableModuleTest": "TaskModuleTest"}
#: Dependencies of pyproject.toml that Slicer (or its PyTorch extension) provides, so not in requirements.txt.
PROVIDED_IN_SLICER = {"torch", "numpy", "simpleitk", "slicer-core", "vtk", "packaging"}

_update = importlib.util.spec_from_file_location("update_cmake_lists", ROOT / "scripts" / "update_cmake_lists.py")
cmake_lists = importlib.util.module_from_spec(_update)
_update.loader.exec_module(cmake_lists)


# ----------------------------------------------------------------------------------------------------------
# Checkers (return lists of problems)
# ----------------------------------------------------------------------------------------------------------


def ui_object_names(ui_path: Path) -> list[str]:
    """objectNames of the widgets and layouts in a Qt Designer file (what ``childWidgetVariables`` exposes)."""
    tree = ET.parse(ui_path)
    return [el.get("name") for el in tree.iter() if el.tag in ("widget", "layout") and el.get("name")]


def ui_parameter_widgets(ui_path: Path) -> list[tuple[str, str, str]]:
    """``(widget class, objectName, SlicerParameterName)`` of every widget bound to a parameter."""
    bound = []
    for widget in ET.parse(ui_path).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                value = prop.findtext("string") or prop.findtext("cstring") or ""
                bound.append((widget.get("class"), widget.get("name"), value.strip()))
    return bound


def self_ui_names(tree: ast.AST) -> set[str]:
    """Names used as ``self.ui.<name>`` anywhere in a script."""
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            names.add(node.attr)
    return names


def _decorator_name(decorator: ast.expr) -> str:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


def _base_names(cls: ast.ClassDef) -> list[str]:
    return [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in cls.bases]


def option_annotations(library: str) -> dict[str, ast.expr]:
    """The fields ``@withOptions(options.INFER)`` adds (``MedDLWidgets.parameters``), as annotations."""
    import importlib

    from MedDLLib.options import widget_options

    fields = {}
    for option in widget_options(importlib.import_module(f"{library}.options").INFER):
        text = option.type.__name__
        if option.range is not None:
            text = f"Annotated[{text}, WithinRange{option.range!r}]"
        elif option.choices is not None:
            text = f"Annotated[{text}, Choice({list(option.choices)!r})]"
        fields[option.field] = ast.parse(text, mode="eval").body
    return fields


def parameter_node_fields(tree: ast.Module) -> dict[str, ast.expr]:
    """Fields (name -> annotation) of the ``@parameterNodeWrapper`` classes of a module script (with those its
    ``@withOptions(options.INFER)`` decorator adds from the module's ``<Module>Lib.options``)."""
    fields: dict[str, ast.expr] = {}
    libraries = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module
                 and n.module.endswith("Lib") and [a.name for a in n.names] == ["options"]}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            _decorator_name(d) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    fields[stmt.target.id] = stmt.annotation
            if any(_decorator_name(d) == "withOptions" for d in node.decorator_list) and len(libraries) == 1:
                fields.update(option_annotations(libraries.pop()))
    return fields


#: Names parameterNodeWrapper reserves for itself (a field with one of these names is refused by Slicer).
RESERVED_FIELD_NAMES = {
    "allParameters",
    "default",
    "isCached",
    "dataType",
    "getValue",
    "setValue",
    "connectGui",
    "connectParametersToGui",
    "disconnectGui",
    "StartModify",
    "EndModify",
    "AddObserver",
    "RemoveObserver",
    "Modified",
    "parameterNode",
}

#: Which field types each widget class can show, after slicer.parameterNodeWrapper.guiConnectors (Slicer 5.12).
WIDGET_TYPES = {
    "QCheckBox": {"bool"},
    "ctkCheckBox": {"bool"},
    "QPushButton": {"bool"},
    "ctkCheckablePushButton": {"bool"},
    "QSlider": {"int"},
    "QSpinBox": {"int"},
    "QDoubleSpinBox": {"float", "int"},
    "ctkSliderWidget": {"float", "int"},
    "qMRMLSliderWidget": {"float", "int"},
    "ctkDoubleSlider": {"float", "int"},
    "ctkDoubleSpinBox": {"float", "int"},
    "qMRMLSpinBox": {"float", "int"},
    "QComboBox": {"int", "float", "str", "bool", "enum"},
    "ctkComboBox": {"int", "float", "str", "bool", "enum"},
    "QLineEdit": {"str"},
    "QLabel": {"str"},
    "QTextEdit": {"str"},
    "ctkRangeWidget": {"FloatRange"},
    "ctkDoubleRangeSlider": {"FloatRange"},
    "qMRMLRangeWidget": {"FloatRange"},
    "ctkPathLineEdit": {"Path"},
    "ctkDirectoryButton": {"Path"},
    "qMRMLNodeComboBox": {"node"},
    "ctkColorPickerButton": {"QColor"},
}


def annotation_kind(annotation: ast.expr, enums: set[str]) -> str:
    """What a field annotation is, as a key of :data:`WIDGET_TYPES`'s values ("unknown" if not recognised)."""
    if isinstance(annotation, ast.Subscript):
        head = (
            annotation.value.attr
            if isinstance(annotation.value, ast.Attribute)
            else getattr(annotation.value, "id", "")
        )
        args = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        if head == "Annotated":
            return annotation_kind(args[0], enums)
        if head in ("Union", "Optional"):
            kinds = {annotation_kind(a, enums) for a in args if not (isinstance(a, ast.Constant) and a.value is None)}
            return kinds.pop() if kinds == {"node"} else "unknown"
        return "unknown"
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        sides = [annotation.left, annotation.right]
        kinds = {annotation_kind(s, enums) for s in sides if not (isinstance(s, ast.Constant) and s.value is None)}
        return kinds.pop() if kinds == {"node"} else "unknown"
    name = annotation.attr if isinstance(annotation, ast.Attribute) else getattr(annotation, "id", "")
    if name in ("bool", "int", "float", "str", "FloatRange", "QColor"):
        return name
    if name.startswith("vtkMRML"):
        return "node"
    if name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
        return "Path"
    if name in enums:
        return "enum"
    return "unknown"


def enum_classes(tree: ast.Module) -> set[str]:
    return {
        n.name
        for n in tree.body
        if isinstance(n, ast.ClassDef) and {"Enum", "IntEnum", "StrEnum"} & set(_base_names(n))
    }


def check_ui_bindings(script: Path, ui: Path) -> list[str]:
    """``self.ui.<name>`` and ``SlicerParameterName`` consistency between a module script and its .ui."""
    problems = []
    tree = ast.parse(script.read_text(), filename=str(script))
    names = ui_object_names(ui)
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{ui.name}: objectName {dup!r} is used twice")
    for name in sorted(self_ui_names(tree) - set(names)):
        problems.append(f"{script.name} uses self.ui.{name}, which is not an objectName in {ui.name}")
    fields = parameter_node_fields(tree)
    enums = enum_classes(tree)
    for field in sorted(RESERVED_FIELD_NAMES & set(fields)):
        problems.append(f"{script.name}: parameter node field {field!r} is a name parameterNodeWrapper reserves")
    bound = ui_parameter_widgets(ui)
    parameter_names = [p for _, _, p in bound]
    for dup in sorted({p for p in parameter_names if parameter_names.count(p) > 1}):
        problems.append(f"{ui.name}: SlicerParameterName {dup!r} is set on more than one widget")
    for widget_class, object_name, parameter in bound:
        if parameter not in fields:
            problems.append(
                f"{ui.name}: widget {object_name} has SlicerParameterName {parameter!r}, which is not a field of the "
                f"parameterNodeWrapper class in {script.name} (fields: {', '.join(sorted(fields)) or 'none'})"
            )
            continue
        kind = annotation_kind(fields[parameter], enums)
        allowed = WIDGET_TYPES.get(widget_class)
        if allowed is None:
            problems.append(f"{ui.name}: widget {object_name} ({widget_class}) cannot be bound to a parameter")
        elif kind not in allowed:
            problems.append(
                f"{ui.name}: widget {object_name} ({widget_class}) cannot show field {parameter!r} of type "
                f"{ast.unparse(fields[parameter])} (it shows {', '.join(sorted(allowed))})"
            )
    return problems


def forbidden_imports(path: Path, forbidden: set[str]) -> list[str]:
    """Imports of ``forbidden`` modules (or their submodules) anywhere in a file, including inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    hits = []

    def is_forbidden(module: str) -> bool:
        return any(module == f or module.startswith(f + ".") for f in forbidden)

    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] if is_forbidden(node.module) else [f"{node.module}.{a.name}" for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and (getattr(node.func, "id", "") == "__import__" or getattr(node.func, "attr", "") == "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            modules = [node.args[0].value]
        hits.extend(f"{path}:{node.lineno} imports {m}" for m in modules if is_forbidden(m))
    return hits


def check_module_script(script: Path, module: str) -> list[str]:
    """Template structure, hidden flag, translated strings and file-scope imports of ``<Module>.py``."""
    problems = []
    tree = ast.parse(script.read_text(), filename=str(script))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    expected_bases = {
        module: "ScriptedLoadableModule",
        f"{module}Widget": "ScriptedLoadableModuleWidget",
        f"{module}Logic": "ScriptedLoadableModuleLogic",
        f"{module}Test": "ScriptedLoadableModuleTest",
    }
    for name, base in expected_bases.items():
        if name not in classes:
            problems.append(f"{script.name}: class {name} is missing")
        elif base not in _base_names(classes[name]) and TASK_BASES.get(base) not in _base_names(classes[name]):
            problems.append(f"{script.name}: class {name} does not derive from {base}")
    pnode = classes.get(f"{module}ParameterNode")
    if pnode is None or not any(_decorator_name(d) == "parameterNodeWrapper" for d in pnode.decorator_list):
        problems.append(f"{script.name}: class {module}ParameterNode decorated with @parameterNodeWrapper is missing")

    # self.parent.<attribute> = ... assignments in the module class
    parent_sets: dict[str, ast.expr] = {}
    for node in ast.walk(classes.get(module, ast.Module(body=[], type_ignores=[]))):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Attribute)
                    and target.value.attr == "parent"
                ):
                    parent_sets[target.attr] = node.value
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "describeTaskModule":
            # MedDLWidgets.describeTaskModule(self.parent, title, helpText) sets the six for a task module
            title, help_text = (node.args[1:] + [None, None])[:2]
            parent_sets.update(title=title, helpText=help_text, categories=node, dependencies=node,
                               contributors=node, acknowledgementText=ast.Call(func=ast.Name(id="_"), args=[],
                                                                               keywords=[]))
    for attr in ("title", "categories", "dependencies", "contributors", "helpText", "acknowledgementText"):
        if attr not in parent_sets:
            problems.append(f"{script.name}: self.parent.{attr} is not set")
    for attr in ("title", "helpText", "acknowledgementText"):
        value = parent_sets.get(attr)
        if value is not None and not (isinstance(value, ast.Call) and getattr(value.func, "id", "") == "_"):
            problems.append(f"{script.name}: self.parent.{attr} is not wrapped in _() for translation")
    hidden = parent_sets.get("hidden")
    is_hidden = isinstance(hidden, ast.Constant) and hidden.value is True
    if module == "MedDLExtension" and not is_hidden:
        problems.append(f"{script.name}: the shared-library module must set self.parent.hidden = True")
    if module != "MedDLExtension" and is_hidden:
        problems.append(f"{script.name}: a task module must not be hidden")

    # file scope: only imports of slicer/vtk/qt/ctk/stdlib, definitions and constants (no side effects)
    stdlib = sys.stdlib_module_names
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                own_options = (isinstance(node, ast.ImportFrom) and name == LIBRARIES[module]
                               and [a.name for a in node.names] == ["options"])
                if node.__class__ is ast.ImportFrom and node.level:
                    problems.append(f"{script.name}:{node.lineno}: relative import at file scope")
                elif own_options or (top in MODULE_FILE_SCOPE_PACKAGES and module != "MedDLExtension"):
                    continue
                elif top not in ALLOWED_FILE_SCOPE_IMPORTS and top not in stdlib:
                    problems.append(
                        f"{script.name}:{node.lineno}: imports {name} at file scope (import it inside a function, "
                        "after the dependency check)"
                    )
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstring
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and (
            node.value is None
            or all(
                isinstance(n, (ast.Constant, ast.Tuple, ast.List, ast.Dict, ast.Set, ast.Load))
                for n in ast.walk(node.value)
            )
        ):
            continue  # a constant
        else:
            problems.append(f"{script.name}:{node.lineno}: statement with possible side effects at file scope")

    text = script.read_text()
    task_widget = f"{module}Widget" in classes and "TaskWidget" in _base_names(classes[f"{module}Widget"])
    if f'"UI/{module}.ui"' not in text and not task_widget:  # TaskWidget loads UI/<moduleName>.ui
        problems.append(f"{script.name}: the widget does not load Resources/UI/{module}.ui")
    library = LIBRARIES[module]
    task_test = f"{module}Test" in classes and "TaskModuleTest" in _base_names(classes[f"{module}Test"])
    if f"{library}.selftests.ALL" not in text and not task_test:  # TaskModuleTest runs <Module>Lib.selftests.ALL
        problems.append(f"{script.name}: {module}Test does not run {library}.selftests.ALL")
    return problems


def check_module_cmake(module_dir: Path) -> list[str]:
    """The module CMakeLists.txt follows the template and its Testing folders exist."""
    problems = []
    name = module_dir.name
    commands = cmake_lists.parse_commands((module_dir / "CMakeLists.txt").read_text())
    variables = cmake_lists.set_variables((module_dir / "CMakeLists.txt").read_text())
    if variables.get("MODULE_NAME") != [name]:
        problems.append(f"{name}/CMakeLists.txt: set(MODULE_NAME {name}) is missing")
    build = [args for cmd, args in commands if cmd == "slicermacrobuildscriptedmodule"]
    if len(build) != 1:
        problems.append(f"{name}/CMakeLists.txt: expected one slicerMacroBuildScriptedModule(...)")
    else:
        args = build[0]
        for required in (
            ["NAME", "${MODULE_NAME}"],
            ["SCRIPTS", "${MODULE_PYTHON_SCRIPTS}"],
            ["RESOURCES", "${MODULE_PYTHON_RESOURCES}"],
        ):
            if not any(args[i : i + 2] == required for i in range(len(args) - 1)):
                problems.append(f"{name}/CMakeLists.txt: slicerMacroBuildScriptedModule lacks {' '.join(required)}")
        if "WITH_GENERIC_TESTS" not in args:
            problems.append(f"{name}/CMakeLists.txt: slicerMacroBuildScriptedModule lacks WITH_GENERIC_TESTS")
    if ["SCRIPT", "${MODULE_NAME}.py"] not in [args for cmd, args in commands if cmd == "slicer_add_python_unittest"]:
        problems.append(f"{name}/CMakeLists.txt: slicer_add_python_unittest(SCRIPT ${{MODULE_NAME}}.py) is missing")
    if ["Testing"] not in [args for cmd, args in commands if cmd == "add_subdirectory"]:
        problems.append(f"{name}/CMakeLists.txt: add_subdirectory(Testing) is missing")
    testing = module_dir / "Testing" / "CMakeLists.txt"
    if not testing.is_file() or ["Python"] not in [
        a for c, a in cmake_lists.parse_commands(testing.read_text()) if c == "add_subdirectory"
    ]:
        problems.append(f"{name}/Testing/CMakeLists.txt with add_subdirectory(Python) is missing")
    if not (module_dir / "Testing" / "Python" / "CMakeLists.txt").is_file():
        problems.append(f"{name}/Testing/Python/CMakeLists.txt is missing")
    return problems


# ----------------------------------------------------------------------------------------------------------
# Extension level
# ----------------------------------------------------------------------------------------------------------


def test_top_level_cmake_declares_the_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    commands = cmake_lists.parse_commands(text)
    variables = cmake_lists.set_variables(text)
    assert ["MedDL"] in [args for cmd, args in commands if cmd == "project"], "project(MedDL) is missing"
    assert any(cmd == "cmake_minimum_required" for cmd, _ in commands)
    for key in EXTENSION_KEYS:
        assert variables.get(key) and all(v.strip() for v in variables[key]), f"{key} is missing or empty"
    assert variables["EXTENSION_DEPENDS"] == ["PyTorch"]
    for url_key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert all(v.startswith("https://") for v in variables[url_key]), url_key
    assert ["Slicer", "REQUIRED"] in [args for cmd, args in commands if cmd == "find_package"]
    includes = [args[0] for cmd, args in commands if cmd == "include" and args]
    assert includes == ["${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"]
    assert cmake_lists.module_names(ROOT) == MODULES  # one add_subdirectory per module, each once


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # an SPDX expression and the file (PEP 639): setuptools stops building the table form after 2027-02-18
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]


def _catalog_errors(entry: dict) -> list[str]:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.path)) or '(entry)'}: {e.message}" for e in validator.iter_errors(entry)]


def test_catalog_entry_is_valid_and_agrees_with_cmake():
    entry = json.loads((ROOT / "MedDL.json").read_text())
    assert _catalog_errors(entry) == []
    assert "slicer-extension-catalog-entry-schema-v1.0.2.json" in entry["$schema"]
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"] and entry["scm_revision"] and entry["tier"] >= 1
    variables = cmake_lists.set_variables((ROOT / "CMakeLists.txt").read_text())
    assert [entry["category"]] == variables["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == variables["EXTENSION_DEPENDS"]


def test_catalog_validation_detects_bad_entries():
    entry = json.loads((ROOT / "MedDL.json").read_text())
    assert _catalog_errors({k: v for k, v in entry.items() if k != "scm_url"})  # required key missing
    assert _catalog_errors({**entry, "tier": 7})  # out of range
    assert _catalog_errors({**entry, "homepage": "x"})  # no additional properties


def test_vendored_schema_matches_shared_copy():
    if not SHARED_SCHEMA.is_file():
        pytest.skip(f"{SHARED_SCHEMA} not present")
    assert json.loads(SCHEMA.read_text()) == json.loads(SHARED_SCHEMA.read_text())


# ----------------------------------------------------------------------------------------------------------
# Module level
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_module_has_template_files(module):
    d = ROOT / module
    for rel in (
        "CMakeLists.txt",
        f"{module}.py",
        f"Resources/UI/{module}.ui",
        f"Resources/Icons/{module}.png",
        "Testing/CMakeLists.txt",
        "Testing/Python/CMakeLists.txt",
        f"{LIBRARIES[module]}/__init__.py",
        f"{LIBRARIES[module]}/selftests.py",
    ):
        assert (d / rel).is_file(), f"{module}/{rel} is missing"
    assert check_module_cmake(d) == []


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_file(module):
    problems = cmake_lists.differences(ROOT / module)
    assert problems == [], "\n".join(problems + ["fix: python scripts/update_cmake_lists.py"])


def test_module_files_do_not_collide_when_installed():
    # Slicer installs all scripted modules into one folder (qt-scripted-modules): two modules listing the same
    # relative path would overwrite each other's file.
    seen: dict[str, str] = {}
    clashes = []
    for module in MODULES:
        scripts, resources = cmake_lists.listed_files(ROOT / module)
        for rel in scripts + resources:
            if rel in seen and seen[rel] != module:
                clashes.append(f"{rel}: {seen[rel]} and {module}")
            seen[rel] = module
    assert clashes == []


@pytest.mark.parametrize("module", MODULES)
def test_module_script_follows_template(module):
    assert check_module_script(ROOT / module / f"{module}.py", module) == []


@pytest.mark.parametrize("module", MODULES)
def test_ui_matches_script_and_parameter_node(module):
    problems = check_ui_bindings(ROOT / module / f"{module}.py", ROOT / module / "Resources" / "UI" / f"{module}.ui")
    assert problems == []


@pytest.mark.parametrize("module", MODULES)
def test_selftests_module_defines_all(module):
    path = ROOT / module / LIBRARIES[module] / "selftests.py"
    tree = ast.parse(path.read_text())
    targets = [
        t.id
        for n in tree.body
        if isinstance(n, (ast.Assign, ast.AnnAssign))
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Name)
    ]
    assert "ALL" in targets, f"{path} defines no ALL list of self-test bodies"


def test_icons_are_distinct_128px_pngs():
    from PIL import Image

    pixels = {}
    for module in MODULES:
        path = ROOT / module / "Resources" / "Icons" / f"{module}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        with Image.open(path) as image:
            assert image.size == (128, 128), f"{path}: {image.size}"
            rgba = image.convert("RGBA")
            colours = rgba.getcolors(maxcolors=128 * 128)
            assert colours is not None and len(colours) >= 16, f"{path} is (nearly) blank"
            pixels[module] = rgba.tobytes()
    assert len(set(pixels.values())) == len(MODULES), "two modules share an icon"


def _library_files() -> list[Path]:
    files = []
    for module, library in LIBRARIES.items():
        files.extend(sorted((ROOT / module / library).rglob("*.py")))
    return files


def test_libraries_import_no_qt():
    files = _library_files()
    assert any(f.name == "cli.py" for f in files)  # the scan sees MedDLLib
    hits = [hit for f in files for hit in forbidden_imports(f, FORBIDDEN_IN_LIBRARIES)]
    assert hits == []


def test_requirements_txt_matches_pyproject():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (ROOT / "MedDLExtension" / "Resources" / "requirements.txt").read_text().splitlines()
    requirements = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    reqs = {canonicalize_name(r.name): r for r in requirements}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    assert "torch" not in reqs, "torch comes from the PyTorch extension, never from requirements.txt"
    for name, req in reqs.items():
        assert name in deps, f"requirements.txt has {req}, which pyproject.toml does not declare"
        assert req.specifier == deps[name].specifier, f"{req} differs from pyproject.toml's {deps[name]}"
    missing = sorted(set(deps) - set(reqs) - PROVIDED_IN_SLICER)
    assert missing == [], f"pyproject.toml dependencies missing from requirements.txt: {missing}"


# ----------------------------------------------------------------------------------------------------------
# The checks can fail: feed them broken copies
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def module_copy(tmp_path):
    """A writable copy of the ICHDetector module folder (without caches)."""
    dst = tmp_path / "ICHDetector"
    shutil.copytree(ROOT / "ICHDetector", dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_cmake_check_detects_unlisted_and_missing_files(module_copy):
    assert cmake_lists.differences(module_copy) == []
    (module_copy / "ICHDetectorLib" / "extra.py").write_text('"""new file"""\n')
    (module_copy / "Resources" / "Icons" / "ICHDetector.png").unlink()
    problems = cmake_lists.differences(module_copy)
    assert any("ICHDetectorLib/extra.py is not listed" in p for p in problems)
    assert any("Resources/Icons/ICHDetector.png, which does not exist" in p for p in problems)
    assert cmake_lists.main(["--check", "--root", str(module_copy.parent), "ICHDetector"]) == 1
    # the updater fixes both and keeps the template's layout
    assert cmake_lists.main(["--root", str(module_copy.parent), "ICHDetector"]) == 0
    assert cmake_lists.differences(module_copy) == []
    text = (module_copy / "CMakeLists.txt").read_text()
    assert "${MODULE_NAME}Lib/extra.py" in text and "${MODULE_NAME}.py" in text
    assert check_module_cmake(module_copy) == []


def test_ui_check_detects_unknown_widget_and_parameter(module_copy):
    script = module_copy / "ICHDetector.py"
    ui = module_copy / "Resources" / "UI" / "ICHDetector.ui"
    assert check_ui_bindings(script, ui) == []
    hint = '    applyHint = _("Detect hemorrhage on the selected head CT")\n'
    script.write_text(script.read_text().replace(hint, hint + "\n    def modelSelected(self, modelName):\n"
                                                 "        self.ui.runButton.enabled = False\n", 1))
    ui.write_text(ui.read_text().replace("<string>inputVolume</string>", "<string>inputVolumeNode</string>"))
    problems = check_ui_bindings(script, ui)
    assert any("self.ui.runButton" in p for p in problems)
    assert any("'inputVolumeNode', which is not a field" in p for p in problems)


def test_ui_check_detects_widget_that_cannot_show_the_field_type(module_copy):
    script = module_copy / "ICHDetector.py"
    ui = module_copy / "Resources" / "UI" / "ICHDetector.ui"
    script.write_text(
        script.read_text().replace("    inputVolume: vtkMRMLScalarVolumeNode\n", "    inputVolume: float\n")
    )
    problems = check_ui_bindings(script, ui)
    assert any("cannot show field 'inputVolume' of type float" in p for p in problems)


def test_script_check_detects_template_violations(module_copy):
    script = module_copy / "ICHDetector.py"
    good = script.read_text()
    assert check_module_script(script, "ICHDetector") == []
    broken = (
        good.replace("class ICHDetectorLogic(", "class ICHDetectorLogik(")
        .replace('_("ICH Detector"),', '"ICH Detector",')
        .replace("from slicer import", "import torch\nfrom slicer import", 1)
        + "\nslicer.app.processEvents()\n"
    )
    script.write_text(broken)
    problems = check_module_script(script, "ICHDetector")
    assert any("class ICHDetectorLogic is missing" in p for p in problems)
    assert any("title is not wrapped in _()" in p for p in problems)
    assert any("imports torch at file scope" in p for p in problems)
    assert any("side effects at file scope" in p for p in problems)
    script.write_text(
        good.replace("        describeTaskModule(", "        self.parent.hidden = True\n        describeTaskModule(")
    )
    assert any("must not be hidden" in p for p in check_module_script(script, "ICHDetector"))


def test_import_scan_detects_qt_in_a_library(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\n"
        "def f():\n"
        "    import qt\n"
        "    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic\n"
        "    from slicer import parameterNodeWrapper\n"
        "    importlib.import_module('ctk')\n"
        "    import slicer.util\n"
    )
    hits = forbidden_imports(bad, FORBIDDEN_IN_LIBRARIES)
    assert [h.split(" imports ")[1] for h in hits] == [
        "qt",
        "slicer.ScriptedLoadableModule",
        "slicer.parameterNodeWrapper",
        "ctk",
    ]


def test_cmake_parser_handles_quotes_comments_and_parentheses():
    text = (
        'set(A "x (y) # not a comment" z) # comment with ( parenthesis\n'
        "set(B\n  one # first\n  ${A}\n  )\n"
        'if(NOT (X AND Y))\n  message("multi\nline")\nendif()\n'
    )
    assert cmake_lists.parse_commands(text) == [
        ("set", ["A", "x (y) # not a comment", "z"]),
        ("set", ["B", "one", "${A}"]),
        ("if", ["NOT", "(X", "AND", "Y)"]),
        ("message", ["multi\nline"]),
        ("endif", []),
    ]
    assert cmake_lists.set_variables(text)["B"] == ["one", "x (y) # not a comment", "z"]


@pytest.mark.parametrize("module", MODULES)
def test_only_the_module_script_at_module_top_level(module):
    # Slicer installs every module's files into one folder and takes each top-level .py file there for a
    # scripted module: any other top-level script fails to load as a module at every start of Slicer.
    # Helper scripts belong in a sub-folder (a package such as <Module>Lib, or a scripts folder).
    extra = sorted(p.name for p in (ROOT / module).glob("*.py") if p.name != f"{module}.py")
    assert extra == [], f"{module}: move {extra} into a sub-folder; Slicer would try to load them as modules"


def file_scope_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level module)`` of the imports at file scope (relative imports as ``"."``)."""
    found = []
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." if node.level else (node.module or "").split(".")[0]))
    return found


def test_qt_side_helpers_import_nothing_heavy_at_file_scope():
    # MedDLWidgets is imported when a module widget is set up: torch, monai & co. only after the dependency check
    files = sorted((ROOT / "MedDLExtension" / "MedDLWidgets").glob("*.py"))
    assert files, "MedDLWidgets is missing"
    allowed = ALLOWED_FILE_SCOPE_IMPORTS | {"MedDLLib", "."} | set(sys.stdlib_module_names)
    heavy = [
        f"{f.name}:{line} imports {name}" for f in files for line, name in file_scope_imports(f) if name not in allowed
    ]
    assert heavy == []
    # and the MedDLLib modules it imports at file scope are light (no numpy/torch/slicer at their file scope)
    lib = ROOT / "MedDLExtension" / "MedDLLib"
    for name in ("guisupport.py", "errors.py", "options.py"):
        imports = {n for _, n in file_scope_imports(lib / name)}
        assert imports <= set(sys.stdlib_module_names) | {".", "__future__"}, (name, imports)
