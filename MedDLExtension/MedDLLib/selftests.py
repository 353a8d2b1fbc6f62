"""Shared self-test bodies of the MedDL library: one test, two runners.

Each entry of :data:`ALL` is a function ``test(scene) -> None`` that builds its inputs in ``scene`` (a
``vtkMRMLScene``), runs library code on them and asserts. Slicer runs them from ``MedDLExtensionTest.runTest``
on ``slicer.mrmlScene``; pytest runs the same functions on a headless slicer-core scene. They must not use
``slicer.mrmlScene`` implicitly, Qt, or files outside a temporary folder.
"""

from __future__ import annotations

from collections.abc import Callable

ALL: list[Callable[..., None]] = []
