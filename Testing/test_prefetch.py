"""The study read in a forked child while the model loads (:mod:`MedDLLib.prefetch`): the same study as an
ordinary read, None (the caller reads it itself) when the child fails, the child always ended, and a cold
``meddl infer`` with and without it writes the same outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from MedDLLib import prefetch
from MedDLLib.taskregistry import get_task


@pytest.fixture(scope="module")
def ich_study(tmp_path_factory):
    from ICHDetectorLib.model import untrained_package
    from ICHDetectorLib.phantom import head_ct
    from MedDLLib.dicomwrite import write_series

    root = tmp_path_factory.mktemp("prefetch")
    volume, _, _ = head_ct(np.random.default_rng(3), 64, 10, ("subdural",))
    write_series(root / "ct", volume, rescale_intercept=-1024.0, file_names="instance")
    return root / "ct", untrained_package(root, 32)


def _options(task):
    import argparse

    return task.options(argparse.Namespace(), "cpu")


def test_the_child_reads_the_same_study(ich_study, monkeypatch):
    folder, package = ich_study
    task = get_task("ich")
    monkeypatch.setattr(prefetch, "_fork_is_safe", lambda: True)  # this process has torch: forced for the test
    started = prefetch.prefetch_study(task, folder, package, _options(task))
    assert started is not None
    got = started.study()
    expected = task.read_study(folder, prefetch.PackageMetadata(started.metadata), _options(task))
    assert not started._process.is_alive() and started._process.exitcode == 0
    assert got.reference == expected.reference and list(got.volumes) == list(expected.volumes)
    a, b = got.reference_volume, expected.reference_volume
    assert np.array_equal(a.array, b.array) and a.array.dtype == b.array.dtype
    assert np.allclose(a.geometry.direction, b.geometry.direction) and a.geometry.origin_lps_mm == b.geometry.origin_lps_mm
    assert a.metadata == b.metadata


def test_a_failing_child_leaves_the_read_to_the_caller(ich_study, tmp_path, monkeypatch):
    _, package = ich_study
    task = get_task("ich")
    monkeypatch.setattr(prefetch, "_fork_is_safe", lambda: True)
    (tmp_path / "notes.txt").write_text("not DICOM")
    started = prefetch.prefetch_study(task, tmp_path, package, _options(task))
    assert started.study() is None and not started._process.is_alive()
    # other metadata than the loaded model's: not used
    folder, _ = ich_study
    started = prefetch.prefetch_study(task, folder, package, _options(task))
    assert started.study({"other": "metadata"}) is None


def test_close_ends_a_child_still_reading(ich_study, monkeypatch):
    folder, package = ich_study
    task = get_task("ich")
    monkeypatch.setattr(prefetch, "_fork_is_safe", lambda: True)
    monkeypatch.setattr(task, "read_study", lambda *a: __import__("time").sleep(60))
    started = prefetch.prefetch_study(task, folder, package, _options(task))
    assert not started.ready()  # still reading: what a caller waits for (it compiles sessions meanwhile)
    started.close()
    assert not started._process.is_alive() and started._process.exitcode is not None
    assert started.ready()  # ended: nothing more to wait for


def test_ready_once_the_child_has_answered(ich_study, monkeypatch):
    import time

    folder, package = ich_study
    task = get_task("ich")
    monkeypatch.setattr(prefetch, "_fork_is_safe", lambda: True)
    started = prefetch.prefetch_study(task, folder, package, _options(task))
    deadline = time.monotonic() + 60
    while not started.ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.ready() and started.study() is not None


def test_not_used_where_unsafe_or_turned_off(ich_study, monkeypatch):
    folder, package = ich_study
    task = get_task("ich")
    assert "torch" in sys.modules and prefetch.prefetch_study(task, folder, package, _options(task)) is None
    monkeypatch.setattr(prefetch, "_fork_is_safe", lambda: True)
    monkeypatch.setenv(prefetch.ENV, "0")
    assert prefetch.prefetch_study(task, folder, package, _options(task)) is None
    monkeypatch.delenv(prefetch.ENV)
    assert prefetch.prefetch_study(task, folder, "no-such-model", _options(task)) is None


def test_cold_infer_with_and_without_the_prefetch_writes_the_same(ich_study, tmp_path):
    folder, package = ich_study
    results = {}
    for mode in ("1", "0"):
        out = tmp_path / f"out{mode}"
        env = {**os.environ, prefetch.ENV: mode, "MEDDL_RUNTIME": "torch"}
        done = subprocess.run([sys.executable, "-m", "MedDLLib.cli", "infer", "ich", "--input", str(folder), "--model",
                               str(package), "--output", str(out), "--force-cpu"], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads((out / "result.json").read_text())
        result.pop("seconds", None)
        results[mode] = (result, {p.name: p.stat().st_size for p in out.iterdir() if p.suffix != ".dcm"})
    assert results["1"] == results["0"]


# ---------------------------------------------------------------------------------------------- hostile inputs
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_inputs as fz  # noqa: E402

INFER_CASES = [c for c in fz.all_cases() if c.needs == "lung_model"]


@pytest.fixture(scope="module")
def fuzz_fixtures(tmp_path_factory) -> fz.Fixtures:
    from test_fuzz import _lung_model

    root = tmp_path_factory.mktemp("fuzz-prefetch")
    fx = fz.Fixtures(root, fz.make_small_ct(root / "small_ct"))
    _lung_model(fx)
    return fx


@pytest.mark.skipif(not fz.REAL_CT.is_dir(), reason=f"real DICOM test data not found at {fz.REAL_CT}")
@pytest.mark.parametrize("case", INFER_CASES, ids=[c.name for c in INFER_CASES])
def test_hostile_inputs_end_the_same_with_the_prefetch(case, fuzz_fixtures, tmp_path, monkeypatch):
    """The fuzz suite's infer cases (bad series, pipes, geometry, partial outputs, ...) with the study read in a
    forked child: each still ends well, with the same exit status and the same one line as without it."""
    plain = fz.run_case(case, tmp_path / "run1", fuzz_fixtures)
    monkeypatch.setattr(prefetch, "_fork_is_safe", lambda: True)
    forked = fz.run_case(case, tmp_path / "run2", fuzz_fixtures)
    assert forked["ok"], f"{case.name}: " + "; ".join(forked["why"])
    assert (forked["exit"], forked["said"].replace("run2", "run1")) == (plain["exit"], plain["said"])
