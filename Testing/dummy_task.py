"""A tiny :class:`MedDLLib.tasks.Task` for testing the task commands and the batch runner (no torch, no MRML).

A "study" is a folder holding ``input.txt`` (whitespace-separated numbers) or such a text file itself.
``infer`` writes three output files, sleeping ``$MEDDL_DUMMY_DELAY`` seconds after each (so a test can kill a
batch run in the middle of a study), and returns statistics of the numbers. ``train`` is not implemented.
Child processes load it with ``MEDDL_EXTRA_TASKS=dummy_task:TASK`` and this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from MedDLLib.errors import InputError
from MedDLLib.tasks import Task

OUTPUT_FILES = ("numbers.txt", "doubled.txt", "stats.json")


def read_numbers(study: Path) -> list[float]:
    """The numbers of a study (folder with ``input.txt`` or a text file); InputError when not numbers."""
    path = study / "input.txt" if study.is_dir() else study
    try:
        return [float(x) for x in path.read_text(encoding="utf-8").split()]
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a list of numbers ({exc})") from exc


class DummyTask(Task):
    name = "dummy"
    title = "Dummy task (tests only)"

    def add_arguments(self, subcommand: str, parser: argparse.ArgumentParser) -> None:
        if subcommand in ("infer", "batch"):
            parser.add_argument("--scale", type=float, default=1.0, help="multiply every number by this")

    def phantom(self, out: Path, cases: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
        for case in range(cases):
            folder = out / f"case{case:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            numbers = [(seed * 31 + case * 7 + i * 3) % 17 for i in range(5)]
            (folder / "input.txt").write_text(" ".join(map(str, numbers)) + "\n", encoding="utf-8")
        return {"cases": cases, "seed": seed, "out": out}

    def infer(self, input_path: Path, model: str | None, output: Path, args: argparse.Namespace) -> dict[str, Any]:
        scale = getattr(args, "scale", 1.0)
        numbers = [x * scale for x in read_numbers(input_path)]
        delay = float(os.environ.get("MEDDL_DUMMY_DELAY", "0"))
        contents = (
            "\n".join(map(repr, numbers)) + "\n",
            "\n".join(repr(2 * x) for x in numbers) + "\n",
            json.dumps({"n": len(numbers), "sum": sum(numbers)}) + "\n",
        )
        for name, text in zip(OUTPUT_FILES, contents):
            (output / name).write_text(text, encoding="utf-8")
            time.sleep(delay)
        return {
            "n": len(numbers),
            "total": sum(numbers),
            "largest": max(numbers, default=0.0),
            "model": model,
            "numbers_file": output / OUTPUT_FILES[0],
            "all": numbers,  # not a scalar: kept in result.json, not in summary.csv
        }

    def evaluate(self, args: argparse.Namespace) -> dict[str, Any]:
        studies = self.find_studies(Path(args.data))
        return {"studies": len(studies), "total": sum(sum(read_numbers(s)) for s in studies), "model": args.model}

    def bench(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"device": args.device or "cpu", "force_cpu": args.force_cpu}

    def demo(self, out: Path, args: argparse.Namespace) -> dict[str, Any]:
        from PIL import Image

        Image.new("L", (8, 8), color=128).save(out / "figure.png")
        (out / "metrics.json").write_text(json.dumps({"dice": 0.5, "auroc": {"value": 0.75}}), encoding="utf-8")
        card = "Research use only. " + "Trained on synthetic phantoms only; " * 12  # longer than a file name may be
        return {"png": "figure.png", "metrics": "metrics.json", "quick": args.quick, "model_card": card}


class BrokenDemoTask(DummyTask):
    name = "broken"
    title = "Broken demo (tests only)"

    def demo(self, out: Path, args: argparse.Namespace) -> dict[str, Any]:
        raise RuntimeError("boom in the demo")


TASK = DummyTask()
BROKEN = BrokenDemoTask()
