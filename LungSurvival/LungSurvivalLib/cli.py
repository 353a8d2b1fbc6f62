"""``meddl phantom|train|evaluate|infer|batch|bench|demo lung``: the LungSurvival task of the shared command.

``meddl infer lung --input STUDY --model M --output OUT`` (STUDY: a DICOM folder holding one CT series, or an
NRRD/NIfTI file) writes ``lungs.seg.nrrd``, ``lungs_label.nrrd``, ``heatmap.nrrd``, ``overlay.png`` and returns
(written by the shared command as ``result.json``) ``left_lung_ml``, ``right_lung_ml``, ``total_lung_ml``,
``risk_score``, ``risk_group``, ``caveat``. ``meddl evaluate lung --out metrics.json`` gives ``c_index``,
``c_index_ci_low``, ``c_index_ci_high``, ``logrank_p`` (+ ``accuracy`` with CI for the seed recipe) and writes
the Kaplan-Meier PNG beside the metrics (``km.png``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from MedDLLib.errors import InputError
from MedDLLib.tasks import Task

from . import dataset, model


class LungTask(Task):
    """Lung segmentation and survival risk from chest CT (TCIA layout)."""

    name = "lung"
    title = "Lung Survival: lung segmentation and survival risk from chest CT"

    def add_arguments(self, subcommand: str, parser: argparse.ArgumentParser) -> None:
        if subcommand == "phantom":
            parser.add_argument("--size", type=int, default=64, help="in-plane size in pixels (real CT: 512)")
            parser.add_argument("--slices", type=int, default=24, help="slices per study (10 mm apart)")
        if subcommand in ("train", "evaluate"):
            parser.add_argument("--min-slices", type=int, default=dataset.MIN_SLICES,
                                help="studies with fewer slices are reported and skipped (seed recipe: 50)")
        if subcommand == "train":
            parser.add_argument("--size", type=int, default=None,
                                help="network input size (seed: in-plane, default 224; improved: cube, default 32)")
            parser.add_argument("--batch-size", type=int, default=None)
        if subcommand == "bench":
            parser.add_argument("--size", type=int, default=512)
            parser.add_argument("--slices", type=int, default=300)

    def phantom(self, out: Path, cases: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
        from .phantom import write_dataset

        manifest = write_dataset(out, cases, seed, size=getattr(args, "size", 64), n_slices=getattr(args, "slices", 24))
        return {"cases": cases, "clinical_csv": str(Path(out) / dataset.CLINICAL_CSV),
                "tumour_diameter_mm": [round(t["diameter_mm"], 1) for t in manifest["truth"]]}

    def _cohort(self, data: Path, args: argparse.Namespace) -> dataset.LungCohort:
        import sys

        cohort = dataset.scan_cohort(data, min_slices=getattr(args, "min_slices", dataset.MIN_SLICES))
        for pid, why in cohort.unusable.items():
            print(f"unusable study {pid}: {why}", file=sys.stderr)
        if not cohort.studies:
            raise InputError(f"{data}: no usable study (see the reasons above)")
        return cohort

    def train(self, args: argparse.Namespace) -> dict[str, Any]:
        cohort = self._cohort(Path(args.data), args)
        result = model.train_model(cohort.studies, args.out, args.recipe, epochs=args.epochs,
                                   max_minutes=args.max_minutes, batch_size=getattr(args, "batch_size", None),
                                   size=getattr(args, "size", None), seed=args.seed, device=args.device,
                                   force_cpu=args.force_cpu)
        return {"package": str(result.package), "best_epoch": result.best_epoch, "best_metrics": result.best_metrics,
                "epochs_run": result.epochs_run, "seconds": round(result.seconds, 1),
                "unusable": cohort.unusable}

    def evaluate(self, args: argparse.Namespace) -> dict[str, Any]:
        from MedDLLib.device import select_device

        cohort = self._cohort(Path(args.data), args)
        out = getattr(args, "out", None)
        km_png = Path(out).with_name("km.png") if out else None
        metrics = model.evaluate_model(args.model, cohort.studies, km_png=km_png,
                                       device=select_device(args.device, args.force_cpu))
        metrics.pop("risk", None)
        metrics.pop("patients", None)
        if km_png is not None:
            metrics["km_png"] = str(km_png)
        return metrics

    def infer(self, input_path: Path, model_name: str | None, output: Path, args: argparse.Namespace) -> dict[str, Any]:
        import numpy as np

        from MedDLLib import nodes
        from MedDLLib.dicom import read_dicom_folder
        from MedDLLib.headless import create_scene
        from MedDLLib.io import load_volume, save_node
        from MedDLLib.models import load_package, resolve_model
        from MedDLLib.render import render_slice_png, slice_offset_of

        from .logic import LungOptions, LungSurvivalLogic

        if model_name is None:
            raise InputError("give --model (a package from `meddl train lung` or a cached model name): "
                             "MedDL ships no pretrained lung weights")
        package = load_package(resolve_model(model_name))
        hs = create_scene()
        try:
            if Path(input_path).is_dir():
                node = nodes.add_scalar_volume(hs.scene, read_dicom_folder(input_path), "CT")
            else:
                node = load_volume(hs.scene, input_path)
            options = LungOptions(gradcam=True, device=getattr(args, "device", None),
                                  force_cpu=getattr(args, "force_cpu", False))
            out = LungSurvivalLogic().process(node, package, options)
            output.mkdir(parents=True, exist_ok=True)
            save_node(out.segmentation, output / "lungs.seg.nrrd")
            save_node(out.labelmap, output / "lungs_label.nrrd")
            save_node(out.heatmap, output / "heatmap.nrrd")
            labels = out.result.segmentation.labels
            areas = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
            k = int(np.argmax(areas))
            render_slice_png(output / "overlay.png", node, label=out.labelmap, foreground=out.heatmap,
                             offset_mm=slice_offset_of(node, k))
            summary = out.result.summary()
        finally:
            hs.scene.Clear(1)
        return {**summary, "model": package.name, "segmentation": "lungs.seg.nrrd", "labelmap": "lungs_label.nrrd",
                "heatmap": "heatmap.nrrd", "overlay": "overlay.png"}

    def bench(self, args: argparse.Namespace) -> dict[str, Any]:
        """End-to-end inference (segmentation + crop + network + Grad-CAM) on a ``--slices`` x ``--size``^2 phantom."""
        import resource
        import tempfile

        import numpy as np

        from MedDLLib.device import select_device

        from . import logic
        from .phantom import chest_ct
        from .selftests import _package

        size, n_slices = int(getattr(args, "size", 512)), int(getattr(args, "slices", 300))
        volume, _, _ = chest_ct(np.random.default_rng(0), size, n_slices)
        # 300 slices of a 24-slice-shaped chest: keep 10 mm-spaced anatomy but at 1 mm in z would change it;
        # the phantom already spans n_slices x 10 mm; the spacing is set to a realistic 1 mm
        from MedDLLib.geometry import Geometry

        g = volume.geometry
        volume.geometry = Geometry((g.spacing_mm[0], g.spacing_mm[1], 1.0), g.origin_lps_mm, g.direction_lps)
        device = select_device(getattr(args, "device", None), getattr(args, "force_cpu", False))
        with tempfile.TemporaryDirectory() as tmp:
            package = model.load_model(_package(Path(tmp)))[1]
            network = package.network(device)
            start = time.perf_counter()
            result = logic.compute(volume, network, package.metadata, logic.LungOptions(gradcam=True), device=device)
            seconds = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return {"shape_kji": list(volume.array.shape), "seconds_end_to_end": round(seconds, 2),
                "peak_rss_mb": round(peak_mb, 1), "total_lung_ml": round(result.segmentation.total_ml, 1),
                "target": "< 60 s and < 4096 MB on 2 CPU cores"}

    def demo(self, out: Path, args: argparse.Namespace) -> dict[str, Any]:
        """Phantoms -> improved recipe (time-boxed) -> evaluation on held-out phantoms -> one inference."""
        from .phantom import write_dataset

        minutes = float(getattr(args, "minutes_per_task", 2.0))
        seed = int(getattr(args, "seed", 0))
        write_dataset(out / "train", 32, seed)
        write_dataset(out / "test", 16, seed + 1000)
        package = out / "lung-improved"
        train = dataset.scan_cohort(out / "train").studies
        model.train_model(train, package, "improved", epochs=12, size=24, max_minutes=max(0.5, minutes * 0.6),
                          seed=seed, device=getattr(args, "device", None), force_cpu=getattr(args, "force_cpu", False))
        test = dataset.scan_cohort(out / "test").studies
        metrics = model.evaluate_model(package, test, km_png=out / "km.png", n_boot=200)
        metrics.pop("risk", None)
        metrics.pop("patients", None)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
        ns = argparse.Namespace(device=getattr(args, "device", None), force_cpu=getattr(args, "force_cpu", False))
        result = self.infer(test[0].folder, str(package), out / "infer", ns)
        return {"png": str(out / "infer" / "overlay.png"), "metrics": metrics, "km_png": str(out / "km.png"),
                "risk_group": result["risk_group"]}


TASK = LungTask()
