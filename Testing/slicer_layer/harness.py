"""Run a MedDL module's ``<Module>.py`` as Slicer runs it: Slicer's own Python layer, real MRML, stand-in widgets.

Run in a fresh interpreter (it installs ``qt``, ``ctk`` and a ``slicer`` package into ``sys.modules``)::

    python harness.py <Slicer Base/Python folder> <widget-headers folder> <repo root> <Module> <work folder> \
        [setup-only]

What is real: ``slicer.util``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``,
``slicer.i18n`` and ``slicer.packaging`` of the given Slicer (loaded from its ``Base/Python/slicer`` folder, its
``__init__`` included), MRML and the module logics from slicer-core, the module file, MedDLWidgets, MedDLLib, the
child ``meddl`` process and the model cache. What stands in: the Qt/CTK/qMRML widget classes
(:mod:`standins`), and ``slicer.app`` (version, temporary folder, event loop, layout manager, startup
environment; the application logic is slicer-core's).

The module is loaded as ``qSlicerScriptedLoadableModule`` loads it (module class with a parent carrying
``path``; widget class with a module panel; ``setup``; ``enter``), then driven like a user: every bound widget
against the parameter node both ways, Apply (the real child process; its outputs must load as new nodes and show),
Cancel, a failing run (must reach ``slicer.util.errorDisplay``), exit/enter, scene close, and a saved scene whose
model is not in the cache (the choice must stay, shown missing, Apply off). Prints one JSON line: the checks done
and what failed; exits 1 when something failed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import standins  # noqa: E402

RUN_TIMEOUT_S = 300.0


# ------------------------------------------------------------------------------------------------ the host
class _Environment:
    def __init__(self, values: dict):
        self._values = values

    def keys(self):
        return list(self._values)

    def value(self, key):
        return self._values.get(key)


class LayoutManager:
    def __init__(self):
        self.layout = None

    def setLayout(self, layout: int) -> None:
        self.layout = layout

    def sliceViewNames(self) -> list:
        return []


class ModuleManager:
    def __init__(self):
        self.modules: dict = {}

    def connect(self, signal, slot) -> None:
        pass

    def disconnect(self, signal, slot) -> None:
        pass

    def module(self, name):
        return self.modules.get(name)


class App:
    """``slicer.app`` (qSlicerApplication) as far as module code and Slicer's Python layer use it."""

    def __init__(self, headless, version: tuple[int, int, str], temporary: Path):
        self.majorVersion, self.minorVersion, self.applicationVersion = version
        self.applicationName = "Slicer"
        self.temporaryPath = str(temporary)
        self._headless = headless
        self._layout = LayoutManager()
        self._modules = ModuleManager()
        self.cursorDepth = 0

    def testingEnabled(self) -> bool:
        return False

    def processEvents(self) -> None:
        for timer in list(standins._QTimer.running):
            timer.fire_if_due()

    def setOverrideCursor(self, cursor) -> None:
        self.cursorDepth += 1

    def restoreOverrideCursor(self) -> None:
        self.cursorDepth -= 1

    def translate(self, context, text):
        return text

    def topLevelWidgets(self) -> list:
        return []

    def startupEnvironment(self):
        return _Environment(dict(os.environ))

    def moduleManager(self):
        return self._modules

    def layoutManager(self):
        return self._layout

    def applicationLogic(self):
        return self._headless.app_logic

    def mrmlScene(self):
        return self._headless.scene


class ModuleParent:
    """``qSlicerScriptedLoadableModule``: the object a module class fills (title, categories, ...)."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.hidden = False


def install_slicer(base_python: Path, headers: Path, version: tuple[int, int, str], temporary: Path):
    """Put ``qt``/``ctk`` stand-ins and a ``slicer`` package (Slicer's Python layer + slicer-core MRML) in place."""
    qt, ctk, classes = standins.make_modules(headers)
    sys.modules["qt"], sys.modules["ctk"] = qt, ctk
    package = base_python / "slicer"
    slicer = types.ModuleType("slicer")
    slicer.__path__ = [str(package)]
    slicer.__file__ = str(package / "__init__.py")
    slicer.__package__ = "slicer"
    sys.modules["slicer"] = slicer
    exec(compile((package / "__init__.py").read_text(), slicer.__file__, "exec"), slicer.__dict__)  # noqa: S102
    import slicer_core  # the kits `import slicer` loads in the application: MRML, logics

    for name in dir(slicer_core):
        if not name.startswith("_"):
            setattr(slicer, name, getattr(slicer_core, name))
    panel = type("qSlicerScriptedLoadableModuleWidget", (classes["qMRMLWidget"],), {})
    # qSlicerAbstractModuleWidget: Q_PROPERTY(bool isEntered READ isEntered)
    panel._facts = {**panel._facts, "class": "qSlicerScriptedLoadableModuleWidget",
                    "properties": {**panel._facts["properties"],
                                   "isEntered": {"type": "bool", "writable": False, "notify": None}}}
    classes["qSlicerScriptedLoadableModuleWidget"] = panel

    def missing(attribute: str):
        if attribute in classes and attribute.startswith(("qMRML", "qSlicer")):
            return classes[attribute]
        if attribute.startswith(("qMRML", "qSlicer")):
            return getattr(qt, attribute)  # a widget class without stand-in: comparable, not constructible
        raise AttributeError(f"module 'slicer' has no attribute {attribute!r}")

    slicer.__getattr__ = missing
    from MedDLLib.headless import create_scene

    headless = create_scene()
    slicer.mrmlScene = headless.scene
    slicer.app = App(headless, version, temporary)
    for name in ("Red", "Yellow", "Green"):  # the application's slice views
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetName(f"SliceComposite{name}")
        composite.SetSingletonTag(name)
        headless.scene.AddNode(composite)
    import slicer.util  # noqa: F401 - Slicer's own
    import slicer.i18n  # noqa: F401

    return slicer, qt, classes


# ------------------------------------------------------------------------------------------------ checks
class Checks:
    def __init__(self):
        self.done: list[str] = []
        self.failed: dict[str, str] = {}

    def run(self, name: str, function, *args):
        try:
            value = function(*args)
            self.done.append(name)
            return value
        except Exception as exc:  # noqa: BLE001 - reported
            self.failed[name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2500:]}"
            return None


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def wait_for_run(slicer, widget, timeout_s: float = RUN_TIMEOUT_S) -> None:
    start = time.monotonic()
    while widget.runner.isRunning():
        if time.monotonic() - start > timeout_s:
            widget.runner.cancel()
            raise AssertionError(f"the run did not end within {timeout_s:.0f} s")
        slicer.app.processEvents()
        time.sleep(0.05)
    slicer.app.processEvents()


def node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def bound_widgets(ui_widget) -> dict:
    return {w.property("SlicerParameterName"): w for w in ui_widget.findChildren()
            if w.property("SlicerParameterName")}


def load_module(slicer, root: Path, name: str):
    """Import ``<Module>.py`` and instantiate module and widget as Slicer does; returns (python module, widget)."""
    path = root / name / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent = ModuleParent(path)
    instance = getattr(module, name)(parent)
    setattr(slicer.modules, name.lower(), parent)
    setattr(slicer.modules, f"{name}Instance", instance)
    slicer.app.moduleManager().modules[name] = parent
    panel_class = slicer.qSlicerScriptedLoadableModuleWidget
    import qt

    panel = panel_class()
    panel.setLayout(qt.QVBoxLayout())
    panel.setMRMLScene(slicer.mrmlScene)
    widget = getattr(module, f"{name}Widget")(panel)
    setattr(slicer.modules, f"{name}Widget", widget)
    return module, widget, panel, parent


def enter(widget, panel) -> None:
    panel._values["isEntered"] = True
    if hasattr(widget, "enter"):  # qSlicerScriptedLoadableModuleWidget calls the Python method only if defined
        widget.enter()


def exit_(widget, panel) -> None:
    if hasattr(widget, "exit"):
        widget.exit()
    panel._values["isEntered"] = False


# ------------------------------------------------------------------------------------------------ task cases
def _ich(scene, work: Path):
    from ICHDetectorLib.model import untrained_package
    from ICHDetectorLib.phantom import head_ct
    from MedDLLib import nodes

    volume, _, _ = head_ct(np.random.default_rng(7), 48, 6, ("subdural",))
    node = nodes.add_scalar_volume(scene, volume, "head CT")
    _as_if_loaded_from_dicom(node, volume, work / "ich_dicom")
    return untrained_package(work / "ich", 48), {"inputVolume": node}


class DicomDatabase:
    """``slicer.dicomDatabase`` as far as MedDL uses it: SOP Instance UID -> file."""

    def __init__(self, files: dict):
        self.files = files

    def fileForInstance(self, uid: str) -> str:
        return self.files.get(uid, "")


def _as_if_loaded_from_dicom(node, volume, folder: Path) -> None:
    """Write ``volume`` as a DICOM series, put it in ``slicer.dicomDatabase`` and mark ``node`` the way Slicer's
    DICOM module marks a loaded series (``DICOM.instanceUIDs``): a widget run then writes a DICOM SEG."""
    import pydicom
    import slicer

    from MedDLLib.dicomwrite import write_series

    files = {}
    for path in write_series(folder, volume.with_array(np.round(volume.array)), rescale_intercept=0.0,
                             file_names="instance"):
        files[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = str(path)
    slicer.dicomDatabase = DicomDatabase(files)
    node.SetAttribute("DICOM.instanceUIDs", " ".join(files))


def _lung(scene, work: Path):
    from LungSurvivalLib.model import untrained_package
    from LungSurvivalLib.phantom import chest_ct
    from MedDLLib import nodes

    volume, _, _ = chest_ct(np.random.default_rng(4), 64, 24, tumour_diameter_mm=40.0)
    return untrained_package(work / "lung"), {"inputVolume": nodes.add_scalar_volume(scene, volume, "chest CT")}


def _glioma(scene, work: Path):
    from GliomaClassifierLib.model import untrained_package
    from GliomaClassifierLib.phantom import brain_mri
    from MedDLLib import nodes

    volumes, _, _ = brain_mri(np.random.default_rng(3), 32, 16, label=1)
    package = untrained_package(work / "glioma", sequences=("T1wCE", "FLAIR"), size=32, depth=16)
    return package, {"t1wceVolume": nodes.add_scalar_volume(scene, volumes["T1wCE"], "case T1wCE"),
                     "flairVolume": nodes.add_scalar_volume(scene, volumes["FLAIR"], "case FLAIR")}


def _lgg(scene, work: Path):
    import torch

    from LGGSegmenterLib.model import network_spec
    from MedDLLib import models, nodes
    from MedDLLib.geometry import Geometry, Volume

    torch.manual_seed(0)
    metadata = {
        "task": "lgg", "version": "0.0.1", "recipe": "seed", "network": network_spec("unet", 1, width=4),
        "input": {"channels": ["FLAIR"], "size": 32, "normalisation": "scale255", "brain_crop": False},
        "output": {"labels": ["tumour"]}, "postprocessing": {"threshold": 0.5, "largest_component": True},
        "training_data": {"kind": "synthetic", "n_studies": 0, "description": "untrained (harness)"},
        "metrics": {},
    }
    package = models.save_package(work / "lgg", models.build_network(metadata), metadata)
    image = np.full((8, 32, 32), 60.0, dtype=np.float32)
    image[3:6, 10:20, 12:22] = 200.0
    volume = Volume(image, Geometry((1.0, 1.0, 2.5), (0.0, 0.0, 0.0), np.eye(3)), {})
    return package, {"inputVolume": nodes.add_scalar_volume(scene, volume, "FLAIR")}


CASES = {"ICHDetector": _ich, "LungSurvival": _lung, "GliomaClassifier": _glioma, "LGGSegmenter": _lgg}


# ------------------------------------------------------------------------------------------------ scenario
def check_round_trips(slicer, widget, ui_widget) -> list[str]:
    """Every bound widget -> parameter node and parameter node -> widget; returns the fields checked."""
    p = widget._parameterNode
    scene = slicer.mrmlScene
    checked = []
    for field, w in bound_widgets(ui_widget).items():
        before = getattr(p, field)
        kind = w.className()
        if kind == "QCheckBox":
            w.checked = not w.checked
            assert getattr(p, field) == w.checked, (field, "widget -> node")
            setattr(p, field, not getattr(p, field))
            assert w.checked == getattr(p, field), (field, "node -> widget")
        elif kind == "ctkSliderWidget":
            target = round(w.minimum + 0.37 * (w.maximum - w.minimum), int(w.decimals))
            w.value = target
            assert abs(getattr(p, field) - target) < 1e-9, (field, getattr(p, field), target)
            setattr(p, field, w.minimum)
            assert w.value == w.minimum, (field, w.value)
        elif kind == "QComboBox":
            assert w.count >= 2, (field, "choices", w.count)
            w.currentIndex = w.count - 1
            assert getattr(p, field) == w.itemText(w.count - 1), (field, getattr(p, field))
            setattr(p, field, w.itemText(0))
            assert w.currentIndex == 0, (field, w.currentIndex)
        elif kind == "qMRMLNodeComboBox":
            node_class = list(w.nodeTypes)[0]
            a = scene.AddNewNodeByClass(node_class, f"{field} A")
            b = scene.AddNewNodeByClass(node_class, f"{field} B")
            w.setCurrentNode(a)
            assert getattr(p, field) is not None and getattr(p, field).GetID() == a.GetID(), (field, "widget -> node")
            setattr(p, field, b)
            assert w.currentNode() is not None and w.currentNode().GetID() == b.GetID(), (field, "node -> widget")
            scene.RemoveNode(b)
            assert w.currentNode() is None and getattr(p, field) is None, (field, "removed node")
            scene.RemoveNode(a)
        else:
            raise AssertionError(f"{field}: no round trip for a {kind}")
        setattr(p, field, before)
        checked.append(field)
    return checked


def select_model(widget, name: str) -> None:
    combo = widget.ui.modelComboBox
    index = combo.findData(name)
    assert index >= 0, [combo.itemData(i) for i in range(combo.count)]
    combo.currentIndex = index
    assert widget._parameterNode.modelName == name, widget._parameterNode.modelName


def run_apply(slicer, widget, expect_success: bool = True):
    ui = widget.ui
    assert ui.applyButton.enabled, ui.applyButton.toolTip
    apply_text = ui.applyButton.text
    ui.applyButton.click()
    assert widget.runner.isRunning() or widget.runner.lastOutcome is not None, "Apply started nothing"
    wait_for_run(slicer, widget)
    assert ui.applyButton.text == apply_text, ui.applyButton.text
    outcome = widget.runner.lastOutcome
    if expect_success:
        assert outcome is not None and outcome.succeeded, (outcome, ui.logView.toPlainText()[-3000:])
    return outcome


def scenario(slicer, root: Path, name: str, work: Path, checks: Checks, errors: list,
             setup_only: bool = False) -> None:
    from MedDLLib import models

    scene = slicer.mrmlScene
    case = CASES.get(name)
    package = inputs = None
    if case is not None and not setup_only:
        package, inputs = checks.run("phantom study and model", case, scene, work)
        if package is not None:
            models.import_model(package, name=f"{name.lower()}-harness")
    module, widget, panel, parent = checks.run("module and widget load", load_module, slicer, root, name)
    assert parent.title and parent.categories == ["MedDL"] and parent.dependencies is not None
    checks.run("setup", widget.setup)
    ui_widget = next((c for c in panel.findChildren() if c.objectName == name), None)
    if ui_widget is None:  # an older Slicer: the panel holds the one line saying which Slicer MedDL needs
        checks.done.append("unsupported: " + " | ".join(c.text for c in panel.findChildren() if c.className() ==
                                                         "QLabel"))
        return
    checks.run("enter", enter, widget, panel)
    if setup_only:
        return
    if case is None:  # the hidden library module: its panel only
        checks.run("exit", exit_, widget, panel)
        checks.run("scene close", scene.Clear, 0)
        checks.run("enter after close", enter, widget, panel)
        return

    model_name = f"{name.lower()}-harness"

    def apply_state_follows_inputs():
        assert not widget.ui.applyButton.enabled or all(getattr(widget._parameterNode, f) for f in inputs)
        select_model(widget, model_name)
        for field, node in inputs.items():
            setattr(widget._parameterNode, field, node)
        assert widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip

    checks.run("round trips", lambda: checks.done.append("fields " + ",".join(check_round_trips(slicer, widget,
                                                                                                  ui_widget))))
    checks.run("Apply enables on inputs and model", apply_state_follows_inputs)

    def apply_loads_outputs():
        before = node_ids(scene)
        inputs_before = {f: np.array(slicer.util.arrayFromVolume(n), copy=True) for f, n in inputs.items()}
        run_apply(slicer, widget)
        added = node_ids(scene) - before
        assert len(added) >= 2, f"outputs loaded as {len(added)} new nodes"
        assert widget.ui.summaryLabel.text, "no summary shown"
        for field, node in inputs.items():
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), inputs_before[field])
        assert not errors, errors
        assert widget.ui.progressBar.value == widget.ui.progressBar.maximum
        log = widget.ui.logView.toPlainText()
        assert "Runs on cpu" in log, log[:2000]
        assert "cpu" in widget.ui.statusLabel.text.lower() or "Done" in widget.ui.statusLabel.text
        composite = scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        foreground = composite.GetForegroundVolumeID()
        if foreground:
            assert foreground in added, "the heatmap is not shown"
        if any(n.GetAttribute("DICOM.instanceUIDs") for n in inputs.values()):  # loaded "from DICOM"
            seg = {scene.GetNodeByID(i).GetAttribute("MedDL.dicom_seg") for i in added} - {None}
            assert seg == {"suspected.seg.dcm"}, f"--dicom-source not passed: DICOM SEG {seg}"
        checks.done.append(f"outputs: {sorted(scene.GetNodeByID(i).GetName() for i in added)}")

    checks.run("Apply runs the child and loads its outputs", apply_loads_outputs)

    def cancel():
        before = node_ids(scene)
        widget.ui.applyButton.click()
        assert widget.runner.isRunning() and widget.ui.applyButton.text == "Cancel"
        widget.ui.applyButton.click()
        wait_for_run(slicer, widget)
        outcome = widget.runner.lastOutcome
        assert outcome.status == "cancelled", outcome
        assert node_ids(scene) == before and not errors, errors
        assert widget.ui.applyButton.enabled

    checks.run("Cancel", cancel)

    def failing_run():
        broken = widget.models.importModel(str(Path(package) / "configs" / "metadata.json"))
        assert broken, "import returned nothing"
        weights = models.cache_dir() / broken / "models" / "model.pt"
        weights.write_bytes(weights.read_bytes() + b"tampered")
        select_model(widget, broken)
        before = node_ids(scene)
        outcome = run_apply(slicer, widget, expect_success=False)
        assert outcome.status == "failed", outcome
        assert len(errors) == 1 and "failed" in errors[0].lower(), errors
        assert node_ids(scene) == before
        errors.clear()
        select_model(widget, model_name)

    checks.run("a failing run reaches errorDisplay", failing_run)

    def exit_enter():
        exit_(widget, panel)
        field, w = next(iter(bound_widgets(ui_widget).items()))
        node = widget.logic.getParameterNode()
        shown = w.checked if w.className() == "QCheckBox" else None
        if shown is not None:
            setattr(node, field, not shown)
            assert w.checked == shown, "the widget followed the node while the module was exited"
        enter(widget, panel)
        if shown is not None:
            assert w.checked == (not shown), "enter did not show the node"
            setattr(node, field, shown)
        assert widget.ui.applyButton.enabled

    checks.run("exit and enter", exit_enter)

    def close_and_reopen():
        p = widget._parameterNode
        saved = work / "saved.mrml"
        p.modelName = "a-model-not-in-this-cache"
        scene.SetURL(str(saved))
        scene.SetRootDirectory(str(work))
        assert scene.Commit(str(saved))
        p.modelName = model_name
        scene.Clear(0)
        assert widget._parameterNode is not None and widget._parameterNode is not p
        assert not widget.ui.applyButton.enabled
        for field in inputs:
            assert getattr(widget._parameterNode, field) is None
        scene.SetURL(str(saved))
        scene.Import()
        combo = widget.ui.modelComboBox
        assert widget._parameterNode.modelName == "a-model-not-in-this-cache", widget._parameterNode.modelName
        assert "missing" in combo.currentText, combo.currentText
        assert not widget.ui.applyButton.enabled
        exit_(widget, panel)
        enter(widget, panel)
        assert widget._parameterNode.modelName == "a-model-not-in-this-cache"
        assert "missing" in combo.currentText and not widget.ui.applyButton.enabled

    checks.run("scene close and reopen with a missing model", close_and_reopen)
    checks.run("cleanup", widget.cleanup)

    def module_test():
        test = getattr(module, f"{name}Test")()
        test.setUp()
        test.test_ParameterNode()

    checks.run("the module's test_ParameterNode", module_test)


def main(argv: list[str]) -> int:
    base_python, headers, root, name, work = (Path(argv[0]), Path(argv[1]), Path(argv[2]), argv[3],
                                              Path(argv[4]))
    sys.path[:0] = [str(root / "MedDLExtension")] + [str(p) for p in sorted(root.iterdir())
                                                     if (p / f"{p.name}.py").is_file()]
    os.environ["MEDDL_HOME"] = str(work / "meddl_home")  # the model cache of this run only
    version = base_python.parent.parent.name.lstrip("v").split(".")
    slicer, qt, classes = install_slicer(base_python, headers, (int(version[0]), int(version[1]),
                                                               ".".join(version)), work / "tmp")
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    real_error_display = slicer.util.errorDisplay

    def error_display(text, *args, **kwargs):
        errors.append(str(text))
        return real_error_display(text, *args, **kwargs)

    slicer.util.errorDisplay = error_display
    recorder = Recorder()
    logging.getLogger().addHandler(recorder)
    checks = Checks()
    try:
        scenario(slicer, root, name, work, checks, errors, setup_only="setup-only" in argv[5:])
    except Exception as exc:  # noqa: BLE001 - reported
        checks.failed["scenario"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2500:]}"
    print(json.dumps({"module": name, "done": checks.done, "failed": checks.failed,
                      "warnings": recorder.lines[-20:], "opaque_qt": sorted(qt.opaque_used)}))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
