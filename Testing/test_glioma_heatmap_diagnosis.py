"""``scripts/glioma_heatmap_diagnosis.py`` (the measurement behind the glioma heatmap gap) runs end to end on the
real training path and its regions are consistent: they partition the input, the head excludes the air, and
restricting a map to a region around the lesion can only raise the lesion's fraction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "glioma_heatmap_diagnosis.py"


@pytest.mark.slow
def test_diagnosis_reports_consistent_region_fractions(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--size", "24", "--depth", "12", "--cases", "24", "--epochs",
                           "1", "--explain", "2", "--work", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    share = report["lesion_share"]
    assert 0 < share["of_input"] < share["of_head"] < share["of_brain"] < 0.5
    assert 0.2 < report["head_share_of_input"] < 0.9  # the air around the head is not counted as head
    assert set(report["maps"]) == {"gradient_x_input", *(f"{m}_{layer}" for m in ("gradcam", "hirescam")
                                                         for layer in ("layer1", "layer2", "layer3", "evidence"))}
    for name, row in report["maps"].items():
        total = row["lesion"] + row["brain_not_lesion"] + row["scalp_skull"] + row["air"]
        if name.endswith("_evidence") and total == 0:
            continue  # an evidence map with no positive cell (an unmethylated call after 1 epoch) is empty
        assert total == pytest.approx(1, abs=2e-3), name
        assert row["lesion"] <= row["lesion_of_head_masked"] + 1e-4 <= row["lesion_of_brain_masked"] + 2e-4, name
    assert "gradcam_layer2" in proc.stdout and "lesion share" in proc.stdout
