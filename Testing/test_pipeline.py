"""The task pipeline (MedDLLib.pipeline): outputs identical to the code before it, a child that needs no MRML
(issue 16 break 2: `meddl infer` with `import slicer` failing, and with `slicer` holding only Slicer's base kits as
in PythonSlicer), the model loaded once, the `.seg.nrrd` writer read back by slicer-core's segmentation storage
node, nodes built from the declared outputs from memory and from files alike."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline_cases as pc
from MedDLLib.geometry import Geometry, Volume

REFERENCE = json.loads((Path(__file__).parent / "data" / "pipeline_reference.json").read_text(encoding="utf-8"))
PHANTOM_CASES = ("ich_dicom", "ich_nrrd", "lgg_tif", "lung_phantom", "glioma_case")
#: What `import slicer` gives in Slicer's PythonSlicer (Base/Python/CMakeLists.txt: mrml, vtkAddon,
#: vtkSegmentationCore, vtkITK, vtkTeem and Base/Logic); no vtkSlicer*ModuleLogic, no module MRML.
BASE_KITS = ("MRMLCore", "MRMLLogic", "MRMLCLI", "vtkSegmentationCore", "vtkSlicerBaseLogic", "vtkITK", "vtkTeem")


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict:
    return pc.make_cases(tmp_path_factory.mktemp("pipeline_cases"))


def _stub_env(tmp_path: Path, kind: str) -> dict[str, str]:
    """Environment whose PYTHONPATH puts a stub ``slicer`` package first: ``missing`` (importing it fails) or
    ``base`` (only the base kits of slicer-core, plus slicer-core's ``slicer.util``)."""
    stub = tmp_path / f"stub_{kind}" / "slicer"
    stub.mkdir(parents=True)
    if kind == "missing":
        body = 'raise ImportError("no module named slicer (test stub: this child has no Slicer)")\n'
    else:
        imports = "".join(f"from slicer_core.{kit} import *  # noqa: F401,F403\n" for kit in BASE_KITS)
        body = (
            '"""Test stub: `slicer` as PythonSlicer has it (base kits only, no module logic)."""\n'
            "import importlib.util as _u\nimport os as _os\nimport sys as _sys\nimport slicer_core as _core\n"
            + imports
            + "_spec = _u.spec_from_file_location('slicer.util', _os.path.join(_os.path.dirname(_core.__file__), "
            "'..', 'slicer', 'util.py'))\n"
            "util = _u.module_from_spec(_spec)\n_sys.modules['slicer.util'] = util\n_spec.loader.exec_module(util)\n"
        )
    (stub / "__init__.py").write_text(body, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(stub.parent), *filter(None, [env.get("PYTHONPATH", "")])])
    return env


def _python(env: dict[str, str], code: str) -> str:
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    return (proc.stdout + proc.stderr).strip()


def test_stubs_are_what_the_child_sees(tmp_path):
    """The two stubs really take Slicer away (negative control of the tests below)."""
    missing = _stub_env(tmp_path, "missing")
    assert "test stub: this child has no Slicer" in _python(missing, "import slicer")
    base = _stub_env(tmp_path, "base")
    out = _python(base, "import slicer; print(hasattr(slicer, 'vtkMRMLScene'), hasattr(slicer, 'vtkSlicerColorLogic'),"
                        " hasattr(slicer, 'vtkSlicerSegmentationsModuleLogic'),"
                        " hasattr(slicer.util, 'arrayFromVolume'))")
    assert out.splitlines()[-1] == "True False False True", out
    # what the child before the pipeline needed: a scene with the module logics
    out = _python(base, "from MedDLLib.headless import create_scene; create_scene()")
    assert "has no attribute 'vtkSlicerColorLogic'" in out, out


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_outputs_match_the_code_before_the_pipeline(name, cases, tmp_path):
    """Every output file of `meddl infer` as before: same voxels and geometry (labels, labelmaps, segments read
    back by Slicer's storage node), same result.json and CSV numbers (network outputs within 1e-3)."""
    if name not in cases:
        pytest.skip(f"{name}: the real chest CT is not beside the repository ({pc.REAL_CHEST})")
    proc = pc.infer(cases[name], tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert pc.differences(pc.fingerprint(tmp_path / "out"), REFERENCE[name]) == []


@pytest.mark.parametrize("stub", ["missing", "base"])
@pytest.mark.parametrize("name", PHANTOM_CASES)
def test_infer_needs_no_slicer(name, stub, cases, tmp_path):
    """Issue 16 break 2: `meddl infer <task>` in a child where `import slicer` fails, and in one where `slicer`
    has only the base kits (PythonSlicer), writes the same outputs."""
    proc = pc.infer(cases[name], tmp_path / "out", env=_stub_env(tmp_path, stub))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert pc.differences(pc.fingerprint(tmp_path / "out"), REFERENCE[name]) == []


def test_model_is_verified_and_built_once(cases, tmp_path, monkeypatch, capsys):
    """`meddl infer`: check_model then the run load the package (checksum, weights-only load) and build the network
    once; a batch of two studies too."""
    import MedDLLib.models.cache as cache_module
    import MedDLLib.models.package as package_module
    from MedDLLib import cli, pipeline

    loads, builds = [], []
    real_load, real_build = package_module.load_package_at, package_module.build_network

    def load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    def build(*args, on_meta: bool = False, **kwargs):
        if not on_meta:  # the meta-device build only checks the weights' shapes (no memory, no weights)
            builds.append(args)
        return real_build(*args, on_meta=on_meta, **kwargs)

    monkeypatch.setattr(cache_module, "load_package_at", load)
    monkeypatch.setattr(package_module, "build_network", build)
    pipeline._cache.clear()
    case = cases["lung_phantom"]
    assert cli.main(["infer", "lung", "--input", str(case["input"]), "--model", str(case["model"]), "--output",
                     str(tmp_path / "one")]) == 0
    assert (len(loads), len(builds)) == (1, 1), (loads, builds)
    studies = tmp_path / "studies"
    studies.mkdir()
    for n in range(2):
        (studies / f"s{n}").symlink_to(case["input"], target_is_directory=True)
    loads.clear(), builds.clear()
    pipeline._cache.clear()
    assert cli.main(["batch", "lung", "--input", str(studies), "--model", str(case["model"]), "--output",
                     str(tmp_path / "many")]) == 0
    assert (len(loads), len(builds)) == (1, 1), (loads, builds)


def test_the_result_says_what_ran_the_forwards(cases, tmp_path):
    """result.json's ``runtime`` names what ran each forward (per input shape, ``runtime_checks.py``) and each
    Grad-CAM layer, with version and precision; the suite keeps torch fp32 (``$MEDDL_RUNTIME=torch``). A lung study
    runs one forward, Grad-CAM's, which gives the risk too. In a batch each study says what ran for it alone (the
    model stays loaded between studies)."""
    from MedDLLib import runtime
    from MedDLLib.cli import main

    case = cases["lung_phantom"]
    studies = tmp_path / "studies"
    studies.mkdir()
    for n in range(2):
        (studies / f"s{n}").symlink_to(case["input"], target_is_directory=True)
    assert main(["batch", "lung", "--input", str(studies), "--model", str(case["model"]), "--output",
                 str(tmp_path / "many")]) == 0
    torch_fp32 = runtime.describe("torch")
    assert torch_fp32.startswith("torch 2.") and torch_fp32.endswith(" fp32")
    for n in range(2):
        ran = json.loads((tmp_path / "many" / f"s{n}" / "result.json").read_text())["runtime"]
        assert ran == f"Grad-CAM features.8: {torch_fp32}", ran


def test_seg_nrrd_is_read_back_by_slicers_storage_node(headless_scene, tmp_path):
    """A `.seg.nrrd` written without MRML reads back in slicer-core as the same segments (names, colours, voxels,
    an empty segment kept) on the same oblique grid."""
    import slicer

    from MedDLLib import nodes, outputs

    rotation = np.array([[0.0, -1.0, 0.0], [0.8, 0.0, 0.6], [-0.6, 0.0, 0.8]])
    geometry = Geometry((0.7, 0.9, 2.5), (12.0, -30.0, 40.0), rotation)
    labels = np.zeros((6, 9, 11), np.uint8)
    labels[1:4, 2:6, 3:8] = 1
    labels[4, 7, 1] = 2
    segments = {1: ("Right lung", (0.5, 0.68, 0.9)), 2: ("Left lung", (0.9, 0.7, 0.45)),
                3: ("suspected hemorrhage", (1.0, 0.2, 0.2))}
    path = outputs.write_segmentation(tmp_path / "x.seg.nrrd", labels, geometry, segments)
    reference = nodes.add_scalar_volume(headless_scene, Volume(np.zeros(labels.shape, np.float32), geometry), "ref")
    seg = headless_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(seg)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    for value, (name, rgb) in segments.items():
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
        assert segment is not None, name
        np.testing.assert_allclose(segment.GetColor(), rgb, atol=1e-6)
        np.testing.assert_array_equal(nodes.segment_array(seg, name, reference), (labels == value).astype(np.uint8))
    # the reference geometry Slicer keeps for the segmentation is the input grid
    text = segmentation.GetConversionParameter("Reference image geometry")
    assert text == outputs.reference_geometry_string(geometry, labels.shape)
    back, read_segments = outputs.read_segmentation_labels(path)
    np.testing.assert_array_equal(back.array, labels)
    assert back.geometry.allclose(geometry) and [s[0] for s in read_segments.values()] == [s[0] for s in
                                                                                            segments.values()]


def test_written_volumes_keep_type_and_ijk_to_ras(headless_scene, tmp_path):
    """Heatmaps (float32) and labelmaps (uint8) written without MRML load in slicer-core with the same IJK-to-RAS."""
    from MedDLLib import io, nodes, outputs

    geometry = Geometry((0.5, 0.6, 3.0), (-5.0, 7.0, 2.0), np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]))
    heat = Volume(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32), geometry)
    outputs.write_volume(tmp_path / "h.nrrd", heat)
    node = io.load_volume(headless_scene, tmp_path / "h.nrrd")
    back = nodes.volume_from_node(node)
    assert back.array.dtype == np.float32 and np.array_equal(back.array, heat.array)
    np.testing.assert_allclose(back.geometry.ijk_to_ras(), geometry.ijk_to_ras(), atol=1e-9)
    labels = (heat.array > 0.5).astype(np.uint8)
    outputs.write_volume(tmp_path / "l.nrrd", heat.with_array(labels))
    assert nodes.volume_from_node(io.load_volume(headless_scene, tmp_path / "l.nrrd", labelmap=True)).array.dtype \
        == np.uint8


def test_overlay_is_rendered_from_arrays_in_radiological_view(tmp_path):
    """overlay.png without MRML: patient right on the image's left, anterior at the top, label colours on top."""
    from PIL import Image

    from MedDLLib.render import render_overlay

    array = np.zeros((3, 20, 30), np.float32)
    array[:, :, :5] = 100.0  # i = 0..4: patient right (LPS: i towards left)
    labels = np.zeros(array.shape, np.uint8)
    labels[1, :4, 10:20] = 1  # j = 0..3: anterior
    volume = Volume(array, Geometry((1.0, 1.0, 1.0)))
    png = render_overlay(tmp_path / "o.png", volume, 1, labels=labels, colors={1: (1.0, 0.0, 0.0)}, size_px=300)
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert image.shape[:2] == (200, 300)
    assert image[100, 10].mean() > 200 and image[100, 290].mean() < 30  # bright column on the left
    red = image[..., 0] - image[..., 1]
    assert red[10, 150] > 100 and red[190, 150] < 10  # label at the top


def test_console_nodes_equal_the_child_files(cases, headless_scene, tmp_path):
    """The console path (ICHDetectorLogic.process on a node, nodes from memory) and the child's files (loaded
    back through the widgets' load_outputs) give the same voxels, grid and numbers; the input node is unchanged."""
    from ICHDetectorLib import widgetlogic
    from ICHDetectorLib.logic import ICHDetectorLogic, ICHOptions
    from MedDLLib import io, nodes

    case = cases["ich_nrrd"]
    node = io.load_volume(headless_scene, case["input"], name="head CT")
    before = nodes.volume_from_node(node).array.copy()
    console = ICHDetectorLogic().process(node, case["model"], ICHOptions(heatmap_label="intraparenchymal",
                                                                           threshold=0.3)).nodes
    proc = pc.infer(case, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    files = widgetlogic.load_results(tmp_path / "out", node).nodes
    assert set(console) == set(files) == {"heatmap", "segmentation", "table", "plot"}
    for key in ("heatmap",):
        a, b = nodes.volume_from_node(console[key]), nodes.volume_from_node(files[key])
        np.testing.assert_allclose(a.array, b.array, atol=1e-6)  # two processes: float rounding may differ
        np.testing.assert_allclose(a.geometry.ijk_to_ras(), b.geometry.ijk_to_ras(), atol=1e-9)
    name = "suspected hemorrhage"
    np.testing.assert_array_equal(nodes.segment_array(console["segmentation"], name, node),
                                  nodes.segment_array(files["segmentation"], name, node))
    console_table, file_table = nodes.table_columns(console["table"]), nodes.table_columns(files["table"])
    assert console_table.keys() == file_table.keys()
    for column in console_table:
        # network outputs: the runtime may run ONNX Runtime where it agrees with torch within 1e-3
        np.testing.assert_allclose(console_table[column], file_table[column], atol=pc.FLOAT_ABS_TOL)
    for key in ("MedDL.n_slices", "MedDL.heatmap_label", "MedDL.input", "MedDL.model"):
        assert console["table"].GetAttribute(key) == files["table"].GetAttribute(key), key
    np.testing.assert_array_equal(nodes.volume_from_node(node).array, before)
