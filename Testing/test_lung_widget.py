"""The Lung Survival widget without Qt: its run path end to end on slicer-core, its command line, its .ui.

Input node -> :func:`MedDLLib.results.prepare_input` -> ``meddl infer lung`` in a child process started as the
widget's BackgroundRunner starts it (:mod:`MedDLLib.guisupport`) -> ``LungSurvivalLib.widgetlogic.load_results``
into a headless scene. The model is the self-test package (seeded random weights: the contract does not depend
on the weights).
"""

from __future__ import annotations

import ast
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from MedDLLib import nodes, results
from MedDLLib.commands_tasks import TASK_COMMANDS, task_parser
from MedDLLib.errors import MedDLError

from widget_run import assert_progress_reported, assert_unchanged, ijk_to_ras, run_meddl, snapshot

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "LungSurvival"


@pytest.fixture(scope="module")
def lung_run(tmp_path_factory):
    """One widget-style ``meddl infer lung`` run on a 64 x 64 x 24 phantom chest CT; (output, volume, messages)."""
    import LungSurvivalLib
    import MedDLLib
    from LungSurvivalLib import widgetlogic
    from LungSurvivalLib.phantom import chest_ct
    from LungSurvivalLib.model import untrained_package
    from MedDLLib.headless import create_scene

    root = tmp_path_factory.mktemp("lung_run")
    package = untrained_package(root)
    volume, _, _ = chest_ct(np.random.default_rng(4), 64, 24, tumour_diameter_mm=40.0)
    hs = create_scene()
    try:
        node = nodes.add_scalar_volume(hs.scene, volume, "chest CT", window=(-600.0, 1500.0))
        before = snapshot(node)
        run = results.new_run_folder("lung", root / "runs")
        (input_file,) = results.prepare_input([node], run / "input", names=["chest_ct"])
        assert_unchanged(node, before)
    finally:
        hs.scene.Clear(1)
    arguments = widgetlogic.infer_arguments(input_file, str(package), run / "output", force_cpu=True)
    messages = run_meddl(arguments, widgetlogic.TASK_ENTRY, MedDLLib, LungSurvivalLib)
    return run / "output", volume, messages


def test_child_run_reports_progress(lung_run):
    _, _, messages = lung_run
    assert_progress_reported(messages)
    assert messages[[m.kind for m in messages].index("progress")].progress == 0.0  # starts at 0


def test_lung_outputs_load_as_new_nodes_on_the_input_grid(lung_run, headless_scene):
    from LungSurvivalLib import widgetlogic
    from LungSurvivalLib.preprocess import LEFT_LUNG, RIGHT_LUNG

    output, volume, _ = lung_run
    node = nodes.add_scalar_volume(headless_scene, volume, "chest CT")
    before = snapshot(node)
    loaded = widgetlogic.load_results(output, node)

    assert set(loaded.nodes) == {"segmentation", "labelmap", "heatmap", "table"}
    seg, lab, heat, table = (loaded.nodes[k] for k in ("segmentation", "labelmap", "heatmap", "table"))
    assert seg.GetClassName() == "vtkMRMLSegmentationNode" and seg.GetName() == "chest CT lungs"
    reference = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
    assert reference is not None and reference.GetID() == node.GetID()
    labels = nodes.volume_from_node(lab).array
    for value, name in ((RIGHT_LUNG, "Right lung"), (LEFT_LUNG, "Left lung")):
        np.testing.assert_array_equal(nodes.segment_array(seg, name, node) > 0, labels == value)
    for new in (lab, heat):
        np.testing.assert_allclose(ijk_to_ras(new), ijk_to_ras(node), atol=1e-6)
        assert new.GetStorageNode() is None
    heat_array = nodes.volume_from_node(heat).array
    assert heat_array.shape == volume.array.shape and 0.0 <= heat_array.min() and heat_array.max() <= 1.0
    assert heat.GetDisplayNode().GetColorNode().GetName() == nodes.HEATMAP_COLOR_TABLE

    result = json.loads((output / "result.json").read_text())
    assert loaded.result == result
    columns = nodes.table_columns(table)
    assert columns["lung"] == ["Right lung", "Left lung", "Both lungs"]
    voxel_ml = volume.geometry.voxel_volume_ml()
    assert [float(v) for v in columns["volume_ml"]] == pytest.approx(
        [result["right_lung_ml"], result["left_lung_ml"], result["total_lung_ml"]], abs=1e-2)
    assert float(columns["volume_ml"][0]) == pytest.approx((labels == RIGHT_LUNG).sum() * voxel_ml, abs=1e-2)
    for new in (seg, lab, heat, table):
        assert new.GetAttribute("MedDL.risk_group") == result["risk_group"]
        assert float(new.GetAttribute("MedDL.risk_score")) == pytest.approx(result["risk_score"])
        assert new.GetAttribute("MedDL.input") == node.GetID()
    assert f"{result['risk_group']} risk relative to the training cohort" in loaded.summary
    assert "Research use only" in loaded.summary
    assert_unchanged(node, before)


def test_load_refuses_an_incomplete_run(lung_run, headless_scene, tmp_path):
    import shutil

    from LungSurvivalLib import widgetlogic

    output, volume, _ = lung_run
    partial = tmp_path / "partial"
    shutil.copytree(output, partial)
    (partial / "heatmap.nrrd").unlink()
    node = nodes.add_scalar_volume(headless_scene, volume, "chest CT")
    count = headless_scene.GetNumberOfNodes()
    with pytest.raises(MedDLError, match="heatmap.nrrd"):
        widgetlogic.load_results(partial, node)
    assert headless_scene.GetNumberOfNodes() == count


def test_arguments_parse_with_the_task_parser(tmp_path):
    from LungSurvivalLib.cli import TASK
    from LungSurvivalLib.widgetlogic import infer_arguments

    infer = next(c for c in TASK_COMMANDS if c.name == "infer")
    arguments = infer_arguments(tmp_path / "ct.nrrd", "lung-model", tmp_path / "out", force_cpu=True)
    assert arguments[:2] == ["infer", "lung"]
    args = task_parser(infer, TASK).parse_args(arguments[2:])
    assert (args.input, args.model, args.output, args.force_cpu) == (tmp_path / "ct.nrrd", "lung-model",
                                                                     tmp_path / "out", True)
    assert task_parser(infer, TASK).parse_args(infer_arguments("ct.nrrd", "m", "out")[2:]).force_cpu is False
    with pytest.raises(MedDLError, match="no lung model selected"):
        infer_arguments("ct.nrrd", "", "out")


def test_summary_text():
    from LungSurvivalLib.widgetlogic import summary_text

    text = summary_text({"right_lung_ml": 1510.4, "left_lung_ml": 1320.0, "risk_score": 0.4213,
                         "risk_group": "high", "caveat": "Research use only, not a medical device."})
    assert text == ("Right lung 1510 mL, left lung 1320 mL (total 2830 mL). Risk score 0.421: high risk relative "
                    "to the training cohort. Research use only, not a medical device.")
    lobes = summary_text({"right_lung_ml": 1510.4, "left_lung_ml": 1320.0, "risk_score": 0.4213,
                          "risk_group": "high", "caveat": "x",
                          "lobe_volumes_ml": {"Right upper lobe": 600.2, "Left lower lobe": 700.0}})
    assert "(total 2830 mL). Lobes: right upper lobe 600 mL, left lower lobe 700 mL. Risk score" in lobes
    with pytest.raises(MedDLError, match="not the output of 'meddl infer lung'"):
        summary_text({"any_probability": 0.3, "summary": "ICH"})
    with pytest.raises(MedDLError, match="invalid lung result"):
        summary_text({"right_lung_ml": 1, "left_lung_ml": 1, "risk_score": 0.1, "risk_group": "medium",
                       "caveat": "x"})


def test_ui_binds_every_parameter_and_names_the_widgets_the_module_uses():
    tree = ET.parse(MODULE / "Resources" / "UI" / "LungSurvival.ui")
    widgets = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    bound = {p.findtext("string") for p in tree.iter("property") if p.get("name") == "SlicerParameterName"}
    module = ast.parse((MODULE / "LungSurvival.py").read_text())
    cls = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "LungSurvivalParameterNode")
    assert [ast.unparse(d) for d in cls.decorator_list] == ["parameterNodeWrapper", "withOptions(options.INFER)"]
    from LungSurvivalLib import options
    from MedDLLib.options import widget_options

    fields = {s.target.id for s in cls.body if isinstance(s, ast.AnnAssign)}
    fields |= {o.field for o in widget_options(options.INFER)}
    assert fields == {"inputVolume", "modelName", "lobeModel", "forceCpu"}
    # the model is owned by the ModelSelector, the lobe model by the BundleSelector named in helperModel
    assert bound == fields - {"modelName", "lobeModel"}
    helper = next(n for n in ast.walk(module) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "")
                  == "helperModel")
    assert [ast.unparse(e) for e in helper.value.elts[:3]] == ["'lobeModel'", "'lobeModelComboBox'",
                                                                "options.LOBE_CLASSES"]
    assert widgets["lobeModelComboBox"] == "QComboBox"
    used = {n.attr for n in ast.walk(module) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"}
    assert used <= set(widgets), used - set(widgets)
    assert widgets["inputSelector"] == "qMRMLNodeComboBox" and widgets["forceCpuCheckBox"] == "QCheckBox"
    for name in ("modelComboBox", "modelCardView", "importModelButton", "openModelCacheButton", "applyButton",
                 "progressBar", "logView", "statusLabel", "summaryLabel"):
        assert name in widgets, name
    source = (MODULE / "LungSurvival.py").read_text()  # the shared TaskLogic runs LungSurvivalLib.widgetlogic
    assert "class LungSurvivalLogic(TaskLogic)" in source and 'inputName = "chest_ct"' in source


def test_parameter_defaults_agree_with_the_logic():
    """Lung declares the lobe model (default none); the widget adds the shared Force CPU (off by default); the
    logic's options take the same defaults."""
    from LungSurvivalLib import options
    from LungSurvivalLib.logic import LungOptions
    from MedDLLib.options import FORCE_CPU, widget_options

    assert options.INFER == (options.LOBE_MODEL,) and widget_options(options.INFER) == [options.LOBE_MODEL, FORCE_CPU]
    assert options.LOBE_MODEL.default == LungOptions().lobe_model == "" and FORCE_CPU.default is False
