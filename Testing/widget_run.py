"""What the widget tests share: a module widget's run path without Qt, and checks that input nodes stay as they were.

``run_meddl`` starts ``meddl`` in a child exactly as ``MedDLWidgets.BackgroundRunner`` does (same
:mod:`MedDLLib.guisupport` command, environment and JSON-lines protocol) and returns the messages the GUI would
have received.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from MedDLLib import guisupport, nodes


def ijk_to_ras(node) -> np.ndarray:
    """The node's IJK-to-RAS matrix ``(4, 4)`` as MRML stores it."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def snapshot(node) -> tuple:
    """Voxels, geometry, attributes, storage node and name of a volume node (to show it was not modified)."""
    attributes = {k: node.GetAttribute(k) for k in node.GetAttributeNames() or ()}
    return (np.array(nodes.volume_from_node(node).array, copy=True), ijk_to_ras(node), attributes,
            node.GetStorageNodeID(), node.GetName())


def assert_unchanged(node, before: tuple) -> None:
    after = snapshot(node)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert after[2:] == before[2:]


def run_meddl(arguments: list[str], task_entry: str, *packages) -> list[guisupport.Message]:
    """``meddl <arguments>`` in a child as the widget runs it; the messages; fails the test if the run failed."""
    paths = list(dict.fromkeys(str(Path(p.__file__).resolve().parents[1]) for p in packages))
    command = guisupport.child_command(guisupport.python_executable(), arguments)
    env = guisupport.child_environment(dict(os.environ), paths, [task_entry])
    messages: list[guisupport.Message] = []
    outcome = guisupport.run_child_blocking(command, env, on_message=messages.append)
    assert outcome.succeeded, "\n".join(m.message for m in messages[-30:]) + f"\n{outcome}"
    return messages


def assert_progress_reported(messages: list[guisupport.Message]) -> None:
    """The progress bar moves: several fractions in [0, 1], non-decreasing, ending at 1."""
    fractions = [m.progress for m in messages if m.kind == "progress" and m.progress is not None]
    assert len(fractions) >= 3, [m.kind for m in messages]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] == pytest.approx(1.0)
