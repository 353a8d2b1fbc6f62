"""Shared self-test bodies of GliomaClassifier: one test, two runners.

Each entry of :data:`ALL` is a function ``test(scene) -> None`` that builds its inputs in ``scene``, runs the
logic and asserts. Slicer runs them from ``GliomaClassifierTest.runTest`` on ``slicer.mrmlScene``; pytest runs them on a
headless slicer-core scene. The module's logic has not landed yet, so there is nothing to run.
"""

from __future__ import annotations

from collections.abc import Callable

ALL: list[Callable[..., None]] = []
