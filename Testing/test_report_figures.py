"""The figures users expect (issue 21): ROC with CI band, reliability diagram with ECE, the number-at-risk table
under Kaplan-Meier plots, written by ``meddl evaluate``; and the terminal progress bar (TTY only, never under the
GUI). The numbers are checked against hand computations, not just that a PNG appeared."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from MedDLLib import evaluation as ev
from MedDLLib import progress
from MedDLLib.cli import main


def _png_size(path: str | Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


# ------------------------------------------------------------------------------------------------ Kaplan-Meier
def test_number_at_risk_matches_a_hand_counted_cohort():
    # follow-up (days) and event per patient; at risk at t = follow-up >= t (event or censoring not yet happened)
    time = [10, 20, 30, 30, 50, 5, 40, 60, 80, 100]
    group = ["low"] * 5 + ["high"] * 5
    counts = ev.number_at_risk(time, group, [0, 20, 30, 45, 90])
    assert counts == {"high": [5, 4, 4, 3, 1], "low": [5, 4, 3, 1, 0]}
    assert list(counts) == list(ev.kaplan_meier_groups(time, [1] * 10, group)["groups"])  # same label order


def test_kaplan_meier_png_has_the_at_risk_table(tmp_path, monkeypatch):
    time = np.array([10, 20, 30, 30, 50, 5, 40, 60, 80, 100], float)
    event = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0, 1])
    group = np.array(["low"] * 5 + ["high"] * 5)
    figures = []
    save = ev.save_figure_png
    monkeypatch.setattr(ev, "save_figure_png", lambda fig, path: figures.append(fig) or save(fig, path))
    png = ev.plot_kaplan_meier(time, event, group, tmp_path / "km.png", time_label="time (days)")
    assert _png_size(png)[0] > 300 and not list(tmp_path.glob(".*tmp"))
    plot, table = figures[0].axes
    ticks = [float(v) for v in table.get_xticks()]
    assert ticks == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]  # the plot's x ticks, 0 to the last follow-up
    drawn: dict[str, list[int]] = {}
    rows = [t.get_text() for t in table.get_yticklabels()]  # bottom row first
    for text in table.texts:
        x, y = text.get_position()
        drawn.setdefault(rows[int(round(y))], []).append((x, int(text.get_text())))
    # follow-up >= t, counted on paper: high 5, 40, 60, 80, 100; low 10, 20, 30, 30, 50
    by_hand = {"high": [5, 4, 4, 3, 2, 1], "low": [5, 4, 1, 0, 0, 0]}
    assert {k: [c for _, c in sorted(v)] for k, v in drawn.items()} == by_hand
    assert [t.get_text() for t in plot.get_legend().get_texts()] == ["high (n=5, events=3)", "low (n=5, events=4)"]


# ------------------------------------------------------------------------------------------------ ROC
def test_roc_with_ci_against_hand_auroc_and_band_properties(tmp_path):
    # 2 negatives (0.1, 0.4), 2 positives (0.35, 0.8): 3 of the 4 pairs ordered -> AUROC 0.75
    roc = ev.roc_with_ci([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], n_boot=200)
    assert roc["auroc"] == pytest.approx(0.75)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = y + rng.normal(0, 1.0, 300)
    roc = ev.roc_with_ci(y, s, n_boot=300, groups=np.arange(300) // 3)
    low, high = np.array(roc["band_low"]), np.array(roc["band_high"])
    assert (low <= high + 1e-12).all() and low[-1] == pytest.approx(1.0)
    curve = np.interp(roc["grid_fpr"], roc["fpr"], roc["tpr"])
    assert np.mean((curve >= low - 1e-9) & (curve <= high + 1e-9)) > 0.9  # the curve runs inside its band
    assert roc["auroc_ci_low"] < roc["auroc"] < roc["auroc_ci_high"]
    out = ev.plot_roc(y, s, tmp_path / "roc.png", n_boot=100)
    assert Path(out["path"]).is_file() and _png_size(out["path"])[0] > 300


def test_classifier_figures_ece_is_the_hand_computed_one(tmp_path):
    y = [0, 0, 1, 1, 1]
    p = [0.1, 0.15, 0.8, 0.85, 0.3]
    # 2 equal-width bins: [0, 0.5) holds 0.1, 0.15, 0.3 (mean 0.1833, 1 of 3 positive: gap 0.15);
    # [0.5, 1] holds 0.8, 0.85 (mean 0.825, both positive: gap 0.175). ECE = 3/5 * 0.15 + 2/5 * 0.175 = 0.16
    cal = ev.reliability_diagram(y, p, tmp_path / "r.png", n_bins=2)
    assert cal["ece"] == pytest.approx(0.16)
    figs = ev.classifier_figures(y * 4, p * 4, tmp_path / "figs", what="test", prefix="any_", n_boot=50)
    assert set(figs) == {"any_roc_png", "any_reliability_png", "any_ece", "any_brier"}
    assert Path(figs["any_roc_png"]).is_absolute() and Path(figs["any_roc_png"]).is_file()
    assert Path(figs["any_reliability_png"]).parent == (tmp_path / "figs").resolve()
    assert figs["any_brier"] == pytest.approx(np.mean((np.array(p) - np.array(y)) ** 2))


@pytest.mark.slow
def test_meddl_evaluate_ich_and_glioma_write_figures_beside_metrics(tmp_path, capsys):
    from GliomaClassifierLib.model import untrained_package as glioma_package
    from ICHDetectorLib.model import untrained_package as ich_package

    assert main(["phantom", "ich", str(tmp_path / "ich"), "--cases", "6", "--size", "32", "--slices", "6"]) == 0
    model = ich_package(tmp_path / "ichm", 32)
    out = tmp_path / "ich_eval" / "metrics.json"
    assert main(["evaluate", "ich", "--data", str(tmp_path / "ich"), "--model", str(model), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    for key in ("any_roc_png", "any_reliability_png"):
        assert Path(metrics[key]) == out.parent.resolve() / f"{key[:-4]}.png" and Path(metrics[key]).is_file()
    assert 0.0 <= metrics["any_ece"] <= 1.0

    assert main(["phantom", "glioma", str(tmp_path / "gl"), "--cases", "8", "--size", "32", "--slices", "16",
                 "--sequences", "T1wCE", "--no-flagged"]) == 0
    model = glioma_package(tmp_path / "glm", size=32, depth=16, sequences=["T1wCE"])
    out = tmp_path / "gl_eval" / "metrics.json"
    assert main(["evaluate", "glioma", "--data", str(tmp_path / "gl"), "--model", str(model), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert Path(metrics["roc_png"]) == out.parent.resolve() / "roc.png" and Path(metrics["roc_png"]).is_file()
    assert Path(metrics["reliability_png"]).is_file() and 0.0 <= metrics["ece"] <= 1.0
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------ progress bar
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_never_under_the_gui():
    tty, pipe = _Tty(), io.StringIO()
    assert progress.wants_bar(tty, environ={}) is True
    assert progress.wants_bar(pipe, environ={}) is False
    assert progress.wants_bar(tty, environ={"MEDDL_GUI_PROTOCOL": "jsonl"}) is False
    assert progress.fraction_reporter("infer x", pipe, environ={}) is None
    bar = progress.fraction_reporter("infer x", tty, environ={})
    bar(0.25, "reading")
    bar(0.75, "running the network")
    bar(0.5, "late report")  # never backwards
    bar.close()
    text = tty.getvalue()
    assert "infer x" in text and "75%" in text and "running the network" in text
    # batch: a silent stand-in off a terminal still prints failures
    stand_in = progress.count_bar(3, "batch x", stream=pipe, environ={})
    stand_in.update(1)
    stand_in.write("case1: failed: boom")
    assert pipe.getvalue() == "case1: failed: boom\n"
    with progress.activity("evaluate x", pipe, environ={}):
        pass
    assert pipe.getvalue() == "case1: failed: boom\n"  # nothing drawn off a terminal
    tty2 = _Tty()
    with progress.activity("evaluate x", tty2, environ={}, interval_s=0.01):
        pass
    assert "evaluate x" in tty2.getvalue()
