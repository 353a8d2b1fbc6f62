"""``meddl phantom|train|evaluate|infer|batch|bench|demo lgg``: the LGGSegmenter task of the shared command.

``meddl infer lgg --input STUDY --output OUT`` takes a kaggle_3m study folder of .tif slices, a DICOM folder
(one FLAIR series, or the pre-contrast/FLAIR/post-contrast series) or an NRRD/NIfTI FLAIR file, and writes:

* ``tumour.seg.nrrd`` (segmentation, reference geometry = the input), ``tumour_label.nrrd`` (labelmap),
  ``features.csv`` (per-slice area and the 3D features), ``overlay.png`` (the slice of largest tumour area),
  ``gradcam.nrrd`` with ``--gradcam``;
* and returns (the shared command writes it as ``result.json``) ``tumour_volume_ml``, ``centroid_ras_mm`` (3),
  ``spread_mm`` (3), ``max_area_mm2``, ``ellipsoid_ratio``, ``margin_fluctuation_mm``, ``n_slices``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from MedDLLib.options import add_arguments as add_options
from MedDLLib.pipeline import Computed, LoadedModel, PipelineTask, Study

from . import dataset, model, options
from .logic import LGGOptions, OUTPUTS


class LGGTask(PipelineTask):
    """Lower-grade glioma segmentation (TCGA-LGG, kaggle_3m layout)."""

    name = "lgg"
    title = "LGG Segmenter: lower-grade glioma segmentation and tumour features"
    outputs = OUTPUTS
    infer_options = options.INFER
    options_type = LGGOptions
    networks = {"LGGSegmenter.BasicUNetPlusPlus": "LGGSegmenterLib.model:_unetpp_factory",
                "lgg.buda_unet": "LGGSegmenterLib.model:BudaUNet"}
    importers = {"buda-unet": "LGGSegmenterLib.model:import_buda_unet"}

    def add_arguments(self, subcommand: str, parser: argparse.ArgumentParser) -> None:
        from MedDLLib.commands_tasks import positive_int

        if subcommand == "phantom":
            parser.add_argument("--size", type=positive_int, default=64,
                                help="slice size in pixels (>= 32; real data: 256)")
            parser.add_argument("--slices", type=positive_int, default=16, help="slices per study (>= 6; real: 20-88)")
            parser.add_argument("--no-dicom", action="store_true", help="do not also write DICOM series")
        if subcommand == "train":
            parser.add_argument("--network", choices=sorted(model.NETWORKS), default=model.DEFAULT_NETWORK)
            parser.add_argument("--width", type=positive_int, default=model.DEFAULT_WIDTH, help="first-level channels")
            parser.add_argument("--size", type=positive_int, default=None,
                                help="network input side (default: slice size)")
            parser.add_argument("--channels", choices=("all", "FLAIR"), default="all",
                                help="input channels: all three (default) or FLAIR alone")
            parser.add_argument("--batch-size", type=positive_int, default=None)
            parser.add_argument("--lr", type=float, default=None)
        if subcommand in ("infer", "batch"):
            add_options(parser, options.INFER)
        if subcommand == "bench":
            parser.add_argument("--networks", nargs="+", choices=sorted(model.NETWORKS),
                                default=[model.DEFAULT_NETWORK],
                                help="networks whose forward is timed (default: the improved recipe's)")
            parser.add_argument("--runs", type=positive_int, default=3,
                                help="cold end-to-end runs of each mode (torch, runtime), alternating")
            parser.add_argument("--size", type=positive_int, default=256)
            parser.add_argument("--slices", type=positive_int, default=88)
            parser.add_argument("--width", type=positive_int, default=model.DEFAULT_WIDTH)

    def phantom(self, out: Path, cases: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
        from .phantom import write_dataset

        manifest = write_dataset(out, cases, seed, size=args.size, n_slices=args.slices, dicom=not args.no_dicom)
        return {"cases": cases, "dataset": str(Path(out) / "kaggle_3m"),
                "dicom": str(Path(out) / "dicom") if not args.no_dicom else None,
                "tumour_volume_ml": [t["tumour_volume_ml"] for t in manifest["truth"]]}

    def train(self, args: argparse.Namespace) -> dict[str, Any]:
        channels = dataset.CHANNELS if args.channels == "all" else ("FLAIR",)
        result = model.train_model(args.data, args.out, recipe=args.recipe, network=args.network,
                                 width=args.width, size=args.size,
                                 channels=channels, epochs=args.epochs, max_minutes=args.max_minutes,
                                 seed=args.seed, device=args.device, force_cpu=args.force_cpu,
                                 batch_size=args.batch_size, lr=args.lr)
        return {"package": str(result.package), "best_epoch": result.best_epoch,
                "best_metrics": result.best_metrics, "epochs_run": result.epochs_run,
                "seconds": round(result.seconds, 1)}

    def evaluate(self, args: argparse.Namespace) -> dict[str, Any]:
        from MedDLLib.device import select_device

        return model.evaluate_model(args.data, args.model, select_device(args.device, args.force_cpu))

    def find_studies(self, root: Path) -> list[Path]:
        """Every entry of ``root`` (or of its ``kaggle_3m`` folder, the real dataset's layout) that ``meddl infer
        lgg`` takes as a study: each folder (kaggle_3m study of .tif slices, DICOM study, folder of
        ``<channel>.nrrd`` files) and each NRRD/NIfTI file. Other files (``data.csv``, notes) and hidden entries are
        not studies; a folder that turns out unreadable is reported by the batch as a failure with its reason."""
        return super().find_studies(dataset.dataset_root(root))

    # ------------------------------------------------------------------------------------------------ pipeline
    def read_study(self, path: Path, package: LoadedModel | None, options: Any) -> Study:
        from .logic import read_study, reference_channel

        channels = model.channel_names(package.metadata)
        return Study(read_study(path, channels), reference_channel(channels), path)

    def compute(self, inputs: Study, package: LoadedModel | None, options: Any, progress: Any = None,
                cancel: Any = None) -> Computed:
        from .logic import compute, stack_channels, to_computed

        image, geometry = stack_channels(inputs.volumes)
        network = package.network if options.gradcam else package.runner()  # no torch on a recorded export
        result = compute(image, geometry, network, package.metadata, options, progress, cancel, package.device)
        return to_computed(result, package.metadata, package.name)

    def bench(self, args: argparse.Namespace) -> dict[str, Any]:
        """Cold ``meddl infer lgg`` on a ``--slices`` x ``--size``^2 DICOM patient and each network's forward, torch
        eager against the chosen runtime, side by side (see :mod:`.bench`)."""
        from MedDLLib.bench import task_table

        from .bench import run_bench

        result = run_bench(size=args.size, n_slices=args.slices, width=args.width, networks=args.networks,
                           runs=args.runs)
        print(task_table(result))
        return result

    def demo(self, out: Path, args: argparse.Namespace) -> dict[str, Any]:
        """Phantoms -> improved recipe, fixed work -> held-out evaluation -> one inference with Grad-CAM.

        Fixed work: 16 training / 8 held-out phantoms of 64 x 64 x 16, a U-Net of width 8, 30 epochs;
        ``--quick``: 6 / 4 phantoms, 3 epochs.
        """
        from MedDLLib.demo import figure, headline
        from MedDLLib.io import atomic_write_json

        from .phantom import write_dataset

        seed, quick = int(args.seed), bool(args.quick)
        n_train, n_test, epochs = (6, 4, 3) if quick else (16, 8, 30)
        write_dataset(out / "train", n_train, seed, n_slices=16)
        write_dataset(out / "test", n_test, seed + 1000, n_slices=16)
        package = out / "lgg-improved"
        trained = model.train_model(out / "train", package, recipe="improved", width=8, epochs=epochs, seed=seed,
                                  device=args.device, force_cpu=args.force_cpu, progress=False)
        metrics = model.evaluate_model(out / "test", package, seed=seed)
        atomic_write_json(out / "metrics.json", metrics)
        case = dataset.scan_dataset(out / "test")[0]
        ns = argparse.Namespace(device=args.device, force_cpu=args.force_cpu, gradcam=True)
        result = self.infer(case.folder, str(package), out / "infer", ns)
        slice_all = metrics.get("dice_per_slice_all")
        what = (f"{n_train} synthetic brain MRI studies in the kaggle_3m layout (pre-contrast, FLAIR, post-contrast "
                f"slices of 64 x 64, 16 per patient, a planted tumour) trained the improved recipe (U-Net, width 8) "
                f"for {epochs} epochs (best epoch {trained.best_epoch}); {n_test} held-out patients were segmented"
                + (f". Per-slice Dice over all slices, the protocol that inflated published scores: {slice_all:.3f}."
                   if isinstance(slice_all, float) else "."))
        return {
            "what": what,
            "headline": headline(
                "Dice overlap with the planted tumour, mean over held-out patients", metrics["dice_per_patient_mean"],
                metrics.get("dice_per_patient_mean_ci_low"), metrics.get("dice_per_patient_mean_ci_high"),
                readme=0.875, readme_setting="the tested set-up",
                meaning="How much the predicted tumour and the planted one overlap, one number per patient (0: "
                        "none, 1: identical). Phantom tumours are smooth, bright blobs; real lower-grade gliomas "
                        "are harder."),
            "figures": [figure(out / "infer" / "overlay.png",
                               f"A held-out phantom, FLAIR slice of largest predicted tumour: the segmentation "
                               f"outline and the Grad-CAM heatmap; tumour volume "
                               f"{result['tumour_volume_ml']:.1f} ml.")],
            "metrics": "metrics.json", "tumour_volume_ml": result["tumour_volume_ml"],
        }


TASK = LGGTask()
