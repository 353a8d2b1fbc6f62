"""Shared self-test bodies of the MedDL library: one test, two runners.

Each entry of :data:`ALL` is a function ``test(scene) -> None`` that builds its inputs in ``scene`` (a
``vtkMRMLScene``), runs library code on them and asserts. Slicer runs them from ``MedDLExtensionTest.runTest``
on ``slicer.mrmlScene``; pytest runs the same functions on a headless slicer-core scene
(``Testing/test_selftests.py``). They never use ``slicer.mrmlScene`` implicitly, Qt, or files outside a
temporary folder, and they remove the temporary files they write.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def assert_cancel_adds_nothing(scene, run: Callable[[], object]) -> None:
    """``run()``, a logic call whose ``cancel()`` returns True, raises :class:`~MedDLLib.errors.Cancelled` and
    leaves ``scene`` with the nodes it had (the task self-tests' cancel check)."""
    from .errors import Cancelled

    count = scene.GetNumberOfNodes()
    try:
        run()
    except Cancelled:
        pass
    else:
        raise AssertionError("cancel() returned True but the run went on")
    assert scene.GetNumberOfNodes() == count, "a cancelled run added nodes"


def _oblique_volume():
    from .geometry import Geometry, Volume

    c, s = np.cos(0.3), np.sin(0.3)
    geometry = Geometry((0.8, 0.9, 2.5), (-40.0, 25.0, 60.0), ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0)))
    array = (np.arange(6 * 10 * 12).reshape(6, 10, 12) % 97 - 40).astype(np.int16)
    return Volume(array, geometry, {"modality": "CT"})


def test_volume_node_nrrd_round_trip(scene) -> None:
    """array -> volume node -> .nrrd (Slicer storage node) -> new node -> array: voxels and geometry exact."""
    from . import io, nodes

    volume = _oblique_volume()
    node = nodes.add_scalar_volume(scene, volume, "MedDLSelfTestVolume")
    with tempfile.TemporaryDirectory() as folder:
        reloaded = io.load_volume(scene, io.save_node(node, Path(folder) / "volume.nrrd"))
        back = nodes.volume_from_node(reloaded)
    assert np.array_equal(back.array, volume.array), "voxels changed in the NRRD round trip"
    assert back.geometry.allclose(volume.geometry, atol_mm=1e-4), "geometry changed in the NRRD round trip"


def test_segmentation_from_labels_round_trip(scene) -> None:
    """label array -> segmentation node (input as reference geometry) -> .seg.nrrd -> segments: exact."""
    from . import io, nodes
    from .headless import module_logic

    volume = _oblique_volume()
    reference = nodes.add_scalar_volume(scene, volume, "MedDLSelfTestReference")
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[1:4, 2:6, 3:9] = 1
    labels[4:6, 6:9, 2:5] = 2
    segments = {1: ("tumour", (0.9, 0.2, 0.1)), 2: ("oedema", (0.2, 0.8, 0.2))}
    seg = nodes.add_segmentation(scene, labels, segments, reference, "MedDLSelfTestSegmentation")
    with tempfile.TemporaryDirectory() as folder:
        path = io.save_node(seg, Path(folder) / "seg.seg.nrrd")
        reloaded = module_logic(scene, "Segmentations").LoadSegmentationFromFile(str(path), False, "reloaded")
    for value, (name, _) in segments.items():
        assert np.array_equal(nodes.segment_array(reloaded, name, reference), labels == value), name
    assert np.array_equal(nodes.volume_from_node(reference).array, volume.array), "reference volume modified"


def test_heatmap_overlay_node(scene) -> None:
    """A [0, 1] heatmap becomes a thresholded inferno overlay in the input geometry."""
    from . import nodes

    volume = _oblique_volume()
    heat = np.linspace(0.0, 1.0, volume.array.size, dtype=np.float32).reshape(volume.array.shape)
    node = nodes.add_heatmap(scene, heat, volume.geometry, "MedDLSelfTestHeatmap", threshold=0.25)
    display = node.GetDisplayNode()
    assert display.GetApplyThreshold() and abs(display.GetLowerThreshold() - 0.25) < 1e-9
    assert display.GetColorNode().GetNumberOfColors() == 256
    assert nodes.volume_from_node(node).geometry.allclose(volume.geometry)


ALL: list[Callable[..., None]] = [
    test_volume_node_nrrd_round_trip,
    test_segmentation_from_labels_round_trip,
    test_heatmap_overlay_node,
]
