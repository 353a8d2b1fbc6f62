"""Shared pytest fixtures: a headless Slicer scene (PyPI slicer-core) and the real DICOM test data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The suite's own process runs networks on torch: each package's first runtime use exports it and times every
# candidate (seconds per test). Testing/test_runtime.py runs the runtime checks in a child with MEDDL_RUNTIME=auto.
os.environ.setdefault("MEDDL_RUNTIME", "torch")
#: Real scanner DICOM shipped beside the repository (see its README); tests skip clearly where it is absent.
REAL_DATA = Path(os.environ.get("MEDDL_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture
def headless():
    """A fresh :class:`MedDLLib.headless.HeadlessScene` (scene + application logic + module logics)."""
    from MedDLLib.headless import create_scene

    hs = create_scene()
    yield hs
    hs.scene.Clear(1)


@pytest.fixture
def headless_scene(headless):
    """A fresh, empty MRML scene (what Slicer's self-tests get as ``slicer.mrmlScene`` after ``Clear``)."""
    return headless.scene


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of real DICOM test data (``../shared/data/real``)."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real DICOM test data not found at {REAL_DATA} (set MEDDL_REAL_DATA)")
    return REAL_DATA


@pytest.fixture(autouse=True)
def _isolated_model_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own model cache folder, never the user's."""
    monkeypatch.setenv("MEDDL_HOME", str(tmp_path_factory.mktemp("meddl_home")))
