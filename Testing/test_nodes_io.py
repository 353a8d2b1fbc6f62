"""MRML adapters and storage on real Slicer MRML (slicer-core): exact round trips and geometry vs SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedDLLib import io, nodes, render
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.resample import from_sitk, to_sitk


def _oblique_geometry() -> Geometry:
    c, s = np.cos(0.35), np.sin(0.35)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    return Geometry((0.7, 0.9, 2.5), (-50.0, 20.0, 100.0), rot)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.int32])
@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_volume_round_trip_is_exact(headless_scene, tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = (rng.normal(0, 300, (7, 11, 13))).astype(dtype)
    geometry = _oblique_geometry()
    node = nodes.add_scalar_volume(headless_scene, Volume(array, geometry), "vol")
    path = io.save_node(node, tmp_path / f"vol{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
    # SimpleITK reads the same voxels and geometry (LPS), i.e. our IJK-to-RAS is Slicer's and ITK's.
    ref = sitk.ReadImage(str(path))
    assert from_sitk(ref).geometry.allclose(geometry, atol_mm=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref), array)
    back = nodes.volume_from_node(io.load_volume(headless_scene, path))
    assert back.array.dtype == array.dtype
    np.testing.assert_array_equal(back.array, array)
    assert back.geometry.allclose(geometry, atol_mm=1e-4)


def test_volume_from_node_copies_and_does_not_modify_input(headless_scene):
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    node = nodes.add_scalar_volume(headless_scene, Volume(array), "vol")
    volume = nodes.volume_from_node(node)
    volume.array[:] = 0
    np.testing.assert_array_equal(nodes.volume_from_node(node).array, array)


def test_geometry_matches_sitk_conversion(headless_scene):
    geometry = _oblique_geometry()
    node = nodes.add_scalar_volume(headless_scene, Volume(np.zeros((3, 4, 5), np.int16), geometry), "vol")
    image = to_sitk(nodes.volume_from_node(node))
    # SimpleITK's index->physical (LPS) equals our IJK->RAS followed by the one LPS/RAS flip.
    for ijk in [(0, 0, 0), (4, 3, 2), (1, 2, 1)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = geometry.ijk_to_ras_points(np.array(ijk))[0]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-9)


def test_labelmap_and_segmentation_round_trip(headless, tmp_path):
    scene = headless.scene
    geometry = _oblique_geometry()
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[1:4, 2:6, 3:8] = 1
    labels[4:6, 6:9, 7:11] = 2
    segments = {1: ("tumour", (1.0, 0.0, 0.0)), 2: ("oedema", (0.0, 1.0, 0.0)), 3: ("necrosis", (0.0, 0.0, 1.0))}
    reference = nodes.add_scalar_volume(scene, Volume(np.zeros(labels.shape, np.int16), geometry), "ref")
    lab = nodes.add_labelmap(scene, labels, geometry, "labels", segments)
    colors = lab.GetDisplayNode().GetColorNode()
    assert [colors.GetColorName(v) for v in (1, 2, 3)] == ["tumour", "oedema", "necrosis"]
    lab_back = nodes.volume_from_node(io.load_volume(scene, io.save_node(lab, tmp_path / "labels.nrrd"), labelmap=True))
    np.testing.assert_array_equal(lab_back.array, labels)

    seg = nodes.add_segmentation(scene, labels, segments, reference, "seg")
    assert seg.GetSegmentation().GetNumberOfSegments() == 3  # the empty "necrosis" segment exists too
    for value, (name, rgb) in segments.items():
        np.testing.assert_array_equal(nodes.segment_array(seg, name, reference), labels == value)
        assert np.allclose(seg.GetSegmentation().GetSegment(name).GetColor(), rgb)
    path = io.save_node(seg, tmp_path / "seg.seg.nrrd")
    reloaded = headless.logics["Segmentations"].LoadSegmentationFromFile(str(path), False, "reloaded")
    for value, (name, _) in segments.items():
        np.testing.assert_array_equal(nodes.segment_array(reloaded, name, reference), labels == value)
    np.testing.assert_array_equal(nodes.volume_from_node(reference).array, 0)  # reference untouched


def _classes_added(scene, before: set[str]) -> list[str]:
    return sorted(scene.GetNthNode(i).GetClassName() for i in range(scene.GetNumberOfNodes())
                  if scene.GetNthNode(i).GetID() not in before)


def test_segmentation_helpers_leave_no_orphan_nodes(headless_scene):
    """Only the segmentation and its display node remain: no temporary labelmap, display node or colour table."""
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[1:4, 2:6, 3:8] = 1
    segments = {1: ("tumour", (1.0, 0.0, 0.0)), 2: ("oedema", (0.0, 1.0, 0.0))}
    reference = nodes.add_scalar_volume(headless_scene, Volume(np.zeros(labels.shape, np.int16), _oblique_geometry()),
                                        "ref")
    before = {headless_scene.GetNthNode(i).GetID() for i in range(headless_scene.GetNumberOfNodes())}
    seg = nodes.add_segmentation(headless_scene, labels, segments, reference, "seg")
    assert _classes_added(headless_scene, before) == ["vtkMRMLSegmentationDisplayNode", "vtkMRMLSegmentationNode"]
    np.testing.assert_array_equal(nodes.segment_array(seg, "tumour", reference), labels == 1)
    assert _classes_added(headless_scene, before) == ["vtkMRMLSegmentationDisplayNode", "vtkMRMLSegmentationNode"]


def test_removed_on_error_restores_the_scene_and_keeps_what_succeeded(headless_scene):
    before = {headless_scene.GetNthNode(i).GetID() for i in range(headless_scene.GetNumberOfNodes())}
    with pytest.raises(InputError, match="late"):
        with nodes.removed_on_error(headless_scene):
            nodes.add_heatmap(headless_scene, np.zeros((2, 3, 4), np.float32), Geometry(), "cam")
            raise InputError("late failure")
    assert _classes_added(headless_scene, before) == []  # the heatmap, its display node and the inferno table
    with nodes.removed_on_error(headless_scene):
        nodes.add_heatmap(headless_scene, np.zeros((2, 3, 4), np.float32), Geometry(), "cam")
    assert _classes_added(headless_scene, before) == ["vtkMRMLColorTableNode", "vtkMRMLScalarVolumeDisplayNode",
                                                      "vtkMRMLScalarVolumeNode"]


def test_segmentation_rejects_bad_labels(headless_scene):
    ref = nodes.add_scalar_volume(headless_scene, Volume(np.zeros((2, 3, 4), np.int16)), "ref")
    with pytest.raises(InputError, match="label values \\[5\\]"):
        nodes.add_segmentation(headless_scene, np.full((2, 3, 4), 5, np.uint8), {1: ("a", (1, 0, 0))}, ref, "s")
    with pytest.raises(InputError, match="shape"):
        nodes.add_segmentation(headless_scene, np.zeros((2, 3, 5), np.uint8), {1: ("a", (1, 0, 0))}, ref, "s")


def test_heatmap_node_display_and_range(headless_scene):
    heat = np.linspace(0, 1, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    node = nodes.add_heatmap(headless_scene, heat, Geometry(), "cam", threshold=0.3)
    display = node.GetDisplayNode()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.3)
    assert display.GetColorNode().GetNumberOfColors() == 256
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    with pytest.raises(InputError, match="\\[0, 1\\]"):
        nodes.add_heatmap(headless_scene, heat * 2, Geometry(), "bad")


def test_table_round_trip_with_units(headless, tmp_path):
    table = nodes.add_table(headless.scene, {"segment": ["left lung", "right lung"], "volume_ml": [1500.5, 1700.25],
                                             "voxels": [10, 12]}, "lungs", units={"volume_ml": "mL"})
    assert nodes.table_columns(table) == {"segment": ["left lung", "right lung"], "volume_ml": [1500.5, 1700.25],
                                          "voxels": [10, 12]}
    path = io.save_node(table, tmp_path / "lungs.csv")
    reloaded = headless.logics["Tables"].AddTable(str(path), "reloaded")
    assert nodes.table_columns(reloaded)["volume_ml"] == [1500.5, 1700.25]
    assert reloaded.GetColumnUnitLabel("volume_ml") == "mL"
    chart = nodes.add_plot(headless.scene, table, "voxels", ["volume_ml"], "plot")
    assert chart.GetNumberOfPlotSeriesNodes() == 1


def test_load_volume_errors(headless_scene, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        io.load_volume(headless_scene, tmp_path / "missing.nrrd")
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"not an nrrd")
    with pytest.raises(InputError, match="could not read"):
        io.load_volume(headless_scene, bad)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InputError, match="not a DICOM folder nor a volume file"):
        io.load_volume(headless_scene, tmp_path / "x.txt")


def test_render_slice_png_shows_layers_in_radiological_convention(headless_scene, tmp_path):
    from PIL import Image

    kk, jj, ii = np.mgrid[:5, :40, :40]
    ct = np.full((5, 40, 40), -1000, np.int16)
    ct[:, :, :20] = 400  # low i = patient right (LPS x grows to the left): must be on screen left
    node = nodes.add_scalar_volume(headless_scene, Volume(ct), "ct", window=(0, 2000))
    heat = ((ii > 30) & (jj < 10)).astype(np.float32)
    cam = nodes.add_heatmap(headless_scene, heat, Geometry(), "cam")
    n_nodes = headless_scene.GetNumberOfNodes()
    png = render.render_slice_png(tmp_path / "s.png", node, foreground=cam, size_px=(80, 80),
                                  offset_mm=render.slice_offset_of(node, 2))
    assert headless_scene.GetNumberOfNodes() == n_nodes  # temporary view nodes removed
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    left, right = rgb[:, :40].mean(), rgb[:, 40:].mean()
    assert left > right + 50  # bright half (patient right) drawn on the left
    top_right = rgb[:20, 60:]  # heatmap: low j (anterior, screen top) and high i (patient left, screen right)
    assert (top_right[..., 0] - top_right[..., 2]).mean() > 20  # inferno is warm (red > blue)


def test_empty_segmentation_is_saved_in_the_reference_geometry(headless_scene, tmp_path):
    """A result with no finding (all segments empty) must still be a .seg.nrrd on the input's grid."""
    geometry = Geometry((0.5, 0.5, 5.0), (10.0, 20.0, 30.0))
    reference = nodes.add_scalar_volume(headless_scene, Volume(np.zeros((8, 12, 16), np.int16), geometry), "ref")
    seg = nodes.add_segmentation(headless_scene, np.zeros((8, 12, 16), np.uint8),
                                 {1: ("bleed", (1.0, 0.0, 0.0))}, reference, "none found")
    image = sitk.ReadImage(str(io.save_node(seg, tmp_path / "empty.seg.nrrd")))
    assert image.GetSize() == (16, 12, 8)
    assert from_sitk(image).geometry.allclose(geometry)
    assert not sitk.GetArrayFromImage(image).any()
