"""Run every module's shared self-test bodies on a headless slicer-core scene (Slicer runs the same bodies).

Each ``<Module>Lib.selftests.ALL`` (and ``MedDLLib.selftests.ALL``) is a list of ``test(scene)`` functions;
``<Module>Test.runTest`` in Slicer calls them on ``slicer.mrmlScene``.
"""

from __future__ import annotations

import importlib

import pytest

MODULE_LIBRARIES = ("MedDLLib", "GliomaClassifierLib", "LGGSegmenterLib", "LungSurvivalLib", "ICHDetectorLib")


def _bodies():
    for library in MODULE_LIBRARIES:
        for body in importlib.import_module(f"{library}.selftests").ALL:
            yield pytest.param(body, id=f"{library}.{body.__name__}")


@pytest.mark.parametrize("body", list(_bodies()))
def test_module_selftest(body, headless_scene):
    body(headless_scene)
