"""``meddl <subcommand> glioma``: MGMT classification for the shared command line.

``meddl infer glioma --input STUDY --model M --output OUT``: STUDY is a case folder with sequence sub-folders
(``FLAIR/ T1w/ T1wCE/ T2w/``, DICOM), a folder of volume files named after the sequences (``T1wCE.nrrd``...),
one DICOM series folder or one NRRD/NIfTI file (the last two are taken as the model's first sequence). A volume
file has no DICOM header, so its VOI LUT cannot be applied: ``--voi-dicom T1wCE=FILE`` names a DICOM file of the
series it came from (what the widget does for nodes loaded through Slicer's DICOM module). Writes:

* ``heatmap.nrrd`` -- Grad-CAM of the methylated output in the geometry of the reference (first) sequence, 0..1;
* ``overlay.png`` -- the axial slice through the heatmap's centre of mass, heatmap over the reference sequence;

and returns the dict the shared command writes as ``result.json``: ``probability``, ``model_card`` (short text
with the caveat), ``methylated``, ``threshold``, the window (``window_first_slice``, ``window_last_slice``, ...),
``summary``.

``meddl evaluate glioma --data D --model M --out metrics.json``: flat ``auroc``, ``auroc_ci_low``,
``auroc_ci_high`` (95 % bootstrap over cases) on the labelled cases of D. ``meddl train glioma ... --folds K
--cv-seeds S`` first runs repeated cross-validation (``auroc_mean``, ``auroc_sd``, CI) and stores it in the
model's card, then trains the final model on all cases.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from MedDLLib.errors import InputError
from MedDLLib.options import add_arguments as add_options
from MedDLLib.pipeline import Computed, LoadedModel, PipelineTask, Study

from . import options
from .dataset import SEQUENCES
from .logic import GliomaOptions, HEATMAP_NRRD, OUTPUTS  # noqa: F401  (HEATMAP_NRRD: the output contract)

OVERLAY_PNG = "overlay.png"


def read_study(path: str | Path, sequences: list[str]) -> dict[str, Any]:
    """The study at ``path`` as ``{sequence: Volume}`` (see the module docstring for the accepted forms).

    Only the sequences in ``sequences`` are read from a case folder; a single series or file becomes
    ``sequences[0]``. Volume files are read with :func:`MedDLLib.io.read_volume_file` (no modality: their values
    are judged by :func:`~.preprocess.check_mri`), DICOM with :func:`MedDLLib.dicom.read_dicom_folder`.
    """
    from MedDLLib import dicom
    from MedDLLib import io as mio

    path = Path(path)
    if path.is_file():
        if not mio.is_volume_file(path):
            raise InputError(f"{path}: not a volume file ({', '.join(mio.VOLUME_FILE_SUFFIXES)}) nor a folder")
        return {sequences[0]: mio.read_volume_file(path, name=sequences[0])}
    if not path.is_dir():
        raise InputError(f"{path}: no such study")
    if any((path / s).is_dir() for s in SEQUENCES):
        missing = [s for s in sequences if not (path / s).is_dir()]
        if missing:
            raise InputError(f"{path}: the model needs {', '.join(sequences)}; no folder {', '.join(missing)}")
        return {s: dicom.read_dicom_folder(path / s) for s in sequences}
    files = {p.name.split(".")[0]: p for p in sorted(path.iterdir()) if mio.is_volume_file(p)}
    if files:
        missing = [s for s in sequences if s not in files]
        if missing:
            raise InputError(f"{path}: the model needs {', '.join(sequences)}; no volume file named "
                             f"{', '.join(missing)} (found {', '.join(files)})")
        return {s: mio.read_volume_file(files[s], name=s) for s in sequences}
    return {sequences[0]: dicom.read_dicom_folder(path)}


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1] (``--signal``); anything else is a usage error."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def parse_voi_dicom(items: list[str] | None) -> dict[str, str]:
    """``["T1wCE=/path/Image-1.dcm", ...]`` -> ``{sequence: file}``, checking names and files.

    Raises:
        InputError: not ``SEQUENCE=FILE``, an unknown sequence, or a file that is not a readable DICOM file.
    """
    import pydicom

    voi: dict[str, str] = {}
    for item in items or []:
        name, sep, file = item.partition("=")
        if not sep or not file:
            raise InputError(f"--voi-dicom {item!r}: expected SEQUENCE=FILE")
        if name not in SEQUENCES:
            raise InputError(f"--voi-dicom {item!r}: {name!r} is not one of {', '.join(SEQUENCES)}")
        try:
            pydicom.dcmread(file, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise InputError(f"--voi-dicom {item!r}: cannot read {file} as DICOM ({exc})") from None
        voi[name] = file
    return voi


def infer_study(input_path: str | Path, model: str | Path, output: str | Path, *,
                voi_dicom: dict[str, str] | None = None, **values: Any) -> dict[str, Any]:
    """One study into ``output`` through the shared pipeline (:meth:`MedDLLib.pipeline.PipelineTask.run`; options
    ``threshold``, ``device``, ``progress``); ``voi_dicom``: sequence -> a DICOM file whose VOI LUT applies to that
    sequence's volume (volume-file input). Returns the ``result.json`` values."""
    voi = [f"{sequence}={file}" for sequence, file in (voi_dicom or {}).items()]
    return TASK.run(input_path, model, output, voi_dicom=voi, **values)


class GliomaTask(PipelineTask):
    """MGMT promoter methylation of a glioma from brain MRI (RSNA-MICCAI 2021 layout)."""

    name = "glioma"
    title = "Glioma Classifier: MGMT promoter methylation from brain MRI (research use only)"
    outputs = OUTPUTS
    infer_options = options.INFER
    options_type = GliomaOptions
    networks = {"glioma.evidence_resnet10": "GliomaClassifierLib.model:EvidenceResNet10"}

    def add_arguments(self, subcommand: str, parser: argparse.ArgumentParser) -> None:
        from MedDLLib.commands_tasks import positive_int

        if subcommand == "phantom":
            parser.add_argument("--size", type=positive_int, default=64,
                                help="in-plane size in pixels (>= 8; real data: 256-512)")
            parser.add_argument("--slices", type=positive_int, default=32, help="axial slices per study (>= 8)")
            parser.add_argument("--signal", type=unit_interval, default=1.0,
                                help="strength of the label-linked signal in [0, 1] (0 = none)")
            parser.add_argument("--sequences", nargs="+", default=None, choices=SEQUENCES, metavar="SEQUENCE",
                                help=f"series to write (default all: {' '.join(SEQUENCES)})")
            parser.add_argument("--no-flagged", action="store_true",
                                help="do not give the last three cases the flagged ids 00109, 00123, 00709")
        if subcommand in ("train", "bench"):
            parser.add_argument("--size", type=positive_int, default=256, help="network input size (default 256)")
            parser.add_argument("--depth", type=positive_int, default=64, help="slices in the window (default 64)")
        if subcommand == "train":
            parser.add_argument("--sequences", nargs="+", default=None,
                                help="input sequences as channels (default T1wCE; the seed uses one)")
            parser.add_argument("--batch-size", type=positive_int, default=None)
            parser.add_argument("--lr", type=float, default=None)
            parser.add_argument("--widen-factor", type=float, default=1.0, help="resnet10 width multiplier")
            parser.add_argument("--folds", type=int, default=0,
                                help="cross-validate first with this many folds (0: no CV; recipes use 5)")
            parser.add_argument("--cv-seeds", type=positive_int, default=None,
                                help="CV repetitions (default: the recipe's: seed 1, improved 3)")
            parser.add_argument("--shuffle-labels", action="store_true",
                                help="negative control: permute the labels before training")
            parser.add_argument("--cache", type=Path, default=None, help="folder of preprocessed inputs (reused)")
        if subcommand in ("infer", "batch"):
            add_options(parser, options.INFER)
        if subcommand == "infer":
            parser.add_argument("--voi-dicom", action="append", default=None, metavar="SEQUENCE=FILE",
                                help="a DICOM file of the series a volume-file input came from: its VOI LUT "
                                     "(window) is applied as when reading the DICOM series (repeatable)")
        if subcommand == "bench":
            parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
            parser.add_argument("--runs", type=int, default=3,
                                help="cold meddl infer runs of each mode (torch, runtime), alternating; 0: none")

    # ------------------------------------------------------------------------------------------------ phantom
    def phantom(self, out: Path, cases: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
        from .phantom import write_dataset

        sequences = tuple(args.sequences or SEQUENCES)
        m = write_dataset(out, cases, seed, size=args.size, n_slices=args.slices,
                          signal=args.signal, include_flagged=not args.no_flagged,
                          sequences=sequences)
        return {"out": str(out), "cases": cases, "methylated": sum(t["MGMT_value"] for t in m["truth"]),
                "signal": m["signal"], "achievable_auroc": round(m["achievable_auroc"], 4),
                "sequences": list(sequences)}

    # ------------------------------------------------------------------------------------------------ train
    def train(self, args: argparse.Namespace) -> dict[str, Any]:
        import dataclasses

        import numpy as np

        from .dataset import scan_dataset
        from .model import cross_validate, recipe, train_model

        data = scan_dataset(args.data)
        for problem in data.problems[:20]:
            print(f"warning: {problem}")
        cases = data.cases
        if args.shuffle_labels:
            labels = np.random.default_rng(12345).permutation([c.label for c in cases])
            cases = [dataclasses.replace(c, label=int(v)) for c, v in zip(cases, labels)]
        common = dict(epochs=args.epochs, max_minutes=args.max_minutes, batch_size=args.batch_size,
                      lr=args.lr, size=args.size, depth=args.depth,
                      sequences=args.sequences, widen_factor=args.widen_factor,
                      device=args.device, force_cpu=args.force_cpu, cache_dir=args.cache)
        metrics: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        folds = args.folds
        if folds:
            r = recipe(args.recipe, size=args.size, depth=args.depth, sequences=common["sequences"])
            n_seeds = args.cv_seeds
            seeds = list(range(args.seed, args.seed + n_seeds)) if n_seeds else [args.seed + s for s in r.cv_seeds]
            cv_args = dict(common)
            cv_args["cache_dir"] = cv_args["cache_dir"] or Path(str(args.out) + ".cv") / "cache"
            cv = cross_validate(cases, Path(str(args.out) + ".cv"), args.recipe, folds=folds, seeds=seeds, **cv_args)
            metrics["auroc"] = {"value": cv["auroc"], "ci95": [cv["auroc_ci_low"], cv["auroc_ci_high"]],
                                "mean_over_seeds": cv["auroc_mean"], "sd_over_seeds": cv["auroc_sd"],
                                "how": f"{folds}-fold CV x {len(seeds)} seeds, out-of-fold, bootstrap over cases"}
            summary.update({f"cv_{k}": v for k, v in cv.items() if k in
                            ("auroc", "auroc_ci_low", "auroc_ci_high", "auroc_mean", "auroc_sd", "auroc_per_seed")})
        result = train_model(cases, args.out, args.recipe, seed=args.seed, metrics=metrics,
                             description=f"meddl train glioma --data {args.data} --recipe {args.recipe}"
                                         + (" (labels shuffled)" if args.shuffle_labels else ""),
                             **common)
        summary.update({"package": str(result.package), "recipe": args.recipe, "best_epoch": result.best_epoch,
                        "epochs_run": result.epochs_run, "seconds": round(result.seconds, 1),
                        **{f"val_{k}": v for k, v in result.best_metrics.items()}})
        return summary

    # ------------------------------------------------------------------------------------------------ evaluate
    def evaluate(self, args: argparse.Namespace) -> dict[str, Any]:
        from MedDLLib.device import select_device

        from .dataset import scan_dataset
        from .model import evaluate_model

        data = scan_dataset(args.data)
        device = select_device(args.device, args.force_cpu)
        out = args.out  # the figures go beside metrics.json (absolute paths: it may move)
        metrics = evaluate_model(args.model, data.cases, device=device,
                                 figures_dir=Path(out).resolve().parent if out else None)
        metrics["excluded_cases"] = data.excluded
        metrics["data_problems"] = len(data.problems)
        return metrics

    # ------------------------------------------------------------------------------------------------ infer
    def find_studies(self, root: Path) -> list[Path]:
        """Case folders ``root/train/<id>`` (the RSNA-MICCAI layout) or, without ``train``, each folder and
        NRRD/NIfTI file of ``root`` (:meth:`MedDLLib.tasks.Task.find_studies`: a labels CSV is not a study)."""
        from .dataset import IMAGE_FOLDER

        return super().find_studies(root / IMAGE_FOLDER if (root / IMAGE_FOLDER).is_dir() else root)

    # ------------------------------------------------------------------------------------------------ pipeline
    def options(self, args: argparse.Namespace, device: Any) -> Any:
        chosen = super().options(args, device)
        chosen.voi_dicom = parse_voi_dicom(getattr(args, "voi_dicom", None))
        return chosen

    def read_study(self, path: Path, package: LoadedModel | None, options: Any) -> Study:
        from .preprocess import InputSpec, with_voi_sources

        sequences = list(InputSpec.from_metadata(package.metadata["input"]).sequences)
        if options.tumour_model:  # the BraTS bundle reads all four sequences
            from .tumour import SEQUENCES as TUMOUR_SEQUENCES

            sequences += [s for s in TUMOUR_SEQUENCES.values() if s not in sequences]
        volumes = with_voi_sources(read_study(path, sequences), options.voi_dicom)
        return Study(dict(volumes), sequences[0], path)

    def compute(self, inputs: Study, package: LoadedModel | None, options: Any, progress: Any = None,
                cancel: Any = None) -> Computed:
        from .logic import compute, to_computed

        return to_computed(compute(inputs.volumes, package, options, progress, cancel), inputs.path)

    # ------------------------------------------------------------------------------------------------ bench
    def bench(self, args: argparse.Namespace) -> dict[str, Any]:
        from .bench import format_table, run_bench

        result = run_bench(size=args.size, depth=args.depth, threads=args.threads, runs=args.runs)
        print(format_table(result))
        return result

    # ------------------------------------------------------------------------------------------------ demo
    def demo(self, out: Path, args: argparse.Namespace) -> dict[str, Any]:
        """Phantoms -> improved recipe, fixed work -> held-out evaluation (ROC, reliability) -> one inference.

        Fixed work, so the figures are the same on every machine: 240 training / 24 held-out T1wCE phantoms of
        48 x 48 x 24 voxels, 12 epochs of the improved recipe at 1/4 width (the tested set-up,
        Testing/test_glioma_model.py, made smaller; the validation AUROC levels off after about 10 epochs);
        ``--quick``: 48 / 16 phantoms, 2 epochs.
        """
        from MedDLLib.demo import figure, headline
        from MedDLLib.io import atomic_write_json

        from .dataset import scan_dataset
        from .model import evaluate_model, train_model
        from .phantom import write_dataset

        out = Path(out)
        seed = int(getattr(args, "seed", 0))
        quick = bool(getattr(args, "quick", False))
        n_train, n_test, epochs = (48, 16, 2) if quick else (240, 24, 12)
        kw = dict(size=48, n_slices=24, sequences=("T1wCE",))
        write_dataset(out / "train", n_train, seed, **kw)
        write_dataset(out / "test", n_test, seed + 1000, include_flagged=False, **kw)
        train_data, test_data = scan_dataset(out / "train"), scan_dataset(out / "test")
        result = train_model(train_data.cases, out / "model", "improved", epochs=epochs, size=48, depth=24,
                             widen_factor=0.25, lr=1e-3, batch_size=8, seed=seed,
                             device=getattr(args, "device", None), force_cpu=getattr(args, "force_cpu", False),
                             cache_dir=out / "cache", description="meddl demo glioma phantoms (signal 1)")
        metrics = evaluate_model(out / "model", test_data.cases, cache_dir=out / "cache", n_boot=500,
                                 figures_dir=out)
        atomic_write_json(out / "metrics.json", metrics)
        case = next(c for c in test_data.cases if c.label == 1)
        inferred = infer_study(case.folders["T1wCE"].parent, str(out / "model"), out / "infer")
        atomic_write_json(out / "infer" / "result.json", inferred)
        what = (f"{n_train} synthetic brain MRI studies (T1wCE, 48 x 48 x 24 voxels; the tumour rim enhances more "
                f"in the 'methylated' ones, with noise, so the best achievable AUROC is 0.97) trained the "
                f"improved recipe (EvidenceResNet10 at 1/4 width) "
                f"for {epochs} epochs (best epoch {result.best_epoch}); {n_test} held-out studies were scored.")
        return {
            "what": what,
            "headline": headline(
                "AUROC for MGMT methylation, per held-out study", metrics["auroc"], metrics["auroc_ci_low"],
                metrics["auroc_ci_high"], readme=0.879,
                readme_setting="400 training / 32 held-out phantoms, 20 epochs; the demo trains on fewer",
                meaning="How well the model ranks the methylated phantoms above the unmethylated ones (0.5: "
                        "chance, 1: perfect). The phantoms carry a planted signal; published models reach about "
                        "0.5-0.6 on real external MRI, and this demo says nothing about that."),
            "figures": [
                figure(out / "infer" / OVERLAY_PNG, f"One held-out methylated phantom: Grad-CAM evidence over "
                       f"the T1wCE slice; the model said probability {inferred['probability']:.2f}. Read it as "
                       "where the model found evidence, not a tumour outline."),
                figure(metrics["roc_png"], "ROC curve on the held-out phantoms with its 95 % bootstrap band; "
                       "the dashed line is chance."),
                figure(metrics["reliability_png"], f"Reliability diagram: predicted probability against the "
                       f"observed fraction methylated (ECE {metrics['ece']:.3f}: the average gap, 0 is perfect)."),
            ],
            "metrics": "metrics.json", "summary": inferred["summary"],
        }


TASK = GliomaTask()
