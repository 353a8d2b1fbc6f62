"""Shared self-test bodies of ICHDetector: one test, two runners.

Each entry of :data:`ALL` is a function ``test(scene) -> None`` that builds its inputs in ``scene``, runs the
logic and asserts. Slicer runs them from ``ICHDetectorTest.runTest`` on ``slicer.mrmlScene``; pytest runs them on
a headless slicer-core scene (Testing/test_selftests.py). They use an untrained network of the improved recipe
(the output contract does not depend on the weights); that the model learns is tested in
Testing/test_ich_model.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _phantom_node(scene, subtypes=("subdural",), size=64, n_slices=10):
    from MedDLLib import nodes

    from .phantom import head_ct

    volume, masks, _ = head_ct(np.random.default_rng(7), size, n_slices, subtypes)
    return nodes.add_scalar_volume(scene, volume, "phantom head CT"), volume


def test_outputs_match_input_geometry(scene) -> None:
    """Table (one row per slice), plot, heatmap and segmentation on the input grid; input node unchanged."""
    from MedDLLib import nodes

    from .model import untrained_package
    from .dataset import LABELS
    from .logic import ICHDetectorLogic, ICHOptions

    node, volume = _phantom_node(scene)
    before = np.array(nodes.volume_from_node(node).array, copy=True)
    with tempfile.TemporaryDirectory() as tmp:
        package = untrained_package(Path(tmp), 64)
        result = ICHDetectorLogic().process(node, package, ICHOptions(heatmap_label="subdural"))
    columns = nodes.table_columns(result.nodes["table"])
    assert list(columns) == ["slice", *LABELS]
    assert len(columns["any"]) == volume.array.shape[0]
    assert all(0.0 <= v <= 1.0 for label in LABELS for v in columns[label])
    assert abs(float(result.nodes["table"].GetAttribute("MedDL.any_probability")) - max(columns["any"])) < 1e-5
    assert result.nodes["plot"].GetNumberOfPlotSeriesNodes() == len(LABELS)
    heat = nodes.volume_from_node(result.nodes["heatmap"])
    assert heat.array.shape == volume.array.shape and heat.geometry.allclose(volume.geometry)
    seg = nodes.segment_array(result.nodes["segmentation"], "suspected hemorrhage", node)
    assert seg.shape == volume.array.shape
    np.testing.assert_array_equal(seg, result.suspected)
    np.testing.assert_array_equal(nodes.volume_from_node(node).array, before)
    assert "research use only" in result.summary


def test_refuses_non_head_ct(scene) -> None:
    """An MR volume, stored (non-HU) values and a chest-like CT are refused with the reason."""
    from MedDLLib import nodes
    from MedDLLib.errors import InputError
    from MedDLLib.geometry import Volume

    from .logic import ICHDetectorLogic

    _, volume = _phantom_node(scene, ())
    cases = {
        "modality": Volume(volume.array, volume.geometry, {"modality": "MR"}),
        "Hounsfield": Volume(volume.array + 1024.0, volume.geometry, {}),
        "head CT": Volume(np.where(volume.array > 0, -800.0, volume.array).astype(np.float32), volume.geometry, {}),
    }
    for expected, bad in cases.items():
        node = nodes.add_scalar_volume(scene, bad, f"bad {expected}")
        if bad.metadata.get("modality"):
            node.SetAttribute("DICOM.Modality", bad.metadata["modality"])
        try:
            ICHDetectorLogic().process(node, "not-needed-refused-first")
        except InputError as exc:
            assert expected in str(exc), (expected, str(exc))
        else:
            raise AssertionError(f"{expected}: not refused")


ALL: list[Callable[..., None]] = [test_outputs_match_input_geometry, test_refuses_non_head_ct]
