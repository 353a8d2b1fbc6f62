"""MedDLLib.results on a real slicer-core scene: the widget's run path without Qt, end to end.

Input node -> :func:`prepare_input` (NRRD) -> ``meddl infer ich|lgg`` in a child process started exactly as
the widget's BackgroundRunner starts it (:func:`MedDLLib.guisupport.child_command` / ``child_environment``) ->
:func:`load_outputs` (through the tasks' ``widgetlogic.load_results``) into a headless scene. The models are
untrained (the contract does not depend on the weights).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from MedDLLib import nodes, results
from MedDLLib.errors import InputError, MedDLError
from MedDLLib.geometry import Volume

from widget_run import assert_progress_reported, assert_unchanged, ijk_to_ras, run_meddl, snapshot


# ------------------------------------------------------------------------------------------------------ ICH
@pytest.fixture(scope="module")
def ich_run(tmp_path_factory):
    """One widget-style ``meddl infer ich`` run on a 48 x 48 x 8 phantom head CT; returns (output, volume)."""
    import ICHDetectorLib
    import MedDLLib
    from ICHDetectorLib import phantom, widgetlogic
    from ICHDetectorLib.model import untrained_package
    from MedDLLib.headless import create_scene

    root = tmp_path_factory.mktemp("ich_run")
    package = untrained_package(root, 64)
    volume, _, _ = phantom.head_ct(np.random.default_rng(5), 48, 8, ("subdural",))
    hs = create_scene()
    try:
        node = nodes.add_scalar_volume(hs.scene, volume, "head CT", window=(40.0, 80.0))
        before = snapshot(node)
        run = results.new_run_folder("ich", root / "runs")
        (input_file,) = results.prepare_input([node], run / "input", names=["head_ct"])
        assert_unchanged(node, before)
    finally:
        hs.scene.Clear(1)
    arguments = widgetlogic.infer_arguments(input_file, str(package), run / "output", heatmap_label="subdural",
                                            threshold=0.3, force_cpu=True)
    assert_progress_reported(run_meddl(arguments, widgetlogic.TASK_ENTRY, MedDLLib, ICHDetectorLib))
    return run / "output", volume


def test_prepare_input_writes_nrrd_in_node_geometry(headless_scene, tmp_path):
    import SimpleITK as sitk
    from ICHDetectorLib import phantom

    volume, _, _ = phantom.head_ct(np.random.default_rng(1), 32, 6, ())
    node = nodes.add_scalar_volume(headless_scene, volume, "CT: a/b")
    node.SetAttribute("DICOM.Modality", "CT")
    before = snapshot(node)
    (path,) = results.prepare_input([node], tmp_path / "in")
    assert path == tmp_path / "in" / "CT_a_b.nrrd" and path.is_file()
    assert [p.name for p in (tmp_path / "in").iterdir()] == [path.name]  # no partial file left behind
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.array)
    np.testing.assert_allclose(image.GetSpacing(), volume.geometry.spacing_mm, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), volume.geometry.origin_lps_mm, atol=1e-6)
    assert_unchanged(node, before)


@pytest.mark.parametrize("reader", ["prepare_input", "volume_from_node"])
def test_image_inputs_that_are_not_grey_value_volumes_are_refused_with_the_reason(headless_scene, tmp_path, reader):
    """The widget path (files for the child) and the in-process logics refuse the same nodes, naming the reason."""
    from vtkmodules.vtkCommonDataModel import vtkImageData

    def read(node):
        if reader == "prepare_input":
            return results.prepare_input([node], tmp_path)
        return nodes.volume_from_node(node, labelmap=False)

    cases = {"has no voxels": headless_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")}
    no_voxels = headless_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "zero")
    no_voxels.SetAndObserveImageData(vtkImageData())
    cases["'zero' has no voxels"] = no_voxels
    rgb = headless_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    image = vtkImageData()
    image.SetDimensions(4, 3, 2)
    image.AllocateScalars(3, 3)  # VTK_UNSIGNED_CHAR, 3 components
    rgb.SetAndObserveImageData(image)
    cases["'rgb' is a vtkMRMLVectorVolumeNode with 3 values per voxel"] = rgb
    cases["labelmap"] = nodes.add_labelmap(headless_scene, np.zeros((2, 3, 4), np.uint8), _geometry(), "lab",
                                           {1: ("x", (1, 0, 0))})
    sheared = nodes.add_scalar_volume(headless_scene, Volume(np.zeros((2, 3, 4), np.float32), _geometry(), {}), "tilt")
    matrix = np.eye(4)
    matrix[1, 2] = 0.35  # slices shifted along A as they go up: a gantry tilt kept as a shear
    sheared.SetIJKToRASMatrix(nodes.vtk_matrix(matrix))
    cases["'tilt' has a sheared voxel grid"] = sheared
    moved = nodes.add_scalar_volume(headless_scene, Volume(np.zeros((2, 3, 4), np.float32), _geometry(), {}), "moved")
    moved.SetAndObserveTransformNodeID(headless_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode").GetID())
    cases["under a transform: harden"] = moved
    cases["no volume"] = None
    for message, node in cases.items():
        with pytest.raises(InputError, match=message):
            read(node)
    assert not any(tmp_path.iterdir())
    if reader == "volume_from_node":  # a labelmap is fine where labels are what is read
        assert nodes.volume_from_node(cases["labelmap"]).array.shape == (2, 3, 4)


def _geometry():
    from MedDLLib.geometry import Geometry

    return Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))


def test_ich_outputs_load_as_new_nodes_on_the_input_grid(ich_run, headless_scene):
    from ICHDetectorLib import widgetlogic
    from ICHDetectorLib.dataset import LABELS

    output, volume = ich_run
    node = nodes.add_scalar_volume(headless_scene, volume, "head CT")
    sh = headless_scene.GetSubjectHierarchyNode()
    study = sh.CreateFolderItem(sh.GetSceneItemID(), "study")
    sh.CreateItem(study, node)
    before = snapshot(node)
    n_before = headless_scene.GetNumberOfNodes()
    loaded = widgetlogic.load_results(output, node)

    assert set(loaded.nodes) == {"heatmap", "segmentation", "table", "plot"}
    heat, seg, table, plot = (loaded.nodes[k] for k in ("heatmap", "segmentation", "table", "plot"))
    assert heat.GetClassName() == "vtkMRMLScalarVolumeNode" and heat.GetName() == "head CT ICH Grad-CAM"
    np.testing.assert_allclose(ijk_to_ras(heat), ijk_to_ras(node), atol=1e-6)
    heat_array = nodes.volume_from_node(heat).array
    assert heat_array.shape == volume.array.shape and 0.0 <= heat_array.min() and heat_array.max() <= 1.0
    assert heat.GetDisplayNode().GetColorNode().GetName() == nodes.HEATMAP_COLOR_TABLE
    assert heat.GetStorageNode() is None  # saving the scene writes it beside the scene, not into the run folder
    assert seg.GetClassName() == "vtkMRMLSegmentationNode"
    reference = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
    assert reference is not None and reference.GetID() == node.GetID()
    assert nodes.segment_array(seg, "suspected hemorrhage", node).shape == volume.array.shape
    columns = nodes.table_columns(table)
    assert list(columns) == ["slice", *LABELS]
    assert columns["slice"] == list(range(volume.array.shape[0]))  # one row per slice, in slice order
    assert plot.GetClassName() == "vtkMRMLPlotChartNode" and plot.GetNumberOfPlotSeriesNodes() == len(LABELS)
    assert (table.GetName(), plot.GetName()) == ("head CT ICH probabilities", "head CT ICH probabilities plot")

    result = json.loads((output / "result.json").read_text())
    assert loaded.result == result
    assert loaded.summary == result["summary"] and "research use only" in loaded.summary
    for new in (heat, seg, table):
        assert float(new.GetAttribute("MedDL.any_probability")) == pytest.approx(result["any_probability"])
        assert new.GetAttribute("MedDL.heatmap_label") == "subdural"
        assert new.GetAttribute("MedDL.input") == node.GetID()
        assert sh.GetItemParent(sh.GetItemByDataNode(new)) == study  # beside the input, in its study
    assert max(columns["any"]) == pytest.approx(result["any_probability"], abs=1e-5)
    assert headless_scene.GetNumberOfNodes() > n_before
    assert_unchanged(node, before)


def test_load_refuses_failed_incomplete_or_foreign_runs(ich_run, headless_scene, tmp_path):
    from ICHDetectorLib import widgetlogic

    output, volume = ich_run
    node = nodes.add_scalar_volume(headless_scene, volume, "head CT")
    count = headless_scene.GetNumberOfNodes()

    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "result.json").write_text(json.dumps({"error": "x.dcm: missing PixelData"}))
    with pytest.raises(MedDLError, match="the run failed: x.dcm: missing PixelData"):
        widgetlogic.load_results(failed, node)
    with pytest.raises(MedDLError, match="result.json: missing"):
        widgetlogic.load_results(tmp_path / "nothing", node)

    incomplete = tmp_path / "incomplete"
    shutil.copytree(output, incomplete)
    (incomplete / "heatmap.nrrd").unlink()
    (incomplete / "probabilities.csv").unlink()
    with pytest.raises(MedDLError, match="did not write heatmap.nrrd, probabilities.csv"):
        widgetlogic.load_results(incomplete, node)

    # outputs of another study (different grid): refused, and the nodes loaded before the check are removed
    from MedDLLib.geometry import Geometry, Volume

    other = nodes.add_scalar_volume(headless_scene, Volume(volume.array[:-1], volume.geometry, {}), "other CT")
    g = volume.geometry
    shifted = nodes.add_scalar_volume(headless_scene, Volume(volume.array, Geometry(
        g.spacing_mm, tuple(np.add(g.origin_lps_mm, (0.0, 0.0, 5.0))), np.asarray(g.direction_lps)), {}), "shifted")
    assert headless_scene.GetFirstNodeByName(nodes.HEATMAP_COLOR_TABLE) is None
    for made_before in (False, True):  # the heatmap colour table is removed too, unless it was there before
        if made_before:
            nodes.heatmap_color_table(headless_scene)  # shared by all heatmaps of a scene: stays
        count = headless_scene.GetNumberOfNodes()
        with pytest.raises(MedDLError, match="heatmap.nrrd: 48 x 48 x 8 voxels, but the input 'other CT' has"):
            widgetlogic.load_results(output, other)
        with pytest.raises(MedDLError, match="heatmap.nrrd: not on the voxel grid of the input 'shifted'"):
            widgetlogic.load_results(output, shifted)
        assert headless_scene.GetNumberOfNodes() == count
        assert (headless_scene.GetFirstNodeByName(nodes.HEATMAP_COLOR_TABLE) is not None) == made_before


def test_read_csv_columns_types(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("k,area,name,volume\n0,1.5,a,2.0\n1,2,b,\n")
    assert results.read_csv_columns(path) == {"k": [0, 1], "area": [1.5, 2.0], "name": ["a", "b"],
                                              "volume": [2.0, pytest.approx(float("nan"), nan_ok=True)]}
    path.write_text("a,b\n1\n")
    with pytest.raises(MedDLError, match="t.csv:2: 1 cells, the header has 2"):
        results.read_csv_columns(path)


# ------------------------------------------------------------------------------------------------------ LGG
def _lgg_package(folder: Path, channels: list[str]) -> Path:
    """An untrained 2D U-Net package (width 4) taking ``channels``."""
    from LGGSegmenterLib import model as lggmodel
    from MedDLLib.models import build_network, save_package

    metadata = {
        "task": "lgg", "version": "0.0.1", "recipe": "seed",
        "network": lggmodel.network_spec("unet", len(channels), 4),
        "input": {"channels": channels, "size": 32, "normalisation": "scale255", "brain_crop": False},
        "output": {"labels": ["tumour"]}, "postprocessing": {"threshold": 0.5, "largest_component": True},
        "training_data": {"kind": "synthetic", "n_studies": 0, "description": "untrained (test only)"},
        "metrics": {},
    }
    return save_package(folder / f"lgg-untrained-{len(channels)}", build_network(metadata), metadata)


def _lgg_nodes(scene, count: int) -> list:
    from LGGSegmenterLib import widgetlogic
    from LGGSegmenterLib.dataset import CHANNELS
    from LGGSegmenterLib.model import nominal_geometry_for
    from LGGSegmenterLib.phantom import LGGPhantomGenerator
    from MedDLLib.geometry import Volume

    image, _ = LGGPhantomGenerator(size_px=32, n_slices=6).make_case(np.random.default_rng(3))
    geometry = nominal_geometry_for(image)
    volumes = {c: nodes.add_scalar_volume(scene, Volume(image[:, i].astype(np.float32), geometry, {}), c)
               for i, c in enumerate(CHANNELS)}
    if count == 1:
        return widgetlogic.input_nodes(volumes["FLAIR"])
    return widgetlogic.input_nodes(volumes["FLAIR"], volumes["pre-contrast"], volumes["post-contrast"])


def _lgg_round_trip(scene, tmp_path, count: int):
    import LGGSegmenterLib
    import MedDLLib
    from LGGSegmenterLib import widgetlogic

    inputs = _lgg_nodes(scene, count)
    flair = inputs[0] if count == 1 else inputs[1]
    before = [snapshot(n) for n in inputs]
    package = _lgg_package(tmp_path, widgetlogic.input_names(count))
    run = results.new_run_folder("lgg", tmp_path)
    files = results.prepare_input(inputs, run / "input", names=widgetlogic.input_names(count))
    arguments = widgetlogic.infer_arguments(widgetlogic.study_input(files), str(package), run / "output",
                                            gradcam=True, force_cpu=True)
    assert_progress_reported(run_meddl(arguments, widgetlogic.TASK_ENTRY, MedDLLib, LGGSegmenterLib))
    loaded = widgetlogic.load_results(run / "output", flair)
    for node, state in zip(inputs, before):
        assert_unchanged(node, state)
    return flair, loaded


def test_lgg_outputs_load_as_new_nodes_on_the_input_grid(headless_scene, tmp_path):
    flair, loaded = _lgg_round_trip(headless_scene, tmp_path, 1)
    assert set(loaded.nodes) == {"segmentation", "labelmap", "table", "heatmap"}
    seg, lab, table, heat = (loaded.nodes[k] for k in ("segmentation", "labelmap", "table", "heatmap"))
    shape = nodes.volume_from_node(flair).array.shape
    assert lab.GetClassName() == "vtkMRMLLabelMapVolumeNode" and heat.GetClassName() == "vtkMRMLScalarVolumeNode"
    for volume_node in (lab, heat):
        np.testing.assert_allclose(ijk_to_ras(volume_node), ijk_to_ras(flair), atol=1e-6)
        assert nodes.volume_from_node(volume_node).array.shape == shape
    assert lab.GetDisplayNode().GetColorNode().GetColorName(1) == "tumour"
    mask = nodes.segment_array(seg, "tumour", flair)
    np.testing.assert_array_equal(mask, nodes.volume_from_node(lab).array > 0)  # the same voxels
    columns = nodes.table_columns(table)
    assert columns["k"] == list(range(shape[0]))  # one row per slice
    result = loaded.result
    assert sum(columns["area_mm2"]) * nodes.volume_from_node(flair).geometry.spacing_mm[2] / 1000.0 == \
        pytest.approx(result["tumour_volume_ml"], rel=1e-6, abs=1e-9)
    assert table.GetAttribute("MedDL.tumour_volume_ml") == str(result["tumour_volume_ml"])
    assert len(table.GetAttribute("MedDL.centroid_ras_mm").split()) == 3
    assert loaded.summary.endswith("[research use only]")


def test_lgg_three_channel_round_trip(headless_scene, tmp_path):
    flair, loaded = _lgg_round_trip(headless_scene, tmp_path, 3)
    assert loaded.nodes["segmentation"].GetClassName() == "vtkMRMLSegmentationNode"


def test_heatmap_colours_are_matplotlibs_inferno_without_importing_it(headless_scene, tmp_path):
    """``overlay.png`` and the scene's heatmap table share MedDL's copy of inferno: the same colours as matplotlib,
    value for value, and a heatmap overlay rendered in a fresh process imports no matplotlib."""
    import subprocess
    import sys

    import matplotlib

    from MedDLLib.colormap import INFERNO, inferno

    reference = matplotlib.colormaps["inferno"]
    assert np.array_equal(INFERNO, reference(np.arange(256))[:, :3])
    values = np.random.default_rng(0).random((64, 64))
    values[0, :6] = [0.0, 1.0, 0.5, 1 / 256, 255 / 256, 1 - 1e-12]
    assert np.array_equal(inferno(values), reference(values)[..., :3])
    table = nodes.heatmap_color_table(headless_scene)
    rgba = [0.0] * 4
    for index in (0, 100, 255):
        table.GetColor(index, rgba)
        assert np.allclose(rgba[:3], INFERNO[index], atol=0.51 / 255)  # the table keeps 8 bits a channel
    code = ("import sys, numpy as np; from MedDLLib.geometry import Volume; "
            "from MedDLLib.render import render_overlay; v = Volume(np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)); "
            "render_overlay(sys.argv[1], v, 1, heatmap=v.array); assert 'matplotlib' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "overlay.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
