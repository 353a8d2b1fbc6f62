"""The Glioma Classifier widget without Qt: its run path end to end on slicer-core, its command line, its .ui.

Sequence nodes -> ``GliomaClassifierLib.widgetlogic.input_nodes`` (the ones the model needs, model order) ->
:func:`MedDLLib.results.prepare_input` (``<sequence>.nrrd``) -> ``meddl infer glioma`` in a child process started
as the widget's BackgroundRunner starts it (:mod:`MedDLLib.guisupport`) -> ``widgetlogic.load_results`` into a
headless scene. The model is an untrained two-sequence package (seeded weights: the contract does not depend on
the weights); the reference sequence T1wCE is stored sagittal, so the outputs must come back on a grid that is
not the network's.
"""

from __future__ import annotations

import ast
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from MedDLLib import nodes, results
from MedDLLib.commands_tasks import TASK_COMMANDS, task_parser
from MedDLLib.errors import InputError, MedDLError

from widget_run import assert_progress_reported, assert_unchanged, ijk_to_ras, run_meddl, snapshot

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "GliomaClassifier"
MODEL_SEQUENCES = ("T1wCE", "FLAIR")


def _study():
    """Phantom study: T1wCE stored sagittal (the reference), FLAIR and T2w axial; ``{sequence: Volume}``."""
    from GliomaClassifierLib.phantom import brain_mri
    from MedDLLib.phantoms import as_plane

    volumes, _, _ = brain_mri(np.random.default_rng(3), 32, 16, label=1)
    return {"T1wCE": as_plane(volumes["T1wCE"], "sagittal"), "FLAIR": volumes["FLAIR"], "T2w": volumes["T2w"]}


def _added_since(scene, ids: set) -> list[str]:
    """Names of the nodes added to ``scene`` since ``ids``, but the shared heatmap colour table (made once per
    scene, reused by every heatmap)."""
    added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return [n.GetName() for n in added if n.GetID() not in ids and n.GetName() != nodes.HEATMAP_COLOR_TABLE]


def _ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _add(scene, volumes) -> dict:
    return {name: nodes.add_scalar_volume(scene, volume, f"case {name}") for name, volume in volumes.items()}


@pytest.fixture(scope="module")
def glioma_run(tmp_path_factory):
    """One widget-style ``meddl infer glioma`` run (T1wCE + FLAIR model; T2w also selected, not needed);
    (output folder, volumes, messages, input folder)."""
    import GliomaClassifierLib
    import MedDLLib
    from GliomaClassifierLib import widgetlogic
    from GliomaClassifierLib.model import untrained_package
    from MedDLLib.headless import create_scene

    root = tmp_path_factory.mktemp("glioma_run")
    package = untrained_package(root / "model", sequences=MODEL_SEQUENCES, size=32, depth=16)
    volumes = _study()
    hs = create_scene()
    try:
        selected = {"FLAIR": None, "T1w": None, **_add(hs.scene, volumes)}
        before = {k: snapshot(n) for k, n in selected.items() if n is not None}
        chosen = widgetlogic.input_nodes(widgetlogic.model_sequences(package), selected)
        assert [s for s, _ in chosen] == list(MODEL_SEQUENCES)
        run = results.new_run_folder("glioma", root / "runs")
        results.prepare_input([n for _, n in chosen], run / "input", names=[s for s, _ in chosen])
        for key, state in before.items():
            assert_unchanged(selected[key], state)
    finally:
        hs.scene.Clear(1)
    arguments = widgetlogic.infer_arguments(run / "input", str(package), run / "output", force_cpu=True)
    messages = run_meddl(arguments, widgetlogic.TASK_ENTRY, MedDLLib, GliomaClassifierLib)
    return run / "output", volumes, messages, run / "input"


def test_only_the_needed_sequences_are_written(glioma_run):
    _, _, _, input_folder = glioma_run
    assert sorted(p.name for p in input_folder.iterdir()) == ["FLAIR.nrrd", "T1wCE.nrrd"]


def test_child_run_reports_progress(glioma_run):
    _, _, messages, _ = glioma_run
    assert_progress_reported(messages)
    assert messages[[m.kind for m in messages].index("progress")].progress == 0.0  # starts at 0


def test_glioma_outputs_load_as_new_nodes_on_the_reference_grid(glioma_run, headless_scene):
    from GliomaClassifierLib import widgetlogic

    output, volumes, _, _ = glioma_run
    added = _add(headless_scene, volumes)
    reference = added["T1wCE"]
    before = {k: snapshot(n) for k, n in added.items()}
    loaded = widgetlogic.load_results(output, reference)

    assert set(loaded.nodes) == {"heatmap", "table", "window"}
    heat, table, roi = (loaded.nodes[k] for k in ("heatmap", "table", "window"))
    np.testing.assert_allclose(ijk_to_ras(heat), ijk_to_ras(reference), atol=1e-6)
    assert not np.allclose(ijk_to_ras(heat)[:3, :3], np.diag(np.diag(ijk_to_ras(heat)[:3, :3])))  # sagittal
    assert heat.GetStorageNode() is None and heat.GetName() == "case T1wCE Grad-CAM MGMT"
    heat_array = nodes.volume_from_node(heat).array
    assert heat_array.shape == volumes["T1wCE"].array.shape
    assert 0.0 <= heat_array.min() and heat_array.max() <= 1.0 and heat_array.max() > 0
    assert heat.GetDisplayNode().GetColorNode().GetName() == nodes.HEATMAP_COLOR_TABLE

    result = json.loads((output / "result.json").read_text())
    assert loaded.result == result
    assert result["sequences"] == list(MODEL_SEQUENCES) and 0.0 <= result["probability"] <= 1.0
    rows = dict(zip(*nodes.table_columns(table).values()))
    assert float(rows["probability"]) == pytest.approx(result["probability"], abs=1e-6)
    assert rows["call"] == ("methylated" if result["methylated"] else "unmethylated")
    assert int(rows["window first slice"]) == result["window_first_slice"]
    assert int(rows["window last slice"]) - int(rows["window first slice"]) + 1 == 16
    assert "near chance" in rows["model card"] or "close to chance" in rows["model card"]

    assert roi.GetClassName() == "vtkMRMLMarkupsROINode"
    centre, size = np.asarray(result["window_centre_ras_mm"]), np.asarray(result["window_size_mm"])
    np.testing.assert_allclose(roi.GetCenter(), centre, atol=1e-3)
    np.testing.assert_allclose(roi.GetSize(), size, atol=1e-3)
    for axis, getter in zip(result["window_axes_ras"], (roi.GetXAxis, roi.GetYAxis, roi.GetZAxis)):
        shown = [0.0, 0.0, 0.0]
        getter(shown)
        np.testing.assert_allclose(shown, axis, atol=1e-6)
    assert size[2] == pytest.approx(16 * volumes["FLAIR"].geometry.spacing_mm[2], abs=1e-3)
    # along S the box spans slices first..last of the axial stack (voxel edges; slices outside are zero padding)
    axial = volumes["FLAIR"].geometry  # the axial grid the sagittal T1wCE was resampled from
    assert axial.direction_lps == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    np.testing.assert_allclose(np.abs(result["window_axes_ras"]), np.eye(3), atol=1e-9)
    s0, ds = axial.origin_lps_mm[2], axial.spacing_mm[2]
    assert centre[2] - size[2] / 2 == pytest.approx(s0 + (result["window_first_slice"] - 0.5) * ds, abs=1e-3)
    assert centre[2] + size[2] / 2 == pytest.approx(s0 + (result["window_last_slice"] + 0.5) * ds, abs=1e-3)
    for new in (heat, table, roi):
        assert float(new.GetAttribute("MedDL.probability")) == pytest.approx(result["probability"], abs=1e-6)
        assert new.GetAttribute("MedDL.model_card") == result["model_card"]
        assert new.GetAttribute("MedDL.input") == reference.GetID()
    assert f"{result['probability']:.2f}" in loaded.summary and "Research use only" in loaded.summary
    assert "close to chance on external data" in loaded.summary
    for key, state in before.items():
        assert_unchanged(added[key], state)


def test_load_refuses_an_incomplete_or_foreign_run(glioma_run, headless_scene, tmp_path):
    from GliomaClassifierLib import widgetlogic

    output, volumes, _, _ = glioma_run
    reference = _add(headless_scene, volumes)["T1wCE"]
    ids = _ids(headless_scene)
    partial = tmp_path / "partial"
    shutil.copytree(output, partial)
    (partial / "heatmap.nrrd").unlink()
    with pytest.raises(MedDLError, match="heatmap.nrrd"):
        widgetlogic.load_results(partial, reference)
    assert _added_since(headless_scene, ids) == []
    foreign = tmp_path / "foreign"
    shutil.copytree(output, foreign)
    result = json.loads((foreign / "result.json").read_text())
    del result["window_axes_ras"]
    (foreign / "result.json").write_text(json.dumps(result))
    with pytest.raises(MedDLError, match="window_axes_ras"):
        widgetlogic.load_results(foreign, reference)
    assert _added_since(headless_scene, ids) == []  # the heatmap loaded first was removed again
    flair = nodes.add_scalar_volume(headless_scene, volumes["FLAIR"], "case FLAIR")
    ids = _ids(headless_scene)
    with pytest.raises(MedDLError, match="not on the voxel grid|voxels"):
        widgetlogic.load_results(output, flair)  # the heatmap lies on T1wCE's grid, not FLAIR's
    assert _added_since(headless_scene, ids) == []


def test_input_nodes_follow_the_model():
    from GliomaClassifierLib.widgetlogic import input_nodes

    a, b = object(), object()
    assert input_nodes(["T1wCE", "FLAIR"], {"FLAIR": b, "T1wCE": a, "T2w": None}) == [("T1wCE", a), ("FLAIR", b)]
    with pytest.raises(InputError, match="select a volume for FLAIR, T2w"):
        input_nodes(["T1wCE", "FLAIR", "T2w"], {"T1wCE": a, "FLAIR": None})
    with pytest.raises(InputError, match="unknown sequence"):
        input_nodes(["T1wCE"], {"T1wCE": a, "DWI": b})


def test_model_sequences_read_the_metadata_and_refuse_another_task(tmp_path):
    from GliomaClassifierLib.model import untrained_package
    from GliomaClassifierLib.widgetlogic import model_caveat, model_sequences
    from MedDLLib import models

    package = untrained_package(tmp_path / "m", sequences=("FLAIR", "T2w", "T1wCE"), size=32, depth=16)
    assert model_sequences(package) == ["FLAIR", "T2w", "T1wCE"]
    card = model_caveat(package)
    assert "FLAIR, T2w, T1wCE" in card and "synthetic" in card and "close to chance on external data" in card
    assert "close to chance on external data" in model_caveat(None)
    metadata = json.loads((package / models.METADATA_FILE).read_text())
    metadata["task"] = "lgg"
    other = tmp_path / "other"
    shutil.copytree(package, other)
    (other / models.METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(InputError, match="for task 'lgg', not 'glioma'"):
        model_sequences(other)


def test_arguments_parse_with_the_task_parser(tmp_path):
    from GliomaClassifierLib.cli import TASK
    from GliomaClassifierLib.widgetlogic import infer_arguments

    infer = next(c for c in TASK_COMMANDS if c.name == "infer")
    arguments = infer_arguments(tmp_path / "input", "glioma-model", tmp_path / "out", threshold=0.3, force_cpu=True)
    assert arguments[:2] == ["infer", "glioma"]
    args = task_parser(infer, TASK).parse_args(arguments[2:])
    assert (args.input, args.model, args.output, args.threshold, args.force_cpu) == (
        tmp_path / "input", "glioma-model", tmp_path / "out", 0.3, True)
    default = task_parser(infer, TASK).parse_args(infer_arguments("in", "m", "out")[2:])
    assert default.force_cpu is False and default.threshold == 0.5 and default.voi_dicom is None
    voi = infer_arguments("in", "m", "out", voi_dicom={"T1wCE": tmp_path / "a.dcm", "FLAIR": "b.dcm"})
    assert task_parser(infer, TASK).parse_args(voi[2:]).voi_dicom == [f"T1wCE={tmp_path / 'a.dcm'}", "FLAIR=b.dcm"]
    with pytest.raises(InputError, match="no glioma model selected"):
        infer_arguments("in", "", "out")
    with pytest.raises(InputError, match="--threshold: 1.0 is outside"):
        infer_arguments("in", "m", "out", threshold=1.0)


def test_summary_text():
    from GliomaClassifierLib.widgetlogic import summary_text

    card = "Trained on synthetic data. Research use only. Close to chance on external data."
    text = summary_text({"probability": 0.6213, "threshold": 0.5, "sequences": ["T1wCE", "FLAIR"],
                         "model_card": card, "warnings": ["VOI LUT not applied"]})
    assert text == ("Probability of MGMT promoter methylation 0.62 (methylated at threshold 0.5) from T1wCE, FLAIR."
                    f"\n\n{card}\n\nWarnings: VOI LUT not applied")
    assert "(unmethylated at threshold 0.7)" in summary_text({"probability": 0.6213, "threshold": 0.7,
                                                               "sequences": ["T1wCE"], "model_card": card})
    with pytest.raises(MedDLError, match="not the output of 'meddl infer glioma'"):
        summary_text({"risk_score": 0.3, "caveat": "lung"})
    with pytest.raises(MedDLError, match="invalid glioma result"):
        summary_text({"probability": 1.5, "threshold": 0.5, "sequences": ["T1wCE"], "model_card": card})


def _parameter_class():
    module = ast.parse((MODULE / "GliomaClassifier.py").read_text())
    cls = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "GliomaClassifierParameterNode")
    return module, cls


def test_ui_binds_every_parameter_and_names_the_widgets_the_module_uses():
    from GliomaClassifierLib.dataset import SEQUENCES

    tree = ET.parse(MODULE / "Resources" / "UI" / "GliomaClassifier.ui")
    widgets = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    bound = {p.findtext("string") for p in tree.iter("property") if p.get("name") == "SlicerParameterName"}
    module, cls = _parameter_class()
    assert [ast.unparse(d) for d in cls.decorator_list] == ["parameterNodeWrapper", "withOptions(options.INFER)"]
    from GliomaClassifierLib import options
    from MedDLLib.options import widget_options

    fields = {s.target.id for s in cls.body if isinstance(s, ast.AnnAssign)}
    fields |= {o.field for o in widget_options(options.INFER)}
    sequence_fields = next(ast.literal_eval(n.value) for n in module.body if isinstance(n, ast.Assign)
                           and n.targets[0].id == "SEQUENCE_PARAMETERS")
    assert tuple(sequence_fields) == SEQUENCES
    assert fields == set(sequence_fields.values()) | {"modelName", "threshold", "tumourModel", "forceCpu"}
    # the model is owned by the ModelSelector, the tumour model by the BundleSelector named in helperModel
    assert bound == fields - {"modelName", "tumourModel"}
    helper = next(n for n in ast.walk(module) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "")
                  == "helperModel")
    assert [ast.unparse(e) for e in helper.value.elts[:3]] == ["'tumourModel'", "'tumourModelComboBox'",
                                                                "options.TUMOUR_MODEL_OUTPUTS"]
    assert widgets["tumourModelComboBox"] == "QComboBox"
    used = {n.attr for n in ast.walk(module) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"}
    assert used <= set(widgets), used - set(widgets)
    for field in sequence_fields.values():
        selector = field.replace("Volume", "Selector")
        assert widgets[selector] == "qMRMLNodeComboBox", selector
    receivers = {c.findtext("receiver") for c in tree.iter("connection")}
    assert receivers == {f.replace("Volume", "Selector") for f in sequence_fields.values()}
    assert widgets["forceCpuCheckBox"] == "QCheckBox" and widgets["thresholdSliderWidget"] == "ctkSliderWidget"
    for name in ("modelComboBox", "modelCardView", "modelCaveatLabel", "importModelButton", "openModelCacheButton",
                 "applyButton", "progressBar", "logView", "statusLabel", "summaryLabel"):
        assert name in widgets, name
    calls = {n.func.attr for n in ast.walk(module) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") in
             ("infer_arguments", "prepare_input", "input_nodes", "model_sequences", "model_caveat",
              "dicom_source_files")}
    assert calls == {"infer_arguments", "prepare_input", "input_nodes", "model_sequences",
                     "model_caveat", "dicom_source_files"}  # the VOI of DICOM-loaded nodes reaches the child
    assert "class GliomaClassifierLogic(TaskLogic)" in ast.unparse(module)  # TaskLogic loads the results
    test_class = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "GliomaClassifierTest")
    assert [ast.unparse(b) for b in test_class.bases] == ["TaskModuleTest"]  # runs <Module>Lib.selftests.ALL


def test_parameter_defaults_agree_with_the_logic():
    """The option declares the threshold once; the logic accepts its range, the .ui does not restate it (the
    parameter node sets the slider's range and value from the option when the GUI connects)."""
    from GliomaClassifierLib import options
    from GliomaClassifierLib.logic import GliomaOptions

    assert options.THRESHOLD.default == GliomaOptions().threshold
    GliomaOptions(threshold=options.THRESHOLD.range[0]), GliomaOptions(threshold=options.THRESHOLD.range[1])
    tree = ET.parse(MODULE / "Resources" / "UI" / "GliomaClassifier.ui")
    slider = next(w for w in tree.iter("widget") if w.get("name") == "thresholdSliderWidget")
    assert not {p.get("name") for p in slider.iter("property")} & {"value", "minimum", "maximum"}
