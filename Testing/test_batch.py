"""The batch runner (MedDLLib.batch) and the Slicer entry script (MedDLExtension/MedDLScripts/meddl_batch.py), on a dummy task."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dummy_task
from MedDLLib import batch, tasks
from MedDLLib.errors import InputError
from MedDLLib.io import to_jsonable

TESTING = Path(__file__).resolve().parent
SCRIPT = TESTING.parent / "MedDLExtension" / "MedDLScripts" / "meddl_batch.py"


def make_studies(root: Path, n: int, corrupt: tuple[int, ...] = ()) -> Path:
    dummy_task.TASK.phantom(root, n, seed=3, args=argparse.Namespace())
    for case in corrupt:
        (root / f"case{case:03d}" / "input.txt").write_text("not numbers\n", encoding="utf-8")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative POSIX path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def without_seconds(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(path)]


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".") or p.name.endswith(".partial")]


# ------------------------------------------------------------------------------------------------ run_batch
def test_corrupt_study_is_listed_and_the_others_finish(tmp_path):
    root = make_studies(tmp_path / "in", 4, corrupt=(2,))
    seen = []
    summary = batch.run_batch(
        dummy_task.TASK, root, tmp_path / "out", "m1",
        progress=lambda done, total, outcome: seen.append((done, total, outcome.study)),
    )
    out = tmp_path / "out"
    assert [o.status for o in summary.outcomes] == ["ok", "ok", "failed", "ok"]
    assert seen == [(1, 4, "case000"), (2, 4, "case001"), (3, 4, "case002"), (4, 4, "case003")]
    assert sorted(p.name for p in out.iterdir()) == ["case000", "case001", "case003", "failures.csv", "summary.csv"]
    failures = read_csv(out / "failures.csv")
    assert [f["study"] for f in failures] == ["case002"]
    assert failures[0]["error"].startswith("InputError: ") and "case002" in failures[0]["error"]
    rows = read_csv(out / "summary.csv")
    assert [(r["study"], r["status"]) for r in rows] == [
        ("case000", "ok"), ("case001", "ok"), ("case002", "failed"), ("case003", "ok")
    ]
    # scalar results become columns (from the task's numbers), the list does not; paths relative to the study
    numbers = dummy_task.read_numbers(root / "case001")
    assert float(rows[1]["total"]) == sum(numbers) and rows[1]["n"] == str(len(numbers))
    assert rows[1]["model"] == "m1" and rows[1]["numbers_file"] == "numbers.txt" and "all" not in rows[1]
    assert rows[2]["total"] == ""
    saved = json.loads((out / "case001" / batch.RESULT_JSON).read_text())
    assert saved["all"] == numbers and saved["numbers_file"] == "numbers.txt"
    assert sorted(p.name for p in (out / "case001").iterdir()) == sorted((*dummy_task.OUTPUT_FILES, "result.json",
                                                                         "meddl_run.json"))
    run = json.loads((out / "case001" / batch.RUN_JSON).read_text())
    assert run == {"task": "dummy", "model": "m1", "options": {"scale": 1.0}}


def test_resume_skips_finished_studies_and_rebuilds_their_rows(tmp_path, monkeypatch):
    root = make_studies(tmp_path / "in", 3)
    out = tmp_path / "out"
    batch.run_batch(dummy_task.TASK, root, out, None)
    first = read_csv(out / "summary.csv")
    (out / "summary.csv").unlink()  # as if killed before the summary was written
    calls = []
    original = dummy_task.DummyTask.infer
    monkeypatch.setattr(dummy_task.DummyTask, "infer", lambda self, *a: calls.append(a[0].name) or original(self, *a))
    (out / "case001" / "numbers.txt").write_text("kept\n")  # proves case001 is not run again
    summary = batch.run_batch(dummy_task.TASK, root, out, None, resume=True)
    assert calls == [] and [o.status for o in summary.outcomes] == ["skipped"] * 3
    assert (out / "case001" / "numbers.txt").read_text() == "kept\n"
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in first] == without_seconds(out / "summary.csv")
    # without resume everything runs again and replaces the earlier outputs
    summary = batch.run_batch(dummy_task.TASK, root, out, None)
    assert calls == ["case000", "case001", "case002"] and (out / "case001" / "numbers.txt").read_text() != "kept\n"


def test_resume_runs_again_the_studies_of_another_model_or_options(tmp_path, monkeypatch):
    """An output folder never mixes models: resuming with another model, other task options, or over folders
    that record no run (an older MedDL) runs those studies again instead of keeping their old results."""
    import argparse

    root = make_studies(tmp_path / "in", 3)
    out = tmp_path / "out"
    batch.run_batch(dummy_task.TASK, root, out, "m1")
    calls = []
    original = dummy_task.DummyTask.infer
    monkeypatch.setattr(dummy_task.DummyTask, "infer", lambda self, *a: calls.append(a[0].name) or original(self, *a))
    assert [o.status for o in batch.run_batch(dummy_task.TASK, root, out, "m1", resume=True).outcomes] == [
        "skipped"] * 3 and calls == []
    (out / "case001" / batch.RUN_JSON).unlink()  # a folder that records no run
    summary = batch.run_batch(dummy_task.TASK, root, out, "m1", resume=True)
    assert [o.status for o in summary.outcomes] == ["skipped", "ok", "skipped"] and calls == ["case001"]
    summary = batch.run_batch(dummy_task.TASK, root, out, "m2", resume=True)
    assert [o.status for o in summary.outcomes] == ["ok"] * 3 and calls[1:] == ["case000", "case001", "case002"]
    assert {r["model"] for r in read_csv(out / "summary.csv")} == {"m2"}
    doubled = argparse.Namespace(scale=2.0)
    summary = batch.run_batch(dummy_task.TASK, root, out, "m2", resume=True, args=doubled)
    assert [o.status for o in summary.outcomes] == ["ok"] * 3
    numbers = dummy_task.read_numbers(root / "case002")
    assert float(read_csv(out / "summary.csv")[2]["total"]) == 2 * sum(numbers)
    assert [o.status for o in batch.run_batch(dummy_task.TASK, root, out, "m2", resume=True,
                                              args=doubled).outcomes] == ["skipped"] * 3


def test_run_identity_names_a_verified_model_by_its_weights():
    import argparse

    found = {"name": "glioma-x", "version": "1.1.0", "sha256": "ab" * 32, "path": "/somewhere", "n_tensors": 3}
    identity = batch.run_identity(dummy_task.TASK, "/somewhere", found, argparse.Namespace(scale=3, output="o"))
    assert identity == {"task": "dummy", "model": {"name": "glioma-x", "version": "1.1.0", "sha256": "ab" * 32},
                        "options": {"scale": 3}}


def test_rerun_failure_removes_stale_outputs(tmp_path):
    root = make_studies(tmp_path / "in", 2)
    out = tmp_path / "out"
    batch.run_batch(dummy_task.TASK, root, out, None)
    (root / "case001" / "input.txt").write_text("broken")
    summary = batch.run_batch(dummy_task.TASK, root, out, None)
    assert [o.status for o in summary.outcomes] == ["ok", "failed"]
    assert not (out / "case001").exists() and leftovers(out) == []


def test_resume_cleans_stale_partials_and_reruns_failed(tmp_path):
    root = make_studies(tmp_path / "in", 2, corrupt=(1,))
    out = tmp_path / "out"
    batch.run_batch(dummy_task.TASK, root, out, None)
    (out / ".case001.abc.partial").mkdir()
    (out / ".case001.abc.partial" / "numbers.txt").write_text("half")
    (out / ".summary.csv.1234.partial").write_text("half")
    make_studies(root, 2)  # repaired
    summary = batch.run_batch(dummy_task.TASK, root, out, None, resume=True)
    assert [o.status for o in summary.outcomes] == ["skipped", "ok"]
    assert leftovers(out) == [] and read_csv(out / "failures.csv") == []


def test_interrupt_leaves_no_partial_folder(tmp_path, monkeypatch):
    root = make_studies(tmp_path / "in", 3)
    out = tmp_path / "out"
    original = dummy_task.DummyTask.infer

    def infer(self, study, model, output, args):
        if study.name == "case001":
            (output / "numbers.txt").write_text("half")
            raise KeyboardInterrupt
        return original(self, study, model, output, args)

    monkeypatch.setattr(dummy_task.DummyTask, "infer", infer)
    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(dummy_task.TASK, root, out, None)
    assert sorted(p.name for p in out.iterdir()) == ["case000", "failures.csv", "summary.csv"]
    assert [r["study"] for r in read_csv(out / "summary.csv")] == ["case000"]


def test_cancel_stops_between_studies(tmp_path):
    root = make_studies(tmp_path / "in", 3)
    done = []
    summary = batch.run_batch(
        dummy_task.TASK, root, tmp_path / "out", None,
        progress=lambda *a: done.append(a), cancel=lambda: len(done) >= 1,
    )
    assert summary.cancelled and summary.total == 3 and [o.study for o in summary.outcomes] == ["case000"]
    assert [r["study"] for r in read_csv(tmp_path / "out" / "summary.csv")] == ["case000"]


def test_output_inside_input_is_not_a_study(tmp_path):
    root = make_studies(tmp_path / "in", 2)
    out = root / "results"
    batch.run_batch(dummy_task.TASK, root, out, None)
    summary = batch.run_batch(dummy_task.TASK, root, out, None, resume=True)
    assert [o.study for o in summary.outcomes] == ["case000", "case001"]
    with pytest.raises(InputError, match="must differ"):
        batch.run_batch(dummy_task.TASK, root, root, None)
    with pytest.raises(InputError, match="inside study"):
        batch.run_batch(dummy_task.TASK, root, root / "case000" / "out", None)


def test_input_errors(tmp_path):
    with pytest.raises(InputError, match="input folder not found"):
        batch.run_batch(dummy_task.TASK, tmp_path / "missing", tmp_path / "out", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no studies found"):
        batch.run_batch(dummy_task.TASK, tmp_path / "empty", tmp_path / "out", None)
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "a.nrrd").write_text("1")
    (clash / "a.nii.gz").write_text("2")
    with pytest.raises(InputError, match="same output name"):
        batch.run_batch(dummy_task.TASK, clash, tmp_path / "out", None)


def test_study_id(tmp_path):
    (tmp_path / "p1" / "flair").mkdir(parents=True)
    (tmp_path / "ct.nii.gz").write_text("")
    (tmp_path / "summary.csv").mkdir()
    assert batch.study_id(tmp_path / "ct.nii.gz", tmp_path) == "ct"
    assert batch.study_id(tmp_path / "p1" / "flair", tmp_path) == "p1__flair"
    assert batch.study_id(tmp_path / "p1", tmp_path) == "p1"
    with pytest.raises(InputError, match="reserved"):
        batch.study_id(tmp_path / "summary.csv", tmp_path)


def test_to_jsonable_relativises_paths(tmp_path):
    np = pytest.importorskip("numpy")
    value = {"p": tmp_path / "a" / "b.nrrd", "q": Path("/elsewhere/x"), "n": np.float32(0.5), "a": np.arange(2)}
    assert to_jsonable(value, base=tmp_path) == {"p": "a/b.nrrd", "q": "/elsewhere/x", "n": 0.5, "a": [0, 1]}
    with pytest.raises(TypeError, match="cannot write a object as JSON"):
        to_jsonable({"x": object()})


# ------------------------------------------------------------------------------------------------ SIGKILL + resume
def _child_env(delay: float) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTING), env.get("PYTHONPATH", "")]))
    env[tasks.EXTRA_TASKS_ENV] = "dummy_task:TASK"
    env["MEDDL_DUMMY_DELAY"] = str(delay)
    return env


def _batch_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    # as Slicer runs it: the script, "--", then the meddl command line
    return [sys.executable, str(SCRIPT), "--", "batch", "dummy", "--input", str(root), "--output", str(out), *extra]


def _files_below(out: Path) -> list[str]:
    """Files in the study folders of a batch output that is being written (os.walk skips folders renamed meanwhile)."""
    return [name for folder, _, names in os.walk(out) if Path(folder) != out for name in names]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_study_then_resume_gives_the_uninterrupted_outputs(tmp_path):
    root = make_studies(tmp_path / "in", 5, corrupt=(3,))
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    proc = subprocess.Popen(_batch_cmd(root, killed), env=_child_env(0.15), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:  # kill once a study is finished and the next one is half written
        while time.monotonic() < deadline and proc.poll() is None:
            written = _files_below(killed)
            per_study = len(dummy_task.OUTPUT_FILES) + 2  # + result.json, meddl_run.json
            if len(written) > per_study and len(written) % per_study:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"batch ended before it could be killed: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    for folder in (p for p in killed.iterdir() if p.is_dir() and not p.name.startswith(".")):  # none half written
        assert sorted(q.name for q in folder.iterdir()) == sorted((*dummy_task.OUTPUT_FILES, "result.json",
                                                                   "meddl_run.json")), folder
    assert leftovers(killed), "the kill should have hit a study in progress"
    finished = [r["study"] for r in read_csv(killed / "summary.csv")]
    assert finished and set(finished) <= {p.name for p in killed.iterdir()}

    resumed = subprocess.run(_batch_cmd(root, killed, "--resume"), env=_child_env(0), capture_output=True, text=True)
    assert resumed.returncode == 1, resumed.stderr  # case003 is corrupt
    assert "1 of 5 studies failed" in resumed.stderr
    batch.run_batch(dummy_task.TASK, root, reference, None)

    assert leftovers(killed) == []
    a, b = tree(killed), tree(reference)
    assert sorted(a) == sorted(b)
    for name in a:
        if name != "summary.csv":
            assert a[name] == b[name], name
    assert without_seconds(killed / "summary.csv") == without_seconds(reference / "summary.csv")
    assert [r["study"] for r in read_csv(killed / "failures.csv")] == ["case003"]


# ------------------------------------------------------------------------------------------------ meddl_batch.py
def _load_script():
    spec = importlib.util.spec_from_file_location("meddl_batch_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/x/meddl_batch.py", "--", "batch", "ich", "--input", "a"], ["batch", "ich", "--input", "a"]),
        (["/x/meddl_batch.py", "batch", "ich", "--resume"], ["batch", "ich", "--resume"]),
        (["/x/meddl_batch.py"], []),
        (["/x/meddl_batch.py", "--"], []),
        (["Slicer", "--no-splash", "--no-main-window", "--python-script", "/x/meddl_batch.py", "--", "demo"], ["demo"]),
        (["Slicer", "--python-script=/x/meddl_batch.py", "--testing", "demo", "-v"], ["demo", "-v"]),
        (["/x/meddl_batch.py", "--", "infer", "ich", "--", "--odd"], ["infer", "ich", "--", "--odd"]),
        (["/x/meddl_batch.py", "--verbose", "batch"], ["--verbose", "batch"]),
    ],
)
def test_parse_slicer_argv(argv, expected):
    assert _load_script().parse_slicer_argv(argv) == expected


def test_script_main_returns_meddl_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tasks._registered, "dummy", dummy_task.TASK)
    monkeypatch.setattr(sys, "path", list(sys.path))
    script = _load_script()
    assert script.main([str(SCRIPT), "--", "train", "nosuch", "--data", "d", "--out", "m"]) == 1
    assert "unknown task 'nosuch'" in capsys.readouterr().err
    assert str(SCRIPT.parent.parent) in sys.path  # the folder holding MedDLLib
    root = make_studies(tmp_path / "in", 2)
    status = script.main([str(SCRIPT), "--", "batch", "dummy", "--input", str(root), "--output", str(tmp_path / "o")])
    assert status == 0 and (tmp_path / "o" / "case001" / "result.json").is_file()


def test_script_as_a_program_exits_with_meddl_status(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--", "infer", "nosuch", "--input", "x", "--output", "y"],
                            env=_child_env(0), capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meddl infer: error: unknown task 'nosuch'; available tasks: ")
    assert "dummy" in lines[0]


def test_notes_and_tables_beside_the_studies_are_not_studies(tmp_path):
    """Sub-folders and volume files are studies; a labels CSV, notes and hidden entries are not (they would
    otherwise be reported as failed studies)."""
    from GliomaClassifierLib.cli import GliomaTask

    root = make_studies(tmp_path / "in", 2)
    for name in ("README.txt", "labels.csv", ".DS_Store"):
        (root / name).write_text("x\n")
    (root / "case009.nii.gz").write_bytes(b"")
    (root / "case010.nrrd").write_bytes(b"")
    assert [p.name for p in dummy_task.TASK.find_studies(root)] == ["case000", "case001", "case009.nii.gz",
                                                                    "case010.nrrd"]
    summary = batch.run_batch(dummy_task.TASK, root, tmp_path / "out", None)
    assert [o.study for o in summary.outcomes] == ["case000", "case001", "case009", "case010"]
    (root / "train_labels.csv").write_text("BraTS21ID,MGMT_value\n")
    assert "train_labels.csv" not in [p.name for p in GliomaTask().find_studies(root)]
