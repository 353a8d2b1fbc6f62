"""``meddl demo``'s report (MedDLLib.demo): links that work from a relative output folder, the headline in words
(plainly below the README's figure when it is), and the page checked in headless Chromium: every image loads,
a screenshot is kept as a test artefact."""

from __future__ import annotations

import argparse
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from MedDLLib import demo, tasks
from MedDLLib.cli import main

REPO = Path(__file__).resolve().parents[1]
#: Where the browser check keeps its screenshot (and a copy of the page); printed by the test.
ARTEFACTS = Path(os.environ.get("MEDDL_TEST_ARTEFACTS", REPO / "build" / "test-artefacts")) / "demo_report"


class _AbsolutePathsTask(tasks.Task):
    """Returns the paths it writes as ``out / name``: what the real tasks do."""

    name = "abspaths"
    title = "Absolute paths (tests only)"

    def demo(self, out: Path, args: argparse.Namespace) -> dict[str, Any]:
        Image.new("L", (16, 8), color=200).save(out / "plot one.png")
        return {"figures": [demo.figure(out / "plot one.png", "a caption with <b>markup</b>")],
                "headline": demo.headline("Dice, mean over patients", 0.5, 0.4, 0.6, readme=0.875),
                "what": "nothing real"}


def test_relative_output_folder_gives_working_links(tmp_path, monkeypatch):
    monkeypatch.setitem(tasks._registered, "abspaths", _AbsolutePathsTask())
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--output", "demo_output", "--tasks", "abspaths"]) == 0
    page = (tmp_path / "demo_output" / "index.html").read_text()
    assert 'src="abspaths/plot%20one.png"' in page  # relative to index.html, not to the working directory
    src = page.split('<img src="', 1)[1].split('"', 1)[0]
    assert (tmp_path / "demo_output" / urllib.parse.unquote(src)).is_file()
    assert "a caption with &lt;b&gt;markup&lt;/b&gt;" in page
    assert "Dice, mean over patients: 0.500 (95 % confidence interval 0.400 to 0.600). This is BELOW the README" in page


def test_headline_sentence_says_plainly_below_or_meets():
    text, below = demo.headline_sentence(demo.headline("AUROC", 0.91, 0.85, 0.97, readme=0.879))
    assert not below and text == ("AUROC: 0.910 (95 % confidence interval 0.850 to 0.970). This meets the README's "
                                  "figure of 0.879.")
    text, below = demo.headline_sentence(demo.headline("AUROC", 0.80, 0.70, 0.90, readme=0.879, readme_setting="x"))
    assert below and "BELOW the README's figure of 0.879 (x), though the README's figure lies inside" in text
    text, below = demo.headline_sentence(demo.headline("log loss", 0.30, readme=0.17, higher_is_better=False))
    assert below and text.startswith("log loss: 0.300. This is BELOW")
    assert demo.headline_sentence(demo.headline("C-index", float("nan")))[1] is True


@pytest.mark.slow
def test_quick_demo_report_loads_every_image_in_headless_chromium(tmp_path, monkeypatch, capsys):
    if demo.find_browser() is None:
        pytest.skip("headless Chromium not installed (scripts/setup.sh installs Debian's chromium)")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--output", "demo_output", "--quick"]) == 0  # the README's relative folder
    out = tmp_path / "demo_output"
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "index.png"
    check = demo.check_report_in_browser(out / "index.html", shot)
    shutil.copy2(out / "index.html", ARTEFACTS / "index.html")
    with capsys.disabled():
        print(f"\ndemo report screenshot: {shot}")
    assert check["checked"], "the page's image check did not run in the browser"
    assert check["missing"] == [], f"images that did not load: {check['missing']}"
    srcs = {i["src"] for i in check["images"]}
    for figure in ("dicom/ct_middle_slice.png", "glioma/infer/overlay.png", "glioma/roc.png",
                   "glioma/reliability.png", "ich/infer/overlay.png", "ich/any_roc.png", "ich/any_reliability.png",
                   "lgg/infer/overlay.png", "lung/infer/overlay.png", "lung/km.png", "lung/km_seed.png"):
        assert figure in srcs
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size[0] == 1280
        assert len(im.convert("L").resize((64, 64)).getcolors() or []) > 20  # a rendered page, not a blank one
    page = (out / "index.html").read_text()
    assert page.count("What was done.") == 5 and page.count("What it means on phantoms.") == 4
    assert page.count("95 % confidence interval") >= 8  # each task's headline, in the summary and its section
    assert "measured with far more work than this --quick run" in page
