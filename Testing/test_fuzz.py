"""Fuzz suite of issue 18: every class of hostile or careless input, made from copies of the real files, through
``meddl inspect/convert/infer/batch/phantom/train/evaluate/bench``; see :mod:`fuzz_inputs` for the rules.

Each case is one test (a clear one-line error with a non-zero exit, or an answer with a warning; never a
traceback, a hang, a leftover ``.partial`` or a changed input). The counts per class are printed at the end of
the module and written to ``$MEDDL_FUZZ_REPORT`` (default: ``<pytest tmp>/fuzz_report.json``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_inputs as fz  # noqa: E402

pytestmark = pytest.mark.skipif(not fz.REAL_CT.is_dir(), reason=f"real DICOM test data not found at {fz.REAL_CT}")

CASES = fz.all_cases()
ROWS: list[dict] = []


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> fz.Fixtures:
    """The small real-derived CT series, made once (the lung model is made on first need)."""
    root = tmp_path_factory.mktemp("fuzz")
    return fz.Fixtures(root, fz.make_small_ct(root / "small_ct"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    yield
    if not ROWS:
        return
    summary = fz.summarise(ROWS)
    path = Path(os.environ.get("MEDDL_FUZZ_REPORT", tmp_path_factory.getbasetemp() / "fuzz_report.json"))
    path.write_text(json.dumps({"summary": summary, "cases": ROWS}, indent=2) + "\n")
    print(f"\nfuzz suite: {summary['total']['ok']} of {summary['total']['cases']} cases ended well "
          f"(report {path})\n{fz.format_table(summary)}")


def _lung_model(fx: fz.Fixtures) -> None:
    """A lung model of one epoch on 4 phantom studies (16 px input): enough to run infer/batch/evaluate."""
    if fx.lung_model is not None:
        return
    data, model = fx.root / "lung_data", fx.root / "lung_model"
    proc = fz.run_meddl_here(["phantom", "lung", str(data), "--cases", "4", "--seed", "1"])
    assert proc.returncode == 0, proc.stderr
    proc = fz.run_meddl_here(["train", "lung", "--data", str(data), "--out", str(model), "--epochs", "1", "--size",
                              "16", "--batch-size", "4"])
    assert proc.returncode == 0, proc.stderr
    fx.lung_model, fx.lung_data = model, data
    for p in [model, *model.rglob("*")]:  # readable by the unprivileged user of the permission cases
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: fz.Case, fixtures: fz.Fixtures, report, tmp_path) -> None:
    if case.needs == "lung_model":
        _lung_model(fixtures)
    row = fz.run_case(case, tmp_path / "case", fixtures)
    ROWS.append(row)
    assert row["ok"], f"{case.name} ({case.klass}): " + "; ".join(row["why"])


def test_cases_cover_every_class_of_issue_18() -> None:
    classes = {c.klass for c in CASES}
    for expected in ("transfer syntax", "modality LUT", "rescale", "position outlier", "pixel spacing",
                     "missing slice", "pixel data size", "volume file geometry", "non-finite voxels", "strict json",
                     "deep folders", "non-regular file", "option limits", "batch resume", "partial outputs",
                     "inputs overwritten", "scanner export"):
        assert expected in classes, expected
    assert len({c.name for c in CASES}) == len(CASES)
