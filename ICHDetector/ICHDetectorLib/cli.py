"""``meddl <subcommand> ich``: the ICH task for the shared command line (phantom, train, evaluate, infer, bench, demo).

``meddl infer ich --input STUDY --model M --output OUT`` writes into OUT:

* ``probabilities.csv`` -- one row per slice in slice order: ``slice,any,epidural,...,subdural``;
* ``heatmap.nrrd`` -- Grad-CAM of ``--heatmap-label`` (default "any") in the input geometry, values 0..1;
* ``suspected.seg.nrrd`` -- segmentation "suspected hemorrhage" (blood density inside the brain where the
  heatmap is high), on the input grid;
* ``overlay.png`` -- the slice with the highest 'any' probability, brain window, heatmap and region on top;

and returns the dict the shared command writes as ``result.json``: ``any_probability`` (max over slices),
``<subtype>_probability`` for each subtype, ``positive``, ``threshold``, ``suspected_volume_ml``, ``summary``...
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path
from typing import Any

from MedDLLib.errors import InputError
from MedDLLib.tasks import Task

PROBABILITIES_CSV = "probabilities.csv"
HEATMAP_NRRD = "heatmap.nrrd"
SUSPECTED_SEG = "suspected.seg.nrrd"
OVERLAY_PNG = "overlay.png"


def read_study_volume(path: Path) -> Any:
    """A study as a HU :class:`~MedDLLib.geometry.Volume`: DICOM folder (bad-intercept fixed) or volume file
    (:func:`MedDLLib.io.read_volume_file`).

    Raises:
        InputError / DicomError: not a DICOM folder nor a volume file, a file Slicer cannot read (corrupt,
            truncated, unsupported), a vector/RGB volume, or the DICOM reader's problems.
    """
    from MedDLLib import dicom
    from MedDLLib import io as mio

    path = Path(path)
    if path.is_dir():
        return dicom.read_dicom_folder(path, fix_bad_intercept=True)
    if not mio.is_volume_file(path):
        raise InputError(f"{path}: not a DICOM folder nor a volume file ({', '.join(mio.VOLUME_FILE_SUFFIXES)})")
    return mio.read_volume_file(path)


def infer_study(input_path: Path, model: str, output: Path, *, heatmap_label: str = "any", threshold: float = 0.5,
                device: str = "cpu", progress: Any = None) -> dict[str, Any]:
    """Run one study through a fresh headless scene and write the output files (see the module docstring).

    ``progress``: an optional ``(fraction, message)`` callback (the GUI's child protocol reporter).
    """
    from MedDLLib import io as mio
    from MedDLLib import nodes, render
    from MedDLLib.headless import create_scene

    from .logic import SUSPECTED_SEGMENTS, ICHDetectorLogic, ICHOptions

    volume = read_study_volume(input_path)
    hs = create_scene()
    try:
        scene = hs.scene
        node = nodes.add_scalar_volume(scene, volume, "head CT", window=(40.0, 80.0))
        options = ICHOptions(heatmap_label=heatmap_label, threshold=threshold, device=device)
        try:
            result = ICHDetectorLogic().process(node, model, options, progress=progress)
        except InputError as exc:  # the logic's checks name no file; name the study they refuse
            raise InputError(f"{input_path}: {exc}") from None
        output.mkdir(parents=True, exist_ok=True)
        _write_probabilities(output / PROBABILITIES_CSV, result.probabilities)
        mio.save_node(result.nodes["heatmap"], output / HEATMAP_NRRD)
        mio.save_node(result.nodes["segmentation"], output / SUSPECTED_SEG)
        k = int(result.probabilities[:, 0].argmax())
        label = nodes.add_labelmap(scene, result.suspected, volume.geometry, "suspected", SUSPECTED_SEGMENTS)
        render.render_slice_png(output / OVERLAY_PNG, node, foreground=result.nodes["heatmap"], label=label,
                                offset_mm=render.slice_offset_of(node, k))
        out = result.as_dict()
        out.update(probabilities=PROBABILITIES_CSV, heatmap=HEATMAP_NRRD, segmentation=SUSPECTED_SEG,
                   overlay=OVERLAY_PNG, input=str(input_path))
        return out
    finally:
        hs.scene.Clear(1)


def _write_probabilities(path: Path, probs: Any) -> None:
    from MedDLLib.io import atomic_write_text

    from .dataset import LABELS

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["slice", *LABELS])
    for k, row in enumerate(probs):
        writer.writerow([k, *(f"{float(v):.6f}" for v in row)])
    atomic_write_text(path, buf.getvalue())


class ICHTask(Task):
    """Intracranial hemorrhage detection and subtyping on head CT (RSNA 2019 layout)."""

    name = "ich"
    title = "ICH Detector: intracranial hemorrhage on head CT"
    needs_model = True  # no default model ships: infer and batch check --model once, first

    def add_arguments(self, subcommand: str, parser: argparse.ArgumentParser) -> None:
        from MedDLLib.commands_tasks import positive_int

        if subcommand == "phantom":
            parser.add_argument("--size", type=positive_int, default=64,
                                help="slice size in pixels (>= 16, default 64)")
            parser.add_argument("--slices", type=positive_int, default=12, help="slices per study (default 12)")
        if subcommand == "train":
            parser.add_argument("--size", type=positive_int, default=64, help="network input size (default 64)")
            parser.add_argument("--batch-size", type=positive_int, default=None, help="default: the recipe's")
            parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
        if subcommand == "evaluate":
            parser.add_argument("--threshold", type=float, default=0.5, help="study-level 'any' threshold")
        if subcommand in ("infer", "batch"):
            parser.add_argument("--heatmap-label", default="any", help="label explained by Grad-CAM (default any)")
            parser.add_argument("--threshold", type=float, default=0.5, help="decision threshold on 'any'")
        if subcommand == "bench":
            parser.add_argument("--stream-slices", type=positive_int, default=20000,
                                help="slices streamed in the training-throughput part (default 20000)")

    # ------------------------------------------------------------------------------------------------ phantom
    def phantom(self, out: Path, cases: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
        from .phantom import write_dataset

        manifest = write_dataset(out, cases, seed, size=getattr(args, "size", 64), n_slices=getattr(args, "slices", 12))
        truth = manifest["truth"]
        return {"out": str(out), "studies": cases, "slices": sum(len(t["slice_ids"]) for t in truth),
                "positive_studies": sum(bool(t["subtypes"]) for t in truth),
                "bad_intercept_studies": sum(t["bad_intercept"] for t in truth)}

    # ------------------------------------------------------------------------------------------------ train
    def train(self, args: argparse.Namespace) -> dict[str, Any]:
        from .dataset import scan_dataset
        from .model import train_model

        data = scan_dataset(args.data)
        for problem in data.problems[:20]:
            print(f"warning: {problem}")
        result = train_model(data.studies, args.out, args.recipe, epochs=args.epochs, max_minutes=args.max_minutes,
                             batch_size=getattr(args, "batch_size", None), size=getattr(args, "size", 64),
                             seed=args.seed, device=args.device, force_cpu=args.force_cpu,
                             num_workers=getattr(args, "num_workers", 0),
                             description=f"meddl train ich --data {args.data} --recipe {args.recipe}")
        return {"package": str(result.package), "recipe": args.recipe, "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run, "seconds": round(result.seconds, 1),
                **{f"val_{k}": v for k, v in result.best_metrics.items()}}

    # ------------------------------------------------------------------------------------------------ evaluate
    def evaluate(self, args: argparse.Namespace) -> dict[str, Any]:
        from MedDLLib.device import select_device

        from .dataset import scan_dataset
        from .model import evaluate_model

        data = scan_dataset(args.data)
        device = select_device(args.device, args.force_cpu)
        out = getattr(args, "out", None)  # the figures go beside metrics.json (absolute paths: it may move)
        metrics = evaluate_model(args.model, data.studies, threshold=getattr(args, "threshold", 0.5), device=device,
                                 figures_dir=Path(out).resolve().parent if out else None)
        metrics["data_problems"] = len(data.problems)
        return metrics

    # ------------------------------------------------------------------------------------------------ infer
    def infer(self, input_path: Path, model: str | None, output: Path, args: argparse.Namespace) -> dict[str, Any]:
        from MedDLLib.device import select_device

        if model is None:
            raise InputError("meddl infer ich needs --model (no default ICH model ships; train one with meddl train ich)")
        device = select_device(getattr(args, "device", None), getattr(args, "force_cpu", False))
        return infer_study(Path(input_path), model, Path(output), heatmap_label=getattr(args, "heatmap_label", "any"),
                           threshold=getattr(args, "threshold", 0.5), device=str(device),
                           progress=getattr(args, "progress", None))

    # ------------------------------------------------------------------------------------------------ bench
    def bench(self, args: argparse.Namespace) -> dict[str, Any]:
        from .bench import run_bench

        return run_bench(stream_slices=getattr(args, "stream_slices", 20000))

    # ------------------------------------------------------------------------------------------------ demo
    def demo(self, out: Path, args: argparse.Namespace) -> dict[str, Any]:
        import shutil

        from MedDLLib.io import atomic_write_json

        from .dataset import scan_dataset
        from .model import evaluate_model, train_model

        out = Path(out)
        seed = int(getattr(args, "seed", 0))
        minutes = float(getattr(args, "minutes_per_task", 3.0))
        from .phantom import write_dataset

        write_dataset(out / "train", 96, seed)
        write_dataset(out / "test", 16, seed + 1000)
        train_data, test_data = scan_dataset(out / "train"), scan_dataset(out / "test")
        start = time.perf_counter()
        result = train_model(train_data.studies, out / "model", "improved", epochs=20, max_minutes=minutes * 0.8,
                             seed=seed, device=getattr(args, "device", None),
                             force_cpu=getattr(args, "force_cpu", False), description="meddl demo ich phantoms")
        metrics = evaluate_model(out / "model", test_data.studies)
        metrics["train_seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_json(out / "metrics.json", metrics)
        study = max(test_data.studies, key=lambda s: s.any_label)  # a positive study where there is one
        study_dir = out / "study"
        shutil.rmtree(study_dir, ignore_errors=True)
        study_dir.mkdir(parents=True)
        for p in study.paths:
            shutil.copy2(p, study_dir / p.name)
        inferred = infer_study(study_dir, str(out / "model"), out / "infer")
        atomic_write_json(out / "infer" / "result.json", inferred)
        keys = ("auroc_any", "auroc_any_ci_low", "auroc_any_ci_high", "weighted_log_loss",
                "study_sensitivity_any", "study_specificity_any")
        return {"png": [str(out / "infer" / OVERLAY_PNG)], "metrics": {k: metrics[k] for k in keys},
                "summary": inferred["summary"], "best_epoch": result.best_epoch}


TASK = ICHTask()
