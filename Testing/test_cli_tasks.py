"""The task subcommands of ``meddl`` (MedDLLib.commands_tasks) with a dummy task: parsing, errors, outputs, demo."""

from __future__ import annotations

import csv
import json
import sys
import types

import pytest

import dummy_task
from MedDLLib import commands_dicom, commands_tasks, demo, tasks
from MedDLLib.cli import main


@pytest.fixture
def dummy(monkeypatch):
    monkeypatch.setitem(tasks._registered, "dummy", dummy_task.TASK)
    return dummy_task.TASK


@pytest.fixture
def studies(tmp_path, dummy):
    assert main(["phantom", "dummy", str(tmp_path / "data"), "--cases", "3", "--seed", "5"]) == 0
    return tmp_path / "data"


def test_phantom_writes_the_requested_cases(dummy, tmp_path, capsys):
    assert main(["phantom", "dummy", str(tmp_path / "p"), "--cases", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["case000", "case001"]
    assert "cases: 2" in capsys.readouterr().out


def test_unknown_task_lists_the_available_ones(dummy, capsys):
    assert main(["evaluate", "nosuch", "--data", "d", "--model", "m", "--out", "x.json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("meddl evaluate: error: unknown task 'nosuch'; available tasks: ")
    assert "dummy" in err[0]


def test_not_implemented_is_one_clear_line(studies, tmp_path, capsys):
    capsys.readouterr()
    assert main(["train", "dummy", "--data", str(studies), "--out", str(tmp_path / "m")]) == 1
    assert capsys.readouterr().err == "meddl train: error: task dummy does not support train yet\n"
    assert not (tmp_path / "m").exists()


def test_not_implemented_raised_inside_a_method(studies, tmp_path, monkeypatch, capsys):
    def evaluate(self, args):
        raise NotImplementedError("the seed recipe has no evaluation")

    monkeypatch.setattr(dummy_task.DummyTask, "evaluate", evaluate)
    capsys.readouterr()
    assert main(["evaluate", "dummy", "--data", str(studies), "--model", "m", "--out", str(tmp_path / "x.json")]) == 1
    assert capsys.readouterr().err == (
        "meddl evaluate: error: task dummy does not support evaluate yet (the seed recipe has no evaluation)\n"
    )


def test_usage_errors_exit_2(dummy, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train"])
    assert exc.value.code == 2 and "give a task: one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # --scale is an infer/batch option of the dummy task only
        main(["evaluate", "dummy", "--data", "d", "--model", "m", "--out", "x", "--scale", "2"])
    assert exc.value.code == 2 and "unrecognized arguments: --scale" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["phantom", "dummy", "out", "--cases", "0"])
    assert exc.value.code == 2


def test_help_shows_common_and_task_options(dummy, capsys):
    assert main(["batch", "-h"]) == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "--scale" not in out and "available tasks:" in out and "dummy" in out
    with pytest.raises(SystemExit) as exc:
        main(["batch", "dummy", "-h"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--resume" in out and "--scale" in out and "meddl batch dummy" in out


def test_infer_with_a_task_option(studies, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["infer", "dummy", "--input", str(studies / "case001"), "--output", str(out), "--scale", "3"]) == 0
    numbers = dummy_task.read_numbers(studies / "case001")
    result = json.loads((out / "result.json").read_text())
    assert result["total"] == pytest.approx(3 * sum(numbers)) and result["numbers_file"] == "numbers.txt"
    assert (out / "numbers.txt").is_file()
    assert f"total: {3 * sum(numbers)}" in capsys.readouterr().out


def test_infer_missing_input(dummy, tmp_path, capsys):
    assert main(["infer", "dummy", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 1
    assert "nope: no such study" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_infer_output_is_replaced_whole_or_left_as_it_was(studies, tmp_path, capsys):
    """A rerun replaces the earlier outputs whole (no stale file); a failed rerun leaves them as they were; a
    folder holding other files is refused, not mixed into."""
    out = tmp_path / "one"
    assert main(["infer", "dummy", "--input", str(studies / "case001"), "--output", str(out)]) == 0
    first = (out / "result.json").read_text()
    (out / "stale.nrrd").write_text("from an older run")
    (studies / "case002" / "input.txt").write_text("not numbers")
    assert main(["infer", "dummy", "--input", str(studies / "case002"), "--output", str(out)]) == 1
    assert (out / "result.json").read_text() == first and (out / "stale.nrrd").is_file()  # untouched
    assert main(["infer", "dummy", "--input", str(studies / "case000"), "--output", str(out)]) == 0
    assert not (out / "stale.nrrd").exists() and (out / "result.json").read_text() != first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main(["infer", "dummy", "--input", str(studies / "case000"), "--output", str(other)]) == 1
    assert "the folder holds other files" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_a_path_the_system_refuses_is_one_line(studies, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["infer", "dummy", "--input", str(studies / "case000"), "--output", str(blocker / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("meddl infer: error: ") and "file" in err[0]
    assert main(["batch", "dummy", "--input", str(studies), "--output", str(blocker)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not a folder" in err[0]


def test_undefined_metrics_are_written_as_null(studies, tmp_path, monkeypatch):
    monkeypatch.setattr(dummy_task.DummyTask, "evaluate", lambda self, args: {"auroc": float("nan"), "n": 3})
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "dummy", "--data", str(studies), "--model", "m", "--out", str(out)]) == 0
    assert "NaN" not in out.read_text()
    assert json.loads(out.read_text()) == {"auroc": None, "n": 3, "meddl_evaluate_task": "dummy"}


def test_a_task_that_needs_a_model_checks_it_once_before_any_study(studies, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(dummy_task.DummyTask, "needs_model", True)
    monkeypatch.setattr(dummy_task.DummyTask, "infer", lambda self, *a: calls.append(a) or {})
    out = tmp_path / "out"
    assert main(["batch", "dummy", "--input", str(studies), "--output", str(out)]) == 1
    assert "needs --model" in capsys.readouterr().err
    assert main(["batch", "dummy", "--input", str(studies), "--output", str(out), "--model", "nosuch"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuch" in err[0]
    assert main(["infer", "dummy", "--input", str(studies / "case000"), "--output", str(out), "--model", "nosuch"]) == 1
    assert calls == [] and not out.exists()  # no study was read, nothing written


def test_evaluate_writes_metrics_json(studies, tmp_path):
    out = tmp_path / "reports" / "metrics.json"
    assert main(["evaluate", "dummy", "--data", str(studies), "--model", "m7", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    expected_total = sum(sum(dummy_task.read_numbers(s)) for s in sorted(studies.iterdir()))
    assert metrics == {"studies": 3, "total": expected_total, "model": "m7", "meddl_evaluate_task": "dummy"}
    # an earlier metrics JSON may be replaced; any other file --out names is refused and left as it was
    assert main(["evaluate", "dummy", "--data", str(studies), "--model", "m7", "--out", str(out)]) == 0
    other = studies / "case000" / "input.txt"
    before = other.read_bytes()
    assert main(["evaluate", "dummy", "--data", str(studies), "--model", "m7", "--out", str(other)]) == 1
    assert other.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]  # no temporary file left


def test_batch_command_reports_failures(studies, tmp_path, capsys):
    (studies / "case001" / "input.txt").write_text("x y z")
    out = tmp_path / "out"
    assert main(["batch", "dummy", "--input", str(studies), "--output", str(out), "--scale", "2"]) == 1
    captured = capsys.readouterr()
    assert "3 studies: 2 done, 0 already done, 1 failed" in captured.out
    assert "1 of 3 studies failed" in captured.err and "case001: failed: InputError" in captured.err
    with open(out / "failures.csv", newline="") as f:
        assert [row["study"] for row in csv.DictReader(f)] == ["case001"]
    total = json.loads((out / "case000" / "result.json").read_text())["total"]
    assert total == pytest.approx(2 * sum(dummy_task.read_numbers(studies / "case000")))
    (studies / "case001" / "input.txt").write_text("1 2")
    assert main(["batch", "dummy", "--input", str(studies), "--output", str(out), "--resume", "--scale", "2"]) == 0
    assert "3 studies: 1 done, 2 already done, 0 failed" in capsys.readouterr().out
    # resuming with other task options runs every study again (no mix of --scale 2 and --scale 1 results)
    assert main(["batch", "dummy", "--input", str(studies), "--output", str(out), "--resume"]) == 0
    assert "3 studies: 3 done, 0 already done, 0 failed" in capsys.readouterr().out
    assert json.loads((out / "case000" / "result.json").read_text())["total"] == pytest.approx(total / 2)


def test_bench_task_and_dicom(dummy, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "dummy", "--device", "cuda", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"device": "cuda", "force_cpu": False}
    calls = []
    fake = types.ModuleType("MedDLLib.bench")
    fake.bench_dicom_read = lambda folder: calls.append(folder) or {"files": 3, "seconds": 0.25}
    monkeypatch.setitem(sys.modules, "MedDLLib.bench", fake)
    assert main(["bench", "dicom", "--input", str(tmp_path), "--out", str(out)]) == 0
    assert calls == [tmp_path] and json.loads(out.read_text()) == {"files": 3, "seconds": 0.25}
    assert "files: 3" in capsys.readouterr().out
    assert main(["bench", "dicom", "--input", str(tmp_path / "missing")]) == 1


def test_demo_reports_every_task_and_survives_a_failing_one(dummy, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tasks._registered, "broken", dummy_task.BROKEN)
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--tasks", "broken", "dummy", "--quick"]) == 1
    assert "failed for broken" in capsys.readouterr().err
    page = (out / "index.html").read_text()
    assert '<img src="dummy/figure.png"' in page and 'href="dummy/metrics.json"' in page
    assert "auroc.value" in page and "0.75" in page  # nested metrics flattened into the table
    assert "RuntimeError: boom in the demo" in page and 'href="broken/error.txt"' in page
    assert "model_card: Research use only. Trained on synthetic phantoms only;" in page  # long text: shown, not a path
    assert "boom in the demo" in (out / "broken" / "error.txt").read_text()
    index = {e["task"]: e for e in json.loads((out / "index.json").read_text())}
    assert index["dummy"]["status"] == "ok" and index["dummy"]["result"]["quick"] is True
    assert index["broken"]["status"] == "failed"
    assert (out / "dummy" / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["demo", "--output", str(tmp_path / "demo2"), "--tasks", "dummy"]) == 0
    assert "broken" not in (tmp_path / "demo2" / "index.html").read_text()


def test_demo_task_without_demo_and_no_tasks(tmp_path, monkeypatch, capsys):
    class NoDemo(tasks.Task):
        name = "nodemo"

    monkeypatch.setitem(tasks._registered, "nodemo", NoDemo())
    assert main(["demo", "--output", str(tmp_path / "d"), "--tasks", "nodemo"]) == 1
    assert "task nodemo does not support demo yet" in (tmp_path / "d" / "index.html").read_text()
    # With no task installed the demo still runs its DICOM step (synthetic series when none is given or found).
    monkeypatch.setattr(demo, "available_tasks", lambda: {})
    monkeypatch.setattr(commands_dicom, "REAL_CHEST_CT", tmp_path / "absent")
    assert main(["demo", "--output", str(tmp_path / "e")]) == 0
    index = json.loads((tmp_path / "e" / "index.json").read_text())
    assert [(e["task"], e["status"]) for e in index] == [("dicom", "ok")]
    assert (tmp_path / "e" / "dicom" / "ct.nrrd").stat().st_size > 0
    assert (tmp_path / "e" / "dicom" / "ct_middle_slice.png").stat().st_size > 0


def test_extra_tasks_environment_variable(monkeypatch):
    monkeypatch.setenv(tasks.EXTRA_TASKS_ENV, "dummy_task:TASK, dummy_task:BrokenDemoTask")
    found = tasks.available_tasks()
    assert found["dummy"] is dummy_task.TASK and isinstance(found["broken"], dummy_task.BrokenDemoTask)
    monkeypatch.setenv(tasks.EXTRA_TASKS_ENV, "dummy_task:NOPE")
    with pytest.raises(tasks.InputError, match="MEDDL_EXTRA_TASKS: cannot load 'dummy_task:NOPE'"):
        tasks.available_tasks()
    monkeypatch.setenv(tasks.EXTRA_TASKS_ENV, "dummy_task:read_numbers")
    with pytest.raises(tasks.InputError, match="not a named meddl Task"):
        tasks.available_tasks()


def test_supports():
    assert commands_tasks.supports(dummy_task.TASK, "infer")
    assert not commands_tasks.supports(dummy_task.TASK, "train")


@pytest.mark.parametrize("argv", [
    ["train", "glioma", "--data", "d", "--out", "m", "--size", "0"],
    ["train", "glioma", "--data", "d", "--out", "m", "--depth", "-1"],
    ["bench", "glioma", "--threads", "0"],
    ["train", "ich", "--data", "d", "--out", "m", "--size", "0"],
    ["train", "lgg", "--data", "d", "--out", "m", "--width", "0"],
    ["bench", "lgg", "--slices", "0"],
    ["train", "lung", "--data", "d", "--out", "m", "--batch-size", "0"],
])
def test_sizes_and_counts_below_one_are_usage_errors(argv, capsys):
    """The real tasks' train and bench options (sizes, slices, widths, batch sizes, threads) refuse 0 and
    negatives at parse time, before any data is read."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "expected an integer >= 1" in capsys.readouterr().err
