"""Shared self-test bodies of GliomaClassifier: one test, two runners.

Each entry of :data:`ALL` is a function ``test(scene) -> None`` that builds its inputs in ``scene``, runs the
logic and asserts. Slicer runs them from ``GliomaClassifierTest.runTest`` on ``slicer.mrmlScene``; pytest runs
them on a headless slicer-core scene (Testing/test_selftests.py). They use an untrained network (the output
contract does not depend on the weights); that the model learns is tested in Testing/test_glioma_model.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _study(size: int = 32, n_slices: int = 16):
    from .phantom import brain_mri

    volumes, masks, _ = brain_mri(np.random.default_rng(3), size, n_slices, label=1)
    return volumes, masks


def test_outputs_in_input_geometry(scene) -> None:
    """Two sequence nodes (T1wCE stored sagittal, FLAIR axial): table + attributes with the probability and the
    model card, a heatmap on the reference node's grid, the window as a markups ROI; inputs unchanged."""
    from MedDLLib import nodes
    from MedDLLib.phantoms import as_plane

    from .logic import GliomaClassifierLogic
    from .model import untrained_package

    volumes, _ = _study()
    t1ce = nodes.add_scalar_volume(scene, as_plane(volumes["T1wCE"], "sagittal"), "T1wCE")
    flair = nodes.add_scalar_volume(scene, volumes["FLAIR"], "FLAIR")
    before = [np.array(nodes.volume_from_node(n).array, copy=True) for n in (t1ce, flair)]
    with tempfile.TemporaryDirectory() as tmp:
        package = untrained_package(Path(tmp) / "m", sequences=("T1wCE", "FLAIR"), size=32, depth=16)
        result = GliomaClassifierLogic().process({"T1wCE": t1ce, "FLAIR": flair}, package)
    table = result.nodes["table"]
    columns = nodes.table_columns(table)
    rows = dict(zip(columns["quantity"], columns["value"]))
    assert 0.0 <= result.probability <= 1.0
    assert abs(float(rows["probability"]) - result.probability) < 1e-6
    assert abs(float(table.GetAttribute("MedDL.probability")) - result.probability) < 1e-5
    assert "Research use only" in table.GetAttribute("MedDL.model_card") and "near chance" in result.summary
    assert int(rows["window last slice"]) - int(rows["window first slice"]) + 1 == 16
    heat = nodes.volume_from_node(result.nodes["heatmap"])
    reference = nodes.volume_from_node(t1ce)
    assert heat.array.shape == reference.array.shape and heat.geometry.allclose(reference.geometry)
    assert float(heat.array.min()) >= 0.0 and float(heat.array.max()) <= 1.0
    roi = result.nodes["window"]
    size = roi.GetSize()
    # the 16-slice window along S (axial slices after reorientation: the axial slice spacing)
    assert abs(size[2] - 16 * volumes["T1wCE"].geometry.spacing_mm[2]) < 1e-3, size
    for node, array in zip((t1ce, flair), before):
        np.testing.assert_array_equal(nodes.volume_from_node(node).array, array)


def test_refuses_bad_input(scene) -> None:
    """A CT node and a missing sequence are refused with the reason, before any output node is made."""
    from MedDLLib import nodes
    from MedDLLib.errors import InputError
    from MedDLLib.geometry import Volume

    from .logic import GliomaClassifierLogic
    from .model import untrained_package

    volumes, _ = _study()
    ct = nodes.add_scalar_volume(scene, Volume(volumes["T1wCE"].array, volumes["T1wCE"].geometry, {"modality": "CT"}),
                                 "CT")
    flair = nodes.add_scalar_volume(scene, volumes["FLAIR"], "FLAIR")
    n_before = scene.GetNumberOfNodes()
    with tempfile.TemporaryDirectory() as tmp:
        package = untrained_package(Path(tmp) / "m", sequences=("T1wCE", "FLAIR"), size=32, depth=16)
        for given, expected in (({"T1wCE": ct, "FLAIR": flair}, "modality 'CT'"), ({"FLAIR": flair}, "missing T1wCE")):
            try:
                GliomaClassifierLogic().process(given, package)
            except InputError as exc:
                assert expected in str(exc), (expected, str(exc))
            else:
                raise AssertionError(f"{expected}: not refused")
    assert scene.GetNumberOfNodes() == n_before


ALL: list[Callable[..., None]] = [test_outputs_in_input_geometry, test_refuses_bad_input]
