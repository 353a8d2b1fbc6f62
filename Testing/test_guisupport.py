"""Tests of MedDLLib.guisupport: the Qt-free half of the widgets (dependencies, model cards, child protocol)."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from MedDLLib import guisupport as gs
from MedDLLib.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "MedDLExtension" / "Resources" / "requirements.txt"
LIB_PARENT = ROOT / "MedDLExtension"  # the folder holding the MedDLLib package


def versions(**installed):
    """A ``version_of`` lookup for a made-up environment (names as pip spells them, '-' for '_')."""
    table = {k.replace("_", "-"): v for k, v in installed.items()}
    return lambda name: table.get(name.lower())


# ------------------------------------------------------------------------------------------------ dependencies


def test_read_requirements_parses_the_shipped_file():
    names = {r.name for r in gs.read_requirements(REQUIREMENTS)}
    assert {"monai", "pydicom", "lifelines", "scikit-learn", "pylibjpeg"} <= names
    assert "torch" not in names


def test_read_requirements_skips_comments_and_options_and_names_bad_lines(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\n\n--index-url https://example.invalid\nmonai>=1.4  # trailing\n-r other.txt\n")
    assert [str(r) for r in gs.read_requirements(path)] == ["monai>=1.4"]
    path.write_text("monai>=1.4\nnot a requirement!!\n")
    with pytest.raises(InputError, match=r"requirements.txt:2: 'not a requirement!!'"):
        gs.read_requirements(path)
    with pytest.raises(InputError, match="cannot read"):
        gs.read_requirements(tmp_path / "absent.txt")


def test_missing_requirements_compares_versions():
    lookup = versions(monai="1.3.2", pydicom="3.0.1", lifelines="0.30.0rc1")
    reqs = ["monai>=1.4", "pydicom>=3.0", "lifelines>=0.28", "tqdm>=4.66", 'pywin32>=300; sys_platform == "win32"']
    missing = [str(r) for r in gs.missing_requirements(reqs, lookup)]
    if sys.platform == "win32":  # pragma: no cover - the marker applies there
        assert missing == ["monai>=1.4", "tqdm>=4.66", 'pywin32>=300; sys_platform == "win32"']
    else:
        assert missing == ["monai>=1.4", "tqdm>=4.66"]  # too old, absent; the pre-release counts


def test_missing_requirements_with_an_unparsable_installed_version():
    lookup = versions(monai="not-a-version")
    assert [str(r) for r in gs.missing_requirements(["monai>=1.4", "monai"], lookup)] == ["monai>=1.4"]


def test_missing_requirements_in_this_environment():
    assert gs.missing_requirements(["packaging>=20", "pytest"]) == []
    assert [r.name for r in gs.missing_requirements(["meddl-no-such-distribution>=1"])] == [
        "meddl-no-such-distribution"
    ]
    # the development environment was installed from pyproject.toml, whose ranges requirements.txt repeats
    assert gs.dependency_plan(REQUIREMENTS).satisfied


def test_dependency_plan_says_what_to_install(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("monai>=1.4\npydicom>=3.0\n")
    plan = gs.dependency_plan(path, versions(monai="1.3.0", pydicom="3.0.1"))
    assert plan.torch == gs.TORCH_REQUIREMENT and plan.packages == ("monai>=1.4",)
    assert not plan.satisfied
    assert plan.torch_version_requirement() == ">=2.2"
    text = plan.describe()
    assert "PyTorch (torch>=2.2)" in text and "PyTorch extension" in text and "monai>=1.4" in text
    assert "pydicom" not in text

    plan = gs.dependency_plan(path, versions(torch="2.13.0+cpu", monai="1.5.0", pydicom="3.0.1"))
    assert plan.satisfied and plan.torch is None and plan.packages == () and plan.describe() == ""
    assert gs.dependency_plan(path, versions(torch="2.1.0", monai="1.5.0", pydicom="3.0.1")).torch  # too old

    path.write_text("torch>=2.2\nmonai\n")
    with pytest.raises(InputError, match="PyTorch extension"):
        gs.dependency_plan(path, versions())


def test_torch_requirement_matches_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert gs.TORCH_REQUIREMENT in [d.replace(" ", "") for d in deps]


# ------------------------------------------------------------------------------------------------ model cards

FULL_METADATA = {
    "task": "ich",
    "version": "1.2.0",
    "recipe": "improved",
    "network": {"name": "DenseNet121", "args": {"spatial_dims": 2, "in_channels": 3, "out_channels": 6}},
    "input": {
        "channels": ["brain", "subdural", "bone"],
        "windows": [{"name": "brain", "center": 40, "width": 80}, {"name": "subdural", "center": 80, "width": 200}],
        "spacing_mm": [0.5, 0.5, 5.0],
        "size": [256, 256],
    },
    "labels": ["any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"],
    "training_data": {"synthetic": True, "n_studies": 1200, "dataset": "meddl phantom ich"},
    "metrics": {
        "auroc_any": {"value": 0.9123, "ci": [0.88, 0.94], "n": 200},
        "weighted_log_loss": 0.0712,
        "auroc": {"epidural": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}, "subdural": 0.85},
        "note": "not a number",
    },
    "sha256": "ab" * 32,
    "versions": {"torch": "2.13.0", "monai": "1.4.0"},
    "created": "2025-01-01T00:00:00Z",
}


def test_model_card_shows_training_data_metrics_and_research_use():
    card = gs.format_model_card(FULL_METADATA, name="ich-improved")
    lines = card.splitlines()
    assert lines[0] == "ich-improved 1.2.0 (improved, synthetic phantoms)"
    assert lines[1] == gs.RESEARCH_USE_ONLY
    assert "Trained on synthetic phantoms only: its output on real scans is not meaningful." in lines
    assert "Trained on: synthetic phantoms, meddl phantom ich, 1,200 studies" in lines
    assert "Network: DenseNet121 (spatial_dims=2, in_channels=3, out_channels=6)" in lines
    assert (
        "Input: 3 channels (brain, subdural, bone); windows brain 40/80, subdural 80/200; "
        "spacing 0.5 x 0.5 x 5 mm; size 256 x 256 voxels"
    ) in lines
    assert "Outputs: any, epidural, intraparenchymal, intraventricular, subarachnoid, subdural" in lines
    assert "  auroc_any: 0.912 (95% CI 0.880-0.940), n=200" in lines
    assert "  weighted_log_loss: 0.071" in lines
    assert "  auroc / epidural: 0.800 (95% CI 0.700-0.900)" in lines
    assert "  auroc / subdural: 0.850" in lines
    assert not any("note" in line for line in lines)  # not a metric value
    assert f"Weights SHA-256: {'ab' * 32} (checked before every use)" in lines
    assert "Built with: torch 2.13.0, monai 1.4.0" in lines
    assert not any(line.startswith("Caveat:") for line in lines)  # this package states none


def test_model_card_shows_the_packages_own_caveat_near_the_top():
    meta = {**FULL_METADATA, "output": {"labels": ["any"], "caveat": "  Near chance on external data.  "}}
    lines = gs.format_model_card(meta).splitlines()
    assert lines.index("Caveat: Near chance on external data.") < lines.index("")  # with the warnings, not below
    meta["output"]["caveat"] = ["not", "text"]
    assert "Caveat" not in gs.format_model_card(meta)


def test_model_card_for_real_data_has_no_synthetic_warning():
    meta = {**FULL_METADATA, "training_data": {"kind": "real", "n_studies": 480, "dataset": "RSNA 2019"}}
    card = gs.format_model_card(meta)
    assert card.splitlines()[0] == "ich 1.2.0 (improved, real data)"
    assert "Trained on: real studies, RSNA 2019, 480 studies" in card
    assert "synthetic" not in card
    assert gs.RESEARCH_USE_ONLY in card


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        {},
        [],
        "text",
        {"task": 3, "version": None, "network": ["x"], "input": "CT", "labels": {"1": "tumour"}},
        {"metrics": [0.9], "training_data": 12, "sha256": 5, "versions": "torch", "input": {"spacing": "iso"}},
        {"metrics": {"auroc": float("nan"), "dice": {"value": "high"}, "c": {"value": True}}},
        {"input": {"channels": 1, "windows": [None, {"center": "a"}], "size": [None]}, "training_data": "phantoms"},
    ],
)
def test_model_card_tolerates_missing_and_odd_keys(metadata):
    card = gs.format_model_card(metadata)
    assert card.splitlines()[1] == gs.RESEARCH_USE_ONLY
    assert "nan" not in card.lower().replace("meaningful", "")


def test_model_card_says_when_there_is_no_metadata():
    assert "No model description" in gs.format_model_card(None)
    assert "Metrics: none recorded" in gs.format_model_card({"task": "lgg"})


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.5, "0.500"),
        (3, "3"),
        (1234.5, "1234"),
        ({"estimate": 0.7, "lower": 0.6, "upper": 0.8, "ci_level": 0.9}, "0.700 (90% CI 0.600-0.800)"),
        ({"mean": 0.65, "ci95": [0.6, 0.7]}, "0.650 (95% CI 0.600-0.700)"),
        ({"value": 0.65, "ci": [0.6]}, "0.650"),
        ({"value": None}, None),
        (float("inf"), None),
        (True, None),
    ],
)
def test_format_metric(value, text):
    assert gs.format_metric(value) == text


# ------------------------------------------------------------------------------------------------ protocol


def test_protocol_round_trip():
    line = gs.encode_message("progress", "running", progress=0.4)
    assert "\n" not in line and json.loads(line) == {
        "meddl": 1,
        "kind": "progress",
        "progress": 0.4,
        "message": "running",
    }
    assert gs.decode_line(line + "\n") == gs.Message("progress", "running", progress=0.4)
    assert gs.decode_line(gs.encode_message("progress", progress=7)).progress == 1.0  # clamped
    assert gs.decode_line(gs.encode_message("progress", progress=-1)).progress == 0.0
    result = gs.decode_line(gs.encode_message("result", data={"probability": 0.83, "files": ["a.nrrd"]}))
    assert result.kind == "result" and result.data == {"probability": 0.83, "files": ["a.nrrd"]}
    assert gs.decode_line(gs.encode_message("error", "bad\nthing")).message == "bad\nthing"
    with pytest.raises(ValueError, match="unknown message kind"):
        gs.encode_message("done")
    with pytest.raises(ValueError, match="finite"):
        gs.encode_message("progress", progress=math.nan)


@pytest.mark.parametrize(
    "line",
    [
        '{"a": 1}',
        '{"meddl": 2, "kind": "log"}',
        '{"meddl": 1, "kind": "other"}',
        "{not json}",
        "plain text",
        '{"meddl": 1, "kind": "progress", "progress": "half"}',
    ],
)
def test_other_lines_are_log_text(line):
    assert gs.decode_line(line) == gs.Message("log", line)


def test_protocol_lines_count_only_on_stdout():
    line = gs.encode_message("error", "x")
    assert gs.decode_line(line, stream="stderr") == gs.Message("log", line, stream="stderr")


def test_reporter_from_environment():
    assert gs.reporter_from_environment({}) is None
    out = io.StringIO()
    reporter = gs.reporter_from_environment({gs.PROTOCOL_ENV: gs.PROTOCOL_VALUE}, stream=out)
    reporter(0.5, "half")
    reporter.log("note")
    reporter.result({"n": 1})
    reporter.error("broken")
    kinds = [gs.decode_line(line) for line in out.getvalue().splitlines()]
    assert [(m.kind, m.message, m.progress, m.data) for m in kinds] == [
        ("progress", "half", 0.5, None),
        ("log", "note", None, None),
        ("result", "", None, {"n": 1}),
        ("error", "broken", None, None),
    ]


def test_line_splitter_handles_split_chunks_utf8_and_carriage_returns():
    splitter = gs.LineSplitter()
    text = "héllo wörld\nsecond\r\n 10%|#\r 20%|##\rlast"
    data = text.encode("utf-8")
    lines = []
    for i in range(len(data)):  # one byte at a time: splits characters and "\r\n"
        lines += splitter.feed(data[i : i + 1])
    lines += splitter.flush()
    assert lines == [("héllo wörld", False), ("second", False), (" 10%|#", True), (" 20%|##", True), ("last", True)]
    assert gs.LineSplitter().feed("a\rb\n") == [("a", True), ("b", False)]  # a bar's final state is a line
    assert gs.LineSplitter().flush() == []


def test_run_monitor_tracks_state_and_outcomes():
    monitor = gs.RunMonitor()
    assert monitor.progress is None  # busy bar until the first progress message
    events = monitor.feed((gs.encode_message("progress", "loading", progress=0.25) + "\nplain out\n").encode())
    events += monitor.feed(b"warning: slow\n\r  5%|#  \r 10%|##", stream="stderr")  # tqdm style
    events += monitor.feed((gs.encode_message("result", data={"ok": True}) + "\n").encode())
    assert [(e.kind, e.stream) for e in events] == [
        ("progress", "stdout"),
        ("log", "stdout"),
        ("log", "stderr"),
        ("status", "stderr"),
        ("result", "stdout"),
    ]
    assert monitor.progress == 0.25 and monitor.message == "5%|#" and monitor.result == {"ok": True}
    assert [(e.kind, e.message) for e in monitor.flush()] == [("status", "10%|##")]  # the rest, at the end
    outcome = monitor.finish(0)
    assert outcome.succeeded and outcome.result == {"ok": True}

    assert monitor.finish(0, cancelled=True).status == "cancelled"
    failed = monitor.finish(1)
    assert failed.status == "failed" and failed.message == "warning: slow"  # the last log line explains

    monitor.feed((gs.encode_message("error", "series.dcm: missing PixelData") + "\n").encode())
    assert monitor.finish(1).message == "series.dcm: missing PixelData"
    assert monitor.finish(0).status == "failed"  # an error message fails the run even with status 0
    assert monitor.finish(-9).message.startswith("The background process was killed by signal 9")
    assert gs.RunMonitor().finish(3).message == "The background process exited with status 3."
    assert gs.RunMonitor().finish(None, crashed=True).message == "The background process crashed."


def test_child_environment_adds_paths_tasks_and_protocol():
    base = {"PYTHONPATH": os.pathsep.join(["/a", "/b"]), "MEDDL_EXTRA_TASKS": "x:T", "HOME": "/home/u"}
    env = gs.child_environment(base, ["/lib", "/a"], tasks=["ICHDetectorLib.cli:TASK"])
    assert env["PYTHONPATH"].split(os.pathsep) == ["/lib", "/a", "/b"]
    assert env["MEDDL_EXTRA_TASKS"] == "ICHDetectorLib.cli:TASK,x:T"
    assert env[gs.PROTOCOL_ENV] == gs.PROTOCOL_VALUE and env["PYTHONUNBUFFERED"] == "1" and env["HOME"] == "/home/u"
    assert base["PYTHONPATH"] == os.pathsep.join(["/a", "/b"])  # the parent's environment is not modified


def test_python_executable_prefers_pythonslicer():
    assert gs.python_executable(lambda name: "/opt/Slicer/bin/PythonSlicer") == "/opt/Slicer/bin/PythonSlicer"
    assert gs.python_executable(lambda name: None) == sys.executable


# ------------------------------------------------------------------------------------------------ real children


def _child(tmp_path, body: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(
        "import sys, time\nfrom MedDLLib.guisupport import reporter_from_environment\n"
        "report = reporter_from_environment()\n" + textwrap.dedent(body)
    )
    return [sys.executable, str(script)]


def _env():
    return gs.child_environment(os.environ, [LIB_PARENT])


def test_blocking_run_reports_progress_log_and_result(tmp_path):
    command = _child(
        tmp_path,
        """
        report(0.25, "reading")
        print("plain output", flush=True)
        print("a warning", file=sys.stderr, flush=True)
        report(1.0, "done")
        report.result({"probability": 0.83})
    """,
    )
    seen = []
    outcome = gs.run_child_blocking(command, _env(), on_message=seen.append)
    assert outcome.status == "succeeded" and outcome.exit_code == 0 and outcome.result == {"probability": 0.83}
    stdout = [(m.kind, m.message, m.progress) for m in seen if m.stream == "stdout"]
    assert stdout == [
        ("progress", "reading", 0.25),
        ("log", "plain output", None),
        ("progress", "done", 1.0),
        ("result", "", None),
    ]
    assert [(m.kind, m.message) for m in seen if m.stream == "stderr"] == [("log", "a warning")]


def test_blocking_run_reports_the_childs_error(tmp_path):
    command = _child(
        tmp_path,
        """
        report(0.1, "reading")
        report.error("scan.dcm: missing tag PixelData (7FE0,0010)")
        sys.exit(1)
    """,
    )
    outcome = gs.run_child_blocking(command, _env())
    assert outcome.status == "failed" and outcome.exit_code == 1
    assert outcome.message == "scan.dcm: missing tag PixelData (7FE0,0010)"


def test_blocking_run_can_be_cancelled(tmp_path):
    command = _child(
        tmp_path,
        """
        for i in range(600):
            report(i / 600, f"step {i}")
            time.sleep(0.05)
    """,
    )
    progress = []
    start = time.monotonic()
    outcome = gs.run_child_blocking(
        command, _env(), on_message=lambda m: progress.append(m.progress), cancel=lambda: len(progress) >= 2
    )
    assert outcome.status == "cancelled" and outcome.message == "Cancelled."
    assert outcome.exit_code != 0  # terminated, not finished
    assert time.monotonic() - start < 20  # far less than the 30 s the child would run


def test_blocking_run_of_a_missing_program():
    outcome = gs.run_child_blocking(["/nonexistent/PythonSlicer", "-c", "pass"])
    assert outcome.status == "failed" and "Cannot start /nonexistent/PythonSlicer" in outcome.message


def test_child_command_runs_meddl(tmp_path):
    # the real command line the widgets use: MedDLLib found through PYTHONPATH, meddl's one-line error returned
    env = gs.child_environment({k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, [LIB_PARENT])
    command = gs.child_command(
        sys.executable, ["infer", "no-such-task", "--input", str(tmp_path), "--output", str(tmp_path / "out")]
    )
    outcome = gs.run_child_blocking(command, env, cwd=tmp_path)
    assert outcome.status == "failed" and outcome.exit_code == 1
    assert "unknown task 'no-such-task'" in outcome.message


def test_child_process_is_polled_without_blocking(tmp_path):
    # the GUI pattern: a timer calls poll() with no timeout; it never waits for the child
    child = gs.ChildProcess(
        _child(
            tmp_path,
            """
        time.sleep(0.5)
        report(0.5, "half")
        report.result({"done": True})
    """,
        ),
        _env(),
    )
    start = time.monotonic()
    assert child.poll() == [] and child.running
    assert time.monotonic() - start < 0.2
    messages = []
    while child.running:
        messages += child.poll()
        time.sleep(0.02)
    assert [m.kind for m in messages] == ["progress", "result"]
    assert child.outcome.succeeded and child.monitor.progress == 0.5 and child.poll() == []


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        return "\nState:\tZ" not in status.read_text()  # a zombie has ended
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
def test_cancel_stops_the_childs_own_children(tmp_path):
    # PythonSlicer is a launcher that runs the real Python as its child: cancelling must stop both
    command = _child(
        tmp_path,
        """
        import subprocess
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        report.log(f"grandchild {grandchild.pid}")
        grandchild.wait()
    """,
    )
    pids = []

    def on_message(message):
        if message.kind == "log" and message.message.startswith("grandchild "):
            pids.append(int(message.message.split()[1]))

    start = time.monotonic()
    outcome = gs.run_child_blocking(command, _env(), on_message=on_message, cancel=lambda: bool(pids))
    assert outcome.status == "cancelled" and pids
    assert time.monotonic() - start < 20  # a surviving grandchild would hold the pipes open for 60 s
    deadline = time.monotonic() + 5
    while _alive(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pids[0])


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM is POSIX")
def test_cancel_kills_a_child_that_ignores_termination(tmp_path):
    command = _child(
        tmp_path,
        """
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        report(0.0, "stubborn")
        time.sleep(60)
    """,
    )
    started = []
    start = time.monotonic()
    outcome = gs.run_child_blocking(
        command, _env(), on_message=started.append, cancel=lambda: bool(started), terminate_timeout_s=0.5
    )
    assert outcome.status == "cancelled" and outcome.exit_code == -9
    assert time.monotonic() - start < 20


def test_model_choices_filter_by_task_and_list_broken_packages():
    entries = [
        {"name": "lgg-seed", "task": "lgg", "version": "1.0.0", "recipe": "seed", "training_data": {"kind": "real"}},
        {
            "name": "ich-b",
            "task": "ich",
            "version": "2.0.0",
            "recipe": "improved",
            "training_data": {"kind": "synthetic", "n_studies": 40},
        },
        {"name": "ich-a", "task": "ich", "version": "1.0.0", "recipe": "seed", "training_data": {}},
        {"name": "zz-broken", "path": "/x", "error": "configs/metadata.json is missing"},
    ]
    choices = gs.model_choices(entries, task="ich")
    assert [(c.name, c.title, c.usable) for c in choices] == [
        ("ich-a", "ich-a 1.0.0 (seed)", True),
        ("ich-b", "ich-b 2.0.0 (improved, synthetic phantoms)", True),
        ("zz-broken", "zz-broken (broken)", False),
    ]
    assert choices[-1].problem == "configs/metadata.json is missing"
    assert [c.name for c in gs.model_choices(entries)] == ["ich-a", "ich-b", "lgg-seed", "zz-broken"]


def test_a_saved_model_choice_missing_from_the_cache_is_kept_and_shown_missing():
    """Reopening a scene saved with a model that is not in this cache keeps the choice (was: silently cleared)."""
    entries = [{"name": "ich-a", "task": "ich", "version": "1.0.0", "recipe": "seed", "training_data": {}}]
    choices = gs.model_choices(entries, task="ich", keep="ich-from-colleague")
    assert [(c.name, c.title, c.usable) for c in choices] == [
        ("ich-a", "ich-a 1.0.0 (seed)", True), ("ich-from-colleague", "ich-from-colleague (missing)", False)]
    assert choices[-1].problem == gs.MISSING_MODEL
    assert gs.model_choices(entries, task="ich", keep="ich-a") == gs.model_choices(entries, task="ich")


def _tiny_package(folder: Path) -> Path:
    """A real model package (``MedDLLib.models.save_package``) of a tiny registered network, named ich-seed."""
    torch = pytest.importorskip("torch")
    from MedDLLib import models

    class Tiny(torch.nn.Module):
        def __init__(self, in_channels: int = 3, out_channels: int = 2):
            super().__init__()
            self.fc = torch.nn.Linear(in_channels, out_channels)

    models.register_network("test.guisupport.tiny", Tiny)
    metadata = {
        "task": "ich",
        "version": "0.1.0",
        "recipe": "seed",
        "network": {"name": "test.guisupport.tiny", "args": {"in_channels": 3, "out_channels": 2}},
        "input": {
            "channels": ["brain", "subdural", "bone"],
            "windows": ["brain", [80, 200], {"center": 600, "width": 2800}],
            "spacing_mm": [1.0, 1.0, 5.0],
        },
        "output": {"labels": ["any", "subdural"]},
        "training_data": {"kind": "synthetic", "n_studies": 24, "description": "meddl phantom ich --cases 24"},
        "metrics": {"auroc": {"value": 0.875, "ci95": [0.7, 0.98]}, "weighted_log_loss": 0.3},
    }
    return models.save_package(folder / "ich-seed", Tiny(), metadata)


def test_model_card_of_a_real_package(tmp_path):
    # the metadata exactly as MedDLLib.models writes and lists it
    from MedDLLib import models

    package = _tiny_package(tmp_path)
    imported = models.import_model(package)
    card = gs.format_model_card(models.read_metadata(imported.name), name=imported.name)
    lines = card.splitlines()
    assert lines[:3] == [
        "ich-seed 0.1.0 (seed, synthetic phantoms)",
        gs.RESEARCH_USE_ONLY,
        "Trained on synthetic phantoms only: its output on real scans is not meaningful.",
    ]
    assert "Trained on: synthetic phantoms, 24 studies, meddl phantom ich --cases 24" in lines
    assert "Input: 3 channels (brain, subdural, bone); windows brain, 80/200, 600/2800; spacing 1 x 1 x 5 mm" in lines
    assert "Outputs: any, subdural" in lines
    assert "  auroc: 0.875 (95% CI 0.700-0.980)" in lines
    assert any(line.startswith("Weights SHA-256: ") and len(line.split()[2]) == 64 for line in lines)
    assert any(line.startswith("Built with: torch ") for line in lines)
    [choice] = gs.model_choices(models.list_models(), task="ich")
    assert (choice.name, choice.title, choice.usable) == ("ich-seed", "ich-seed 0.1.0 (seed, synthetic phantoms)", True)


def test_import_source_accepts_a_zip_or_a_packages_metadata(tmp_path):
    assert gs.import_source(tmp_path / "ich.zip") == tmp_path / "ich.zip"
    assert gs.import_source(tmp_path / "ich-seed" / "configs" / "metadata.json") == tmp_path / "ich-seed"
    assert gs.import_source(tmp_path / "metadata.json") == tmp_path / "metadata.json"  # not inside a package
    assert "*.zip" in gs.IMPORT_FILE_FILTER and "metadata.json" in gs.IMPORT_FILE_FILTER


# ------------------------------------------------------------------------------------------------ MedDLWidgets
# The Qt side cannot run here (no Qt). These tests drive its Python logic with stand-in widgets and real child
# processes: they catch wrong attribute names and state handling (Apply <-> Cancel, progress, log, outcome),
# not Qt behaviour, which only Slicer can show.


class _Widget:
    """Stand-in for a Qt widget: properties are attributes; calls are recorded."""

    def __init__(self, **properties):
        self.__dict__.update(properties)
        self.connections = {}
        self.lines = []
        self.range = (0, 100)
        self.value = 0
        self.items = []
        self.currentIndex = -1

    def connect(self, signal, slot):
        self.connections[signal] = slot

    # QProgressBar
    def setRange(self, low, high):
        self.range = (low, high)

    def setValue(self, value):
        self.value = value

    # QPlainTextEdit
    def setReadOnly(self, value):
        self.readOnly = value

    def setMaximumBlockCount(self, value):
        self.maximumBlockCount = value

    def appendPlainText(self, text):
        self.lines.append(text)

    def setPlainText(self, text):
        self.plainText = text

    # QComboBox
    def blockSignals(self, block):
        return False

    def clear(self):
        self.items = []
        self.currentIndex = -1

    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def setCurrentIndex(self, index):
        self.currentIndex = index


class _Timer:
    def __init__(self):
        self.active = False

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, slot):
        self.slot = slot

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


@pytest.fixture
def widgets_package(monkeypatch):
    """Import MedDLWidgets against stand-in ``qt`` and ``slicer.i18n`` modules and a stand-in ``slicer.app``."""
    import types

    import slicer
    import slicer.util

    qt = types.ModuleType("qt")
    qt.QTimer = _Timer
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    app = types.SimpleNamespace(processEvents=lambda: None, testingEnabled=lambda: False)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "i18n", i18n, raising=False)
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: dict(os.environ))
    monkeypatch.syspath_prepend(str(LIB_PARENT))
    before = set(sys.modules)
    import MedDLWidgets

    yield MedDLWidgets
    for name in set(sys.modules) - before:
        if name.startswith("MedDLWidgets"):
            del sys.modules[name]


def _runner(widgets_package):
    ui = types_ns(
        applyButton=_Widget(text="Apply", toolTip="Run", enabled=True),
        progressBar=_Widget(),
        logView=_Widget(),
        statusLabel=_Widget(text=""),
    )
    runner = widgets_package.BackgroundRunner(ui.applyButton, ui.progressBar, ui.logView, ui.statusLabel)
    return runner, ui


def types_ns(**kw):
    import types

    return types.SimpleNamespace(**kw)


def test_runner_turns_apply_into_cancel_and_reports(widgets_package, tmp_path, monkeypatch):
    script = _child(
        tmp_path,
        """
        report(0.5, "half way")
        print("from the child", file=sys.stderr, flush=True)
        time.sleep(0.3)
        report.result({"probability": 0.83})
    """,
    )
    monkeypatch.setattr(gs, "child_command", lambda python, args: script)
    runner, ui = _runner(widgets_package)
    finished = []
    runner.start(["infer", "ich"], onFinished=finished.append)
    assert runner.isRunning() and runner._timer.active
    assert (ui.applyButton.text, ui.applyButton.enabled) == ("Cancel", True)
    assert ui.progressBar.range == (0, 0)  # busy until the first fraction
    while runner.isRunning():
        runner._timer.slot()  # what the QTimer does every 100 ms
        time.sleep(0.02)
    assert (ui.applyButton.text, ui.applyButton.toolTip, ui.applyButton.enabled) == ("Apply", "Run", True)
    assert not runner._timer.active
    assert [o.status for o in finished] == ["succeeded"] and finished[0].result == {"probability": 0.83}
    assert ui.progressBar.range == (0, 1000) and ui.progressBar.value == 1000
    assert ui.logView.lines[0] == "Running: meddl infer ich"
    assert "[ 50%] half way" in ui.logView.lines and "from the child" in ui.logView.lines
    assert ui.statusLabel.text == "Done." and ui.logView.readOnly


def test_runner_cancel_and_blocking_mode(widgets_package, tmp_path, monkeypatch):
    script = _child(
        tmp_path,
        """
        for i in range(600):
            report(i / 600, f"step {i}")
            time.sleep(0.05)
    """,
    )
    real_child_command = gs.child_command
    monkeypatch.setattr(gs, "child_command", lambda python, args: script)
    runner, ui = _runner(widgets_package)
    ui.applyButton.enabled = False  # e.g. no input selected: Cancel must still be clickable, then back to disabled
    finished = []
    runner.start(["infer", "ich"], onFinished=finished.append)
    assert ui.applyButton.enabled
    while not any(line.startswith("[") for line in ui.logView.lines):
        runner._timer.slot()
        time.sleep(0.02)
    runner.cancel()
    assert ui.statusLabel.text == "Cancelling..."
    while runner.isRunning():
        runner._timer.slot()
        time.sleep(0.02)
    assert [o.status for o in finished] == ["cancelled"] and ui.statusLabel.text == "Cancelled."
    assert (ui.applyButton.text, ui.applyButton.enabled) == ("Apply", False)

    # blocking mode, on the real meddl command (MedDLLib found through PYTHONPATH): a clear one-line failure
    monkeypatch.setattr(gs, "child_command", real_child_command)
    runner2, ui2 = _runner(widgets_package)
    outcome = runner2.runBlocking(["infer", "no-such-task", "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert outcome.status == "failed" and "unknown task 'no-such-task'" in outcome.message
    assert ui2.statusLabel.text.startswith("Failed: ") and ui2.applyButton.text == "Apply"


def test_ensure_dependencies(widgets_package, tmp_path, monkeypatch):
    import importlib.metadata
    import types

    from MedDLWidgets import dependencies

    assert dependencies.REQUIREMENTS_FILE == REQUIREMENTS
    assert dependencies.ensureDependencies("Test")  # all installed here: nothing asked, nothing installed

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("meddl-no-such-distribution>=1\n")
    calls = []
    packaging = types.ModuleType("slicer.packaging")

    def pip_ensure(packages, requester=None):
        calls.append((packages, requester))
        raise RuntimeError("User declined package installation")

    packaging.pip_ensure = pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(dependencies, "_checked", False)
    assert dependencies.ensureDependencies("ICH Detector", requirements) is False
    assert calls == [(["meddl-no-such-distribution>=1"], "ICH Detector")]

    packaging.pip_ensure = lambda packages, requester=None: calls.append(packages)  # "installs" nothing
    with pytest.raises(RuntimeError, match="Still missing after installation: .*meddl-no-such-distribution"):
        dependencies.ensureDependencies("ICH Detector", requirements)

    # torch missing: the PyTorch extension's installer is asked, with the version range
    real_version = importlib.metadata.version

    def version(name):
        if name == "torch":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    asked = []
    pytorch_utils = types.ModuleType("PyTorchUtils")
    pytorch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(
        installTorch=lambda **kw: asked.append(kw)
    )  # returns None: the user declined
    monkeypatch.setitem(sys.modules, "PyTorchUtils", pytorch_utils)
    requirements.write_text("packaging>=20\n")
    assert dependencies.ensureDependencies("ICH Detector", requirements) is False
    assert asked == [{"askConfirmation": True, "torchVersionRequirement": ">=2.2"}]
    monkeypatch.delitem(sys.modules, "PyTorchUtils")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # extension not installed
    with pytest.raises(RuntimeError, match="needs the PyTorch extension"):
        dependencies.ensureDependencies("ICH Detector", requirements)


def test_model_selector_lists_imports_and_shows_cards(widgets_package, tmp_path):
    from MedDLLib import models

    combo, card = _Widget(), _Widget()
    import_button, cache_button = _Widget(toolTip=""), _Widget(toolTip="")
    selected = []
    selector = widgets_package.ModelSelector("ich", combo, card, import_button, cache_button, onChanged=selected.append)
    assert combo.items == [("No ich model in the cache: import one", "")]
    assert selector.currentModel() is None and selected[-1] is None
    assert card.plainText.startswith("No model selected") and gs.RESEARCH_USE_ONLY in card.plainText
    assert {"clicked(bool)"} == set(import_button.connections) == set(cache_button.connections)

    package = _tiny_package(tmp_path)
    name = selector.importModel(str(package / "configs" / "metadata.json"))  # the dialog's answer
    assert name == "ich-seed" and (models.cache_dir() / "ich-seed").is_dir()
    assert combo.items == [("ich-seed 0.1.0 (seed, synthetic phantoms)", "ich-seed")]
    assert selector.currentModel() == "ich-seed" and selected[-1] == "ich-seed"
    assert card.plainText.splitlines()[:2] == ["ich-seed 0.1.0 (seed, synthetic phantoms)", gs.RESEARCH_USE_ONLY]

    # a package broken after import is offered as unusable, with the reason
    (models.cache_dir() / "ich-seed" / "configs" / "metadata.json").write_text("{not json")
    selector.refresh()
    assert combo.items == [("ich-seed (broken)", "ich-seed")] and selector.currentModel() is None
    assert card.plainText.startswith("ich-seed cannot be used: ") and "not valid JSON" in card.plainText
