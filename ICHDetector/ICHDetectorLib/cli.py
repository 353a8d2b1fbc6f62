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
from pathlib import Path
from typing import Any

from MedDLLib.errors import InputError
from MedDLLib.options import add_arguments as add_options
from MedDLLib.pipeline import Computed, LoadedModel, PipelineTask, Study

from . import options
from .logic import HEATMAP_NRRD, OUTPUTS, PROBABILITIES_CSV, SUSPECTED_SEG  # noqa: F401  (the output contract)
from .logic import ICHOptions

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
        return dicom.read_dicom_folder(path, fix_bad_intercept=True, keep_headers=True)  # headers: the SEG's
    if not mio.is_volume_file(path):
        raise InputError(f"{path}: not a DICOM folder nor a volume file ({', '.join(mio.VOLUME_FILE_SUFFIXES)})")
    return mio.read_volume_file(path)


def infer_study(input_path: Path, model: str, output: Path, **values: Any) -> dict[str, Any]:
    """One study into ``output`` through the shared pipeline (:meth:`MedDLLib.pipeline.PipelineTask.run`; options
    ``heatmap_label``, ``threshold``, ``device``, ``progress``); returns the ``result.json`` values."""
    return TASK.run(input_path, model, output, **values)


class ICHTask(PipelineTask):
    """Intracranial hemorrhage detection and subtyping on head CT (RSNA 2019 layout)."""

    name = "ich"
    title = "ICH Detector: intracranial hemorrhage on head CT"
    outputs = OUTPUTS
    infer_options = options.INFER
    options_type = ICHOptions

    # ------------------------------------------------------------------------------------------------ pipeline

    def load_network(self, model: Any, device: Any) -> tuple[Any, Any]:
        from .model import load_model

        return load_model(model, device)

    def read_study(self, path: Path, package: LoadedModel | None, options: Any) -> Study:
        """The study as a HU volume, checked to be a head CT (:func:`~.preprocess.check_head_ct`) here: in a cold
        ``meddl infer`` the forked reader runs the check while this process loads torch, and :meth:`compute`
        takes its :class:`~.preprocess.HeadCTCheck` (a refusal is raised here, the same message)."""
        from .preprocess import HEAD_CT_CHECK, HeadCTCheck, check_head_ct

        volume = read_study_volume(path)
        accept = bool(getattr(options, "accept_non_head", False))
        volume.metadata[HEAD_CT_CHECK] = HeadCTCheck(accept, check_head_ct(volume, accept_non_head=accept))
        return Study({"head CT": volume}, "head CT", path)

    def compute(self, inputs: Study, package: LoadedModel | None, options: Any, progress: Any = None,
                cancel: Any = None) -> Computed:
        from .logic import compute, to_computed
        from .preprocess import HEAD_CT_CHECK

        volume = inputs.reference_volume
        return to_computed(compute(volume, package, options, progress, cancel, volume.metadata.get(HEAD_CT_CHECK)),
                           inputs.path)
    networks = {"ich.seed_cnn": "ICHDetectorLib.model:SeedCNN", "ich.resnet2d": "ICHDetectorLib.model:ich_resnet2d"}

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
            options.THRESHOLD.add_argument(parser)
        if subcommand in ("infer", "batch"):
            add_options(parser, options.INFER)
        if subcommand == "bench":
            parser.add_argument("--stream-slices", type=positive_int, default=20000,
                                help="slices streamed in the training-throughput part (default 20000)")
            parser.add_argument("--runs", type=positive_int, default=3,
                                help="cold meddl infer runs of each mode (torch, runtime), alternating")

    # ------------------------------------------------------------------------------------------------ phantom
    def phantom(self, out: Path, cases: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
        from .phantom import write_dataset

        manifest = write_dataset(out, cases, seed, size=args.size, n_slices=args.slices)
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
                             batch_size=args.batch_size, size=args.size,
                             seed=args.seed, device=args.device, force_cpu=args.force_cpu,
                             num_workers=args.num_workers,
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
        # the figures go beside metrics.json (absolute paths: it may move)
        metrics = evaluate_model(args.model, data.studies, threshold=args.threshold, device=device,
                                 figures_dir=Path(args.out).resolve().parent)
        metrics["data_problems"] = len(data.problems)
        return metrics

    # ------------------------------------------------------------------------------------------------ bench
    def bench(self, args: argparse.Namespace) -> dict[str, Any]:
        from .bench import run_bench

        return run_bench(stream_slices=args.stream_slices, runs=args.runs)

    # ------------------------------------------------------------------------------------------------ demo
    def demo(self, out: Path, args: argparse.Namespace) -> dict[str, Any]:
        """Phantoms -> improved recipe, fixed work -> held-out evaluation (ROC, reliability) -> one inference.

        Fixed work: 96 training / 16 held-out studies of 64 x 64 x 12 (the README's data), 10 epochs (the README's
        20 take about twice as long); ``--quick``: 24 / 12 studies, 2 epochs.
        """
        import shutil

        from MedDLLib.demo import figure, headline
        from MedDLLib.io import atomic_write_json

        from .dataset import scan_dataset
        from .model import evaluate_model, train_model
        from .phantom import write_dataset

        out = Path(out)
        seed, quick = int(args.seed), bool(args.quick)
        n_train, n_test, epochs = (24, 12, 2) if quick else (96, 16, 10)
        write_dataset(out / "train", n_train, seed)
        write_dataset(out / "test", n_test, seed + 1000)
        train_data, test_data = scan_dataset(out / "train"), scan_dataset(out / "test")
        result = train_model(train_data.studies, out / "model", "improved", epochs=epochs, seed=seed,
                             device=args.device, force_cpu=args.force_cpu,
                             description="meddl demo ich phantoms")
        metrics = evaluate_model(out / "model", test_data.studies, figures_dir=out)
        atomic_write_json(out / "metrics.json", metrics)
        study = max(test_data.studies, key=lambda s: s.any_label)  # a positive study where there is one
        study_dir = out / "study"
        shutil.rmtree(study_dir, ignore_errors=True)
        study_dir.mkdir(parents=True)
        for p in study.paths:
            shutil.copy2(p, study_dir / p.name)
        inferred = infer_study(study_dir, str(out / "model"), out / "infer")
        atomic_write_json(out / "infer" / "result.json", inferred)
        sens, spec = metrics["study_sensitivity_any"], metrics["study_specificity_any"]
        what = (f"{n_train} synthetic head CT studies (64 x 64 pixels, 12 slices; half with a planted bleed of one "
                f"of the five subtypes, a quarter with a wrong rescale intercept) trained the improved recipe "
                f"(six sigmoid outputs) for {epochs} epochs (best epoch {result.best_epoch}); {n_test} held-out "
                f"studies ({metrics['n_slices']} slices) were scored. Per study, at probability "
                f"{metrics['study_threshold']:g}: sensitivity {sens:.2f}, specificity {spec:.2f}.")
        return {
            "what": what,
            "headline": headline(
                "AUROC for any haemorrhage, per slice", metrics["auroc_any"], metrics["auroc_any_ci_low"],
                metrics["auroc_any_ci_high"], readme=0.969, readme_setting="same data, 20 epochs; the demo trains 10",
                meaning="How well the model ranks slices with a planted bleed above slices without (0.5: "
                        "chance, 1: perfect); the interval resamples whole studies. Phantom bleeds are "
                        "brighter, simpler shapes than real ones."),
            "figures": [
                figure(out / "infer" / OVERLAY_PNG, f"A held-out study: Grad-CAM for 'any' and the suspected "
                       f"region over the slice of highest probability; study probability "
                       f"{inferred['any_probability']:.2f}."),
                figure(metrics["any_roc_png"], "ROC curve for 'any', per slice, with its 95 % bootstrap band "
                       "(whole studies resampled); the dashed line is chance."),
                figure(metrics["any_reliability_png"], f"Reliability diagram for 'any': predicted probability "
                       f"against the observed fraction of bleeding slices (ECE {metrics['any_ece']:.3f})."),
            ],
            "metrics": "metrics.json", "summary": inferred["summary"],
        }


TASK = ICHTask()
