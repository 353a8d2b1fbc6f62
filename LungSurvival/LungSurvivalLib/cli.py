"""``meddl phantom|train|evaluate|infer|batch|bench|demo lung``: the LungSurvival task of the shared command.

``meddl infer lung --input STUDY --model M --output OUT`` (STUDY: a DICOM folder holding one CT series, or an
NRRD/NIfTI file) writes ``lungs.seg.nrrd``, ``lungs_label.nrrd``, ``heatmap.nrrd``, ``overlay.png``,
``lung_volumes.csv`` (lung, volume_ml, risk_score, risk_group) and returns
(written by the shared command as ``result.json``) ``left_lung_ml``, ``right_lung_ml``, ``total_lung_ml``,
``risk_score``, ``risk_group``, ``caveat``. ``meddl evaluate lung --out metrics.json`` gives ``c_index``,
``c_index_ci_low``, ``c_index_ci_high``, ``logrank_p`` (+ ``accuracy`` with CI for the seed recipe) and writes
the Kaplan-Meier PNG beside the metrics (``km.png``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from MedDLLib.errors import InputError
from MedDLLib.options import add_arguments as add_options
from MedDLLib.pipeline import Computed, LoadedModel, PipelineTask, Study

from . import dataset, options  # not .model (torch): finding the task imports no torch, so the study is
from .logic import LungOptions, OUTPUTS  # read in a forked child while the model loads (MedDLLib.prefetch)

#: Output files of ``meddl infer lung`` (besides ``result.json``), declared in :data:`.logic.OUTPUTS`.
LUNGS_SEG = "lungs.seg.nrrd"
LUNGS_LABEL = "lungs_label.nrrd"
HEATMAP_NRRD = "heatmap.nrrd"
OVERLAY_PNG = "overlay.png"
VOLUMES_CSV = "lung_volumes.csv"


class LungTask(PipelineTask):
    """Lung segmentation and survival risk from chest CT (TCIA layout)."""

    name = "lung"
    title = "Lung Survival: lung segmentation and survival risk from chest CT"
    outputs = OUTPUTS
    infer_options = options.INFER
    options_type = LungOptions
    networks = {"lung.cnn3d": "LungSurvivalLib.model:SmallCNN3D"}

    def add_arguments(self, subcommand: str, parser: argparse.ArgumentParser) -> None:
        from MedDLLib.commands_tasks import positive_int

        if subcommand == "phantom":
            parser.add_argument("--size", type=positive_int, default=64,
                                help="in-plane size in pixels (>= 16; real CT: 512)")
            parser.add_argument("--slices", type=positive_int, default=24, help="slices per study (>= 2, 10 mm apart)")
        if subcommand in ("train", "evaluate"):
            parser.add_argument("--min-slices", type=positive_int, default=dataset.MIN_SLICES,
                                help="studies with fewer slices are reported and skipped (seed recipe: 50)")
        if subcommand == "train":
            parser.add_argument("--size", type=positive_int, default=None,
                                help="network input size (seed: in-plane, default 224; improved: cube, default 32)")
            parser.add_argument("--batch-size", type=positive_int, default=None)
            parser.add_argument("--folds", type=int, default=None,
                                help="also run patient-level K-fold cross-validation (seed recipe: 5) and store its "
                                     "accuracy with CI in the package's metrics; fold models in OUT-cv/fold-k")
        if subcommand in ("infer", "batch"):
            add_options(parser, options.INFER)
        if subcommand == "bench":
            parser.add_argument("--size", type=positive_int, default=512,
                                help="in-plane size of the chest CT (default 512)")
            parser.add_argument("--slices", type=positive_int, default=300, help="slices (1 mm for 300; default 300)")
            parser.add_argument("--runs", type=int, default=3,
                                help="cold meddl infer runs of each mode (torch, runtime), alternating; 0: none")

    def phantom(self, out: Path, cases: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
        from .phantom import write_dataset

        manifest = write_dataset(out, cases, seed, size=args.size, n_slices=args.slices)
        return {"cases": cases, "clinical_csv": str(Path(out) / dataset.CLINICAL_CSV),
                "tumour_diameter_mm": [round(t["diameter_mm"], 1) for t in manifest["truth"]]}

    def _cohort(self, data: Path, args: argparse.Namespace) -> dataset.LungCohort:
        import sys

        cohort = dataset.scan_dataset(data, min_slices=args.min_slices)
        for pid, why in cohort.unusable.items():
            print(f"unusable study {pid}: {why}", file=sys.stderr)
        if not cohort.studies:
            raise InputError(f"{data}: no usable study (see the reasons above)")
        return cohort

    def train(self, args: argparse.Namespace) -> dict[str, Any]:
        from . import model

        cohort = self._cohort(Path(args.data), args)
        options = dict(batch_size=args.batch_size, size=args.size, seed=args.seed,
                       device=args.device, force_cpu=args.force_cpu)
        cv = None
        folds = args.folds
        if folds:
            cv = model.cross_validate(cohort.studies, Path(f"{args.out}-cv"), args.recipe, folds=folds,
                                      epochs=args.epochs, max_minutes=args.max_minutes, **options)
        result = model.train_model(cohort.studies, args.out, args.recipe, epochs=args.epochs,
                                   max_minutes=args.max_minutes, **options)
        if cv is not None:
            model.add_metrics(result.package, cv)
        out = {"package": str(result.package), "best_epoch": result.best_epoch, "best_metrics": result.best_metrics,
               "epochs_run": result.epochs_run, "seconds": round(result.seconds, 1), "unusable": cohort.unusable}
        return {**out, **(cv or {})}

    def evaluate(self, args: argparse.Namespace) -> dict[str, Any]:
        from MedDLLib.device import select_device

        from . import model

        cohort = self._cohort(Path(args.data), args)
        out = args.out
        km_png = Path(out).resolve().with_name("km.png") if out else None  # absolute: metrics.json may move
        metrics = model.evaluate_model(args.model, cohort.studies, km_png=km_png,
                                       device=select_device(args.device, args.force_cpu))
        metrics.pop("risk", None)
        metrics.pop("patients", None)
        if km_png is not None:
            metrics["km_png"] = str(km_png)
        return metrics

    # ------------------------------------------------------------------------------------------------ pipeline
    def read_study(self, path: Path, package: LoadedModel | None, options: Any) -> Study:
        """A DICOM folder holding one CT series, or an NRRD/NIfTI file."""
        from MedDLLib.dicom import read_dicom_folder
        from MedDLLib.io import read_volume_file

        from .preprocess import compact_hu

        # headers kept: the DICOM SEG takes what it needs from them instead of reading 300 files again
        volume = read_dicom_folder(path, keep_headers=True) if Path(path).is_dir() else read_volume_file(path)
        return Study({"CT": compact_hu(volume)}, "CT", path)  # int32 HU as int16: half the input's memory

    def compute(self, inputs: Study, package: LoadedModel | None, options: Any, progress: Any = None,
                cancel: Any = None) -> Computed:
        from .logic import compute, to_computed

        result = compute(inputs.reference_volume, package.network, package.metadata, options, progress, cancel,
                         package.device)
        return to_computed(result, package.name)

    def bench(self, args: argparse.Namespace) -> dict[str, Any]:
        """End-to-end ``meddl infer lung`` (read DICOM, lungs, network, Grad-CAM, outputs) on a ``--slices`` x
        ``--size``^2 phantom chest CT, in a child process (its own peak memory); see :mod:`.bench`."""
        from .bench import bench_cold_and_runtime, bench_inference

        size, slices = args.size, args.slices
        result = bench_inference(size, slices, force_cpu=args.force_cpu, device=args.device)
        if args.runs > 0:  # torch eager vs the chosen runtime, side by side
            from MedDLLib.bench import task_table

            result["cold_and_runtime"] = bench_cold_and_runtime(size, slices, runs=args.runs)
            print(task_table(result["cold_and_runtime"]))
        return result

    def demo(self, out: Path, args: argparse.Namespace) -> dict[str, Any]:
        """Phantoms -> both recipes (same data, same fixed epochs) -> held-out evaluation -> one inference.

        32 training/validation and 24 held-out 64 x 64 x 24 phantoms; the improved recipe on 16^3 tumour crops,
        the seed on 20 x 24 x 24 middle slices, 10 epochs each; ``--quick``: 12 / 12 phantoms, 2 epochs.
        ``metrics.json`` holds the improved recipe's metrics and the seed's as ``seed_*``; ``km.png`` /
        ``km_seed.png`` are their Kaplan-Meier curves with the number at risk.
        """
        from MedDLLib.demo import figure, headline
        from MedDLLib.io import atomic_write_json

        from . import model
        from .phantom import write_dataset

        seed = int(getattr(args, "seed", 0))
        quick = bool(getattr(args, "quick", False))
        n_train, n_test, epochs = (12, 12, 2) if quick else (32, 24, 10)
        device, force_cpu = getattr(args, "device", None), getattr(args, "force_cpu", False)
        write_dataset(out / "train", n_train, seed + 10)
        write_dataset(out / "test", n_test, seed + 11)
        train = dataset.scan_dataset(out / "train").studies
        test = dataset.scan_dataset(out / "test").studies
        results = {}
        for recipe_name, size in (("improved", 16), ("seed", 24)):
            package = out / f"lung-{recipe_name}"
            model.train_model(train, package, recipe_name, epochs=epochs, size=size, seed=seed, device=device,
                              force_cpu=force_cpu)
            km = out / ("km.png" if recipe_name == "improved" else "km_seed.png")
            metrics = model.evaluate_model(package, test, km_png=km, n_boot=500)
            metrics.pop("risk", None)
            metrics.pop("patients", None)
            results[recipe_name] = metrics
        metrics = {**results["improved"], **{f"seed_{k}": v for k, v in results["seed"].items()}}
        atomic_write_json(out / "metrics.json", metrics)
        ns = argparse.Namespace(device=device, force_cpu=force_cpu)
        result = self.infer(test[0].folder, str(out / "lung-improved"), out / "infer", ns)
        seed_c = results["seed"]["c_index"]
        what = (f"{n_train} synthetic chest CT studies (64 x 64 x 24, one lung tumour whose diameter drives "
                f"survival, about 30 % censored) trained both recipes for {epochs} epochs each: the improved one "
                f"(3D network on a cube around the tumour candidate, Cox loss) and the seed (middle slices, "
                f"died-before-median class, censoring ignored); "
                f"{n_test} held-out patients were ranked. Seed recipe C-index: {seed_c:.3f} (README 0.377).")
        return {
            "what": what,
            "headline": headline(
                "C-index of the predicted risk, improved recipe", metrics["c_index"], metrics["c_index_ci_low"],
                metrics["c_index_ci_high"], readme=0.743, readme_setting="same set-up",
                meaning="The fraction of comparable patient pairs whose predicted risks are in the order of their "
                        "survival (0.5: chance, 1: perfect). On phantoms survival follows a planted tumour size; "
                        "real survival depends on much that a CT does not show."),
            "figures": [
                figure(out / "infer" / "overlay.png", f"A held-out phantom: the lungs segmented (right and left) "
                       f"with the Grad-CAM heatmap of the risk network; risk group {result['risk_group']}."),
                figure(out / "km.png", f"Kaplan-Meier survival of the held-out patients split into predicted low and "
                       f"high risk (improved recipe), 95 % bands, log-rank p {metrics['logrank_p']:.3g}; the table "
                       f"under it is the number still at risk."),
                figure(out / "km_seed.png", "The same for the seed recipe."),
            ],
            "metrics": "metrics.json", "risk_group": result["risk_group"], "total_lung_ml": result["total_lung_ml"],
        }


TASK = LungTask()
