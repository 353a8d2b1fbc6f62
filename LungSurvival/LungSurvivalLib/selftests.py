"""Shared self-test bodies of LungSurvival: one test, two runners.

Each entry of :data:`ALL` is a function ``test(scene) -> None`` that builds its inputs in ``scene``, runs the
logic and asserts. Slicer runs them from ``LungSurvivalTest.runTest`` on ``slicer.mrmlScene``; pytest runs them on a
headless slicer-core scene.

They need no trained weights: the model package holds the small 3D CNN with seeded random weights (the risk value
is then meaningless, so the tests check the logic: lungs, volumes, geometry of every output, attributes, refusals,
untouched input), written to a temporary folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _chest_node(scene, modality: str = "CT"):
    from MedDLLib import nodes

    from .phantom import chest_ct

    volume, masks, info = chest_ct(np.random.default_rng(5), 48, 20, tumour_diameter_mm=40.0)
    volume.metadata["modality"] = modality
    return nodes.add_scalar_volume(scene, volume, "Chest CT"), volume, masks, info


def test_lungs_volumes_risk_and_heatmap_nodes(scene) -> None:
    """Phantom chest CT -> Right/Left lung segments on the input grid, volumes in mL, risk attributes, heatmap."""
    import slicer

    from MedDLLib import nodes

    from .logic import LungOptions, LungSurvivalLogic
    from .model import untrained_package
    from .preprocess import LEFT_LUNG, RIGHT_LUNG

    node, volume, masks, _ = _chest_node(scene)
    before = np.array(slicer.util.arrayFromVolume(node), copy=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = LungSurvivalLogic().process(node, untrained_package(Path(tmp)), LungOptions(gradcam=True))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)  # input untouched
    labels = slicer.util.arrayFromVolume(out.labelmap)
    assert labels.shape == before.shape
    for value, name, truth in ((RIGHT_LUNG, "Right lung", masks["right_lung"]), (LEFT_LUNG, "Left lung", masks["left_lung"])):
        seg_mask = nodes.segment_array(out.segmentation, name, node)
        np.testing.assert_array_equal(seg_mask > 0, labels == value)
        overlap = (seg_mask > 0) & truth
        assert overlap.sum() > 0.8 * truth.sum(), name  # the planted lung (airways excluded) is found
    voxel_ml = volume.geometry.voxel_volume_ml()
    columns = nodes.table_columns(out.table)
    assert columns["lung"][:2] == ["Right lung", "Left lung"]
    assert abs(float(columns["volume_ml"][0]) - (labels == RIGHT_LUNG).sum() * voxel_ml) < 1e-2
    assert abs(float(columns["volume_ml"][2]) - (labels > 0).sum() * voxel_ml) < 1e-2
    for n in (out.segmentation, out.table):
        assert n.GetAttribute("MedDL.risk_group") in ("low", "high")
        assert np.isfinite(float(n.GetAttribute("MedDL.risk_score")))
        assert "Research use only" in n.GetAttribute("MedDL.caveat")
    heat = slicer.util.arrayFromVolume(out.heatmap)
    assert heat.shape == before.shape and 0.0 <= heat.min() and heat.max() <= 1.0
    assert nodes.geometry_from_node(out.heatmap).allclose(volume.geometry)
    assert nodes.geometry_from_node(out.labelmap).allclose(volume.geometry)


def test_refuses_non_ct_and_non_chest(scene) -> None:
    """An MR-labelled volume and a CT without lungs are refused with the reason; no output node is added."""
    from MedDLLib import nodes
    from MedDLLib.errors import InputError
    from MedDLLib.geometry import Geometry, Volume

    from .logic import LungSurvivalLogic
    from .model import untrained_package

    mr, _, _, _ = _chest_node(scene, modality="MR")
    yy, xx = np.mgrid[:48, :48]
    abdomen = np.where(((yy - 24) ** 2 + (xx - 24) ** 2 < 20 ** 2)[None], 40.0, -1000.0) * np.ones((12, 1, 1))
    no_lungs = nodes.add_scalar_volume(scene, Volume(abdomen.astype(np.float32), Geometry((7.0, 7.0, 10.0)),
                                                     {"modality": "CT"}), "Abdomen CT")
    count = scene.GetNumberOfNodes()
    with tempfile.TemporaryDirectory() as tmp:
        package = untrained_package(Path(tmp))
        for node, expected in ((mr, "modality is 'MR'"), (no_lungs, "no lungs found")):
            try:
                LungSurvivalLogic().process(node, package)
            except InputError as exc:
                assert expected in str(exc), str(exc)
            else:  # pragma: no cover - the test fails
                raise AssertionError(f"{node.GetName()} was not refused")
    assert scene.GetNumberOfNodes() == count


def test_progress_is_reported_and_cancel_adds_nothing(scene) -> None:
    """Progress comes as rising ``(fraction, message)``; a cancel raises Cancelled and leaves the scene as it was."""
    from MedDLLib.selftests import assert_cancel_adds_nothing

    from .logic import LungOptions, LungSurvivalLogic
    from .model import untrained_package

    node, _, _, _ = _chest_node(scene)
    with tempfile.TemporaryDirectory() as tmp:
        package = untrained_package(Path(tmp))
        reported: list[tuple[float, str]] = []
        LungSurvivalLogic().process(node, package, LungOptions(gradcam=False),
                                    progress=lambda fraction, message: reported.append((fraction, message)))
        fractions = [f for f, _ in reported]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0 and all(m for _, m in reported), reported
        assert_cancel_adds_nothing(scene, lambda: LungSurvivalLogic().process(
            node, package, progress=lambda fraction, message: None, cancel=lambda: len(reported) > 0))


ALL: list[Callable[..., None]] = [test_lungs_volumes_risk_and_heatmap_nodes, test_refuses_non_ct_and_non_chest,
                                  test_progress_is_reported_and_cancel_adds_nothing]
