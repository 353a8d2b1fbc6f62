"""Shared self-test bodies of LGGSegmenter: one test, two runners.

Each entry of :data:`ALL` is a function ``test(scene) -> None`` that builds its inputs in ``scene``, runs the
logic and asserts. Slicer runs them from ``LGGSegmenterTest.runTest`` on ``slicer.mrmlScene``; pytest runs them on a
headless slicer-core scene.

They need no trained weights: the model is a one-layer network (a 1x1 convolution) whose weights are set by
hand so that it marks FLAIR above 127 as tumour. That keeps the expected segmentation exact, so the tests check
the logic (slice-by-slice run, grid of the outputs, reference geometry, features in mm, untouched inputs).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

THRESHOLD_NET = "LGGSegmenter.selftest.FlairThreshold"


def _threshold_net(in_channels: int = 1) -> object:
    import torch

    net = torch.nn.Conv2d(in_channels, 1, kernel_size=1)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, in_channels // 2] = 40.0  # the FLAIR channel (the middle one of three, or the only one)
        net.bias.fill_(-40.0 * 127.5 / 255.0)
    return net


def _package(folder: Path, in_channels: int = 1) -> Path:
    from MedDLLib.models import register_network, save_package

    register_network(THRESHOLD_NET, _threshold_net)
    channels = ["FLAIR"] if in_channels == 1 else ["pre-contrast", "FLAIR", "post-contrast"]
    metadata = {
        "task": "lgg", "version": "0.0.1", "recipe": "seed",
        "network": {"name": THRESHOLD_NET, "args": {"in_channels": in_channels}},
        "input": {"channels": channels, "size": 40, "normalisation": "scale255", "brain_crop": False},
        "output": {"labels": ["tumour"]}, "postprocessing": {"threshold": 0.5, "largest_component": True},
        "training_data": {"kind": "synthetic", "n_studies": 0, "description": "hand-set self-test weights"},
        "metrics": {},
    }
    return save_package(folder / "lgg-selftest", _threshold_net(in_channels), metadata)


def _flair_study(scene):
    """A 12 x 40 x 40 FLAIR node (1 x 0.8 x 2.5 mm, oblique-free LPS) with a bright 3D box 'tumour'."""
    from MedDLLib import nodes
    from MedDLLib.geometry import Geometry, Volume

    image = np.full((12, 40, 40), 60.0, dtype=np.float32)
    image[4:8, 10:20, 22:30] = 200.0  # tumour: 4 slices x 10 rows x 8 columns
    image[0, 0, 0] = 210.0  # a one-voxel speck: removed by the largest-component step
    geometry = Geometry((1.0, 0.8, 2.5), (-20.0, 15.0, -10.0), np.eye(3))
    node = nodes.add_scalar_volume(scene, Volume(image, geometry, {}), "FLAIR")
    truth = np.zeros(image.shape, dtype=bool)
    truth[4:8, 10:20, 22:30] = True
    return node, truth, geometry


def test_segments_planted_tumour_in_mm(scene) -> None:
    """The tumour comes out on the input grid; volume, centroid and spread are right in mm; input untouched."""
    from MedDLLib import nodes

    from .logic import LGGSegmenterLogic

    node, truth, geometry = _flair_study(scene)
    before = np.array(nodes.volume_from_node(node).array)
    with tempfile.TemporaryDirectory() as tmp:
        out = LGGSegmenterLogic().process(node, _package(Path(tmp)))
    mask = nodes.segment_array(out.segmentation, "tumour", node)
    assert np.array_equal(mask.astype(bool), truth), "segmentation differs from the planted tumour"
    assert np.array_equal(np.array(nodes.volume_from_node(out.labelmap).array) > 0, truth)
    assert nodes.volume_from_node(out.labelmap).geometry.allclose(geometry)
    f = out.result.features
    assert abs(f.volume_ml - 4 * 10 * 8 * 1.0 * 0.8 * 2.5 / 1000.0) < 1e-9
    ras = geometry.ijk_to_ras_points(np.array([[(22 + 29) / 2, (10 + 19) / 2, (4 + 7) / 2]]))[0]
    assert np.allclose(f.centroid_ras_mm, ras, atol=1e-6)
    expected_sd = [np.std(np.arange(8)) * 1.0, np.std(np.arange(10)) * 0.8, np.std(np.arange(4)) * 2.5]
    assert np.allclose(f.spread_mm, expected_sd, atol=1e-6)
    assert np.array_equal(np.array(nodes.volume_from_node(node).array), before), "input node was modified"
    table = nodes.table_columns(out.table)
    assert np.isclose(sum(table["area_mm2"]), 4 * 10 * 8 * 0.8)


def test_three_channel_model_needs_three_nodes(scene) -> None:
    """A model trained on pre/FLAIR/post refuses a FLAIR node alone with a clear message."""
    from MedDLLib.errors import InputError

    from .logic import LGGSegmenterLogic

    node, _, _ = _flair_study(scene)
    with tempfile.TemporaryDirectory() as tmp:
        package = _package(Path(tmp), in_channels=3)
        try:
            LGGSegmenterLogic().process(node, package)
        except InputError as exc:
            assert "3 channel" in str(exc), exc
        else:
            raise AssertionError("a 3-channel model ran on one node")


def test_cancel_raises_cancelled_and_adds_nothing(scene) -> None:
    """A cancel raises Cancelled (not an input error) and leaves the scene as it was."""
    from MedDLLib.selftests import assert_cancel_adds_nothing

    from .logic import LGGSegmenterLogic

    node, _, _ = _flair_study(scene)
    with tempfile.TemporaryDirectory() as tmp:
        package = _package(Path(tmp))
        assert_cancel_adds_nothing(scene, lambda: LGGSegmenterLogic().process(node, package, cancel=lambda: True))


ALL: list[Callable[..., None]] = [test_segments_planted_tumour_in_mm, test_three_channel_model_needs_three_nodes,
                                  test_cancel_raises_cancelled_and_adds_nothing]
