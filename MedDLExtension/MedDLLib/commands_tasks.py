"""The task subcommands of ``meddl``: phantom, train, evaluate, infer, batch, bench, demo.

Every subcommand but ``demo`` reads ``meddl <subcommand> <task> [options]``. Parsing has two steps so that each
task can add its own options (:meth:`Task.add_arguments`) without the command loading every task up front:

1. ``meddl <subcommand>`` takes the task name and keeps the rest of the line unparsed;
2. the task is looked up (:func:`MedDLLib.tasks.get_task`, an unknown name lists the available ones) and a
   parser with the subcommand's common options plus the task's own parses the rest
   (``meddl train ich -h`` shows both; ``meddl train -h`` shows the common options and the tasks).

Common options::

    meddl phantom  <task> OUT --cases N --seed S
    meddl train    <task> --data D --out M [--recipe seed|improved] [--epochs E] [--max-minutes T]
                          [--device cpu|cuda] [--force-cpu] [--seed S]
    meddl evaluate <task> --data D --model M --out metrics.json [--device ...] [--force-cpu]
    meddl infer    <task> --input STUDY [--model M] --output OUT [--device ...] [--force-cpu]
    meddl batch    <task> --input ROOT [--model M] --output OUT [--resume] [--device ...] [--force-cpu]
    meddl bench    <task> [--out F.json] [--device ...] [--force-cpu]
    meddl bench    dicom --input DIR [--out F.json]
    meddl demo     [--output OUT] [--tasks T ...] [--quick] [--device ...] [--force-cpu] [--seed S]  (MedDLLib.demo)

A task method that raises :class:`NotImplementedError` gives one line, "task X does not support <subcommand>
yet", and exit status 1. Results are printed (``key: value``) and JSON files are written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import InputError
from .tasks import Task, get_task, task_names

#: ``meddl bench dicom --input DIR``: the DICOM reading benchmark (not a task).
BENCH_DICOM = "dicom"


# ---------------------------------------------------------------------------------------------------- options
def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None,
        help="compute device (default: cuda when available, else cpu)",
    )
    parser.add_argument("--force-cpu", action="store_true", help="use the CPU even when a GPU is available")


def _phantom_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", type=Path, help="folder for the synthetic dataset (created)")
    parser.add_argument("--cases", type=positive_int, default=8, help="number of studies (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (real layout or `meddl phantom`)")
    parser.add_argument("--out", type=Path, required=True, help="model package folder to write")
    parser.add_argument(
        "--recipe", choices=("seed", "improved"), default="improved",
        help="seed: the reference recipe; improved: MedDL's (default: improved)",
    )
    parser.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: the recipe's)")
    parser.add_argument(
        "--max-minutes", type=positive_float, default=None, help="time budget; stops keeping the best checkpoint"
    )
    _add_device_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _evaluate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="dataset folder")
    parser.add_argument("--model", required=True, help="model package (folder or cached model name)")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON file to write (e.g. metrics.json)")
    _add_device_options(parser)


def _infer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="one study: a DICOM folder or an NRRD/NIfTI file")
    parser.add_argument("--model", default=None, help="model package (folder or cached name; default: the task's)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the Slicer-loadable outputs")
    _add_output_format_option(parser)
    parser.add_argument("--dicom-source", type=Path, default=None, metavar="FILE",
                        help="a DICOM file (or folder) of the series an NRRD/NIfTI input was saved from: "
                        "segmentations then also go out as DICOM SEG referencing that series")
    _add_device_options(parser)


def _batch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="folder holding the studies")
    parser.add_argument("--model", default=None, help="model package (folder or cached name; default: the task's)")
    parser.add_argument("--output", type=Path, required=True, help="output folder: one sub-folder per study")
    parser.add_argument("--resume", action="store_true", help="skip studies finished by an earlier run")
    _add_output_format_option(parser)
    _add_device_options(parser)


def _add_output_format_option(parser: argparse.ArgumentParser) -> None:
    from .outputs import OUTPUT_FORMATS

    parser.add_argument(
        "--output-format", choices=tuple(OUTPUT_FORMATS), default="nrrd",
        help="file format of the volume outputs (heatmaps, labelmaps): nrrd (default) or nifti (.nii.gz); "
        "segmentations are always .seg.nrrd, plus a DICOM SEG (.seg.dcm) when the input is DICOM",
    )


def _bench_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    _add_device_options(parser)


def _bench_dicom_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="folder with one DICOM series")
    parser.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a usage error otherwise); tasks use it for counts and sizes too."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


# ---------------------------------------------------------------------------------------------------- runners
def _unsupported(task: Task, subcommand: str, exc: NotImplementedError | None = None) -> InputError:
    detail = f" ({exc})" if exc is not None and str(exc) else ""
    return InputError(f"task {task.name} does not support {subcommand} yet{detail}")


def _call(task: Task, subcommand: str, method: Callable[..., Any], *call_args: Any) -> Any:
    """Call a task method; :class:`NotImplementedError` becomes the one-line "does not support" error."""
    try:
        return method(*call_args)
    except NotImplementedError as exc:
        raise _unsupported(task, subcommand, exc) from exc


def supports(task: Task, method: str) -> bool:
    """Whether ``task`` overrides :class:`Task`'s ``method`` (the base methods raise NotImplementedError)."""
    return getattr(type(task), method, None) is not getattr(Task, method, None)


#: Upper limits of the size options of phantom/train/bench (a usage error beyond them): (limit, unit).
OPTION_LIMITS: dict[str, tuple[int, str]] = {
    "cases": (100_000, "studies"), "size": (1024, "pixels"), "slices": (2048, "slices"), "epochs": (10_000, "epochs"),
    "batch_size": (4096, "samples"), "depth": (1024, "slices"), "width": (4096, "channels"),
}
#: Seeds are what numpy's generators take: 0 .. 2**32 - 1.
SEED_RANGE = (0, 2**32 - 1)


def check_option_limits(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` (usage error, exit 2) for a size option beyond :data:`OPTION_LIMITS` or a seed outside
    :data:`SEED_RANGE`: ``--cases 10**30`` or ``--size 200000`` would only fail later in the allocator."""
    for key, (limit, unit) in OPTION_LIMITS.items():
        value = getattr(args, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            parser.error(f"--{key.replace('_', '-')} {value} is beyond the limit of {limit} {unit}")
    seed = getattr(args, "seed", None)
    if isinstance(seed, int) and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        parser.error(f"--seed {seed} must lie between {SEED_RANGE[0]} and {SEED_RANGE[1]}")


#: The manifest every ``meddl phantom`` dataset holds: a folder with it may be written over by another phantom.
PHANTOM_MANIFEST = "phantom.json"
#: Key of the metrics JSON ``meddl evaluate`` writes that marks it as one (so ``--out`` may replace it).
METRICS_MARKER = "meddl_evaluate_task"


def _run_phantom(task: Task, args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; give a new or empty folder for the phantom dataset")
    if out.is_dir() and any(out.iterdir()) and not (out / PHANTOM_MANIFEST).is_file():
        example = next(iter(sorted(p.name for p in out.iterdir())))
        raise InputError(f"{out}: the folder holds other files (e.g. {example}) and is no earlier `meddl phantom` "
                         f"output (no {PHANTOM_MANIFEST}): give a new or empty folder, so no dataset is overwritten")
    result = _call(task, "phantom", task.phantom, args.out, args.cases, args.seed, args)
    print_result(result)
    return 0


def _run_train(task: Task, args: argparse.Namespace) -> int:
    if not args.data.exists():
        raise InputError(f"{args.data}: dataset folder not found")
    print_result(_call(task, "train", task.train, args))
    return 0


def _run_evaluate(task: Task, args: argparse.Namespace) -> int:
    if not args.data.exists():
        raise InputError(f"{args.data}: dataset folder not found")
    _check_metrics_out(Path(args.out))
    from .io import atomic_write_json
    from .progress import activity

    with activity(f"evaluate {task.name}"):  # elapsed time on a terminal (the tasks report no fraction)
        metrics = _call(task, "evaluate", task.evaluate, args)

    atomic_write_json(args.out, {**metrics, METRICS_MARKER: task.name})
    print_result(metrics)
    print(f"metrics written to {args.out}")
    return 0


def _check_metrics_out(out: Path) -> None:
    """Refuse an ``evaluate --out`` that would replace a file other than an earlier metrics JSON of MedDL's."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_file() and not out.is_symlink():
        try:
            earlier = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            earlier = None
        if isinstance(earlier, dict) and METRICS_MARKER in earlier:
            return
    raise InputError(f"{out}: --out exists and is not an earlier metrics JSON of `meddl evaluate`; it is not "
                     "replaced: give a new file name (e.g. metrics.json)")


def _run_infer(task: Task, args: argparse.Namespace) -> int:
    """One study into ``--output``, atomically: the folder appears (or replaces an earlier ``meddl infer``
    output) only complete; a failed run leaves it as it was. A folder holding other files is refused."""
    from .batch import RESULT_JSON
    from .guisupport import reporter_from_environment
    from .io import atomic_folder, atomic_write_json, to_jsonable

    if not args.input.exists():
        raise InputError(f"{args.input}: no such study (expected a DICOM folder or an NRRD/NIfTI file)")
    output = args.output.resolve()
    if output.exists() and not output.is_dir():
        raise InputError(f"{args.output}: exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not (output / RESULT_JSON).is_file():
        raise InputError(f"{args.output}: the folder holds other files; give a new or empty folder (the outputs of "
                         "an earlier meddl infer are replaced)")
    from .progress import fraction_reporter

    args.prefetch = _prefetch(task, args)  # the study read on the other core while the model loads
    args.progress = None
    try:
        task.check_model(args.model)
        # progress lines for the GUI's progress bar; else a bar on a terminal; else None
        args.progress = reporter_from_environment() or fraction_reporter(f"infer {task.name}")
        with atomic_folder(output) as staging:
            result = _call(task, "infer", task.infer, args.input, args.model, staging, args)
            saved = to_jsonable(dict(result or {}), base=staging)
            atomic_write_json(staging / RESULT_JSON, saved)
    finally:
        if hasattr(args.progress, "close"):
            args.progress.close()
        if args.prefetch is not None:
            args.prefetch.close()  # the child ended whatever happened
    print_result(saved)
    print(f"outputs written to {output}")
    return 0


def _prefetch(task: Task, args: argparse.Namespace) -> Any:
    """A :class:`MedDLLib.prefetch.StudyPrefetch` of ``--input`` for a pipeline task, or None (not applicable, or
    options the task refuses: the ordinary path reports them)."""
    from .pipeline import PipelineTask
    from .prefetch import prefetch_study

    if not isinstance(task, PipelineTask) or args.model is None:
        return None
    try:
        options = task.options(args, "cpu")  # read_study takes no device
    except Exception:  # noqa: BLE001
        return None
    return prefetch_study(task, args.input, args.model, options)


def _run_batch(task: Task, args: argparse.Namespace) -> int:
    from .batch import run_batch
    from .progress import count_bar

    bar = None

    def progress(done: int, total: int, outcome: Any) -> None:
        nonlocal bar
        if bar is None:  # a bar on a terminal only; failures are printed either way
            bar = count_bar(total, f"batch {task.name}", unit="study")
        if outcome.status == "failed":
            bar.write(f"{outcome.study}: failed: {outcome.error}", file=sys.stderr)
        bar.update(1)

    try:
        summary = run_batch(task, args.input, args.output, args.model, resume=args.resume, args=args,
                            progress=progress)
    finally:
        if bar is not None:
            bar.close()
    counts = {s: len(summary.with_status(s)) for s in ("ok", "skipped", "failed")}
    print(
        f"{summary.total} studies: {counts['ok']} done, {counts['skipped']} already done, {counts['failed']} failed;"
        f" summary: {summary.summary_csv}"
    )
    if counts["failed"]:
        print(f"meddl batch: {counts['failed']} of {summary.total} studies failed, see {summary.failures_csv}",
              file=sys.stderr)
        return 1
    return 0


def _run_bench(task: Task, args: argparse.Namespace) -> int:
    return _finish_bench(_call(task, "bench", task.bench, args), args)


def _run_bench_dicom(args: argparse.Namespace) -> int:
    if not args.input.is_dir():
        raise InputError(f"{args.input}: DICOM folder not found")
    from .bench import bench_dicom_read

    return _finish_bench(bench_dicom_read(args.input), args)


def _finish_bench(result: Any, args: argparse.Namespace) -> int:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        result = dataclasses.asdict(result)
    print_result(result)
    if args.out is not None:
        from .io import atomic_write_json

        atomic_write_json(args.out, result)
        print(f"results written to {args.out}")
    return 0


def print_result(result: Any, file: Any = None) -> None:
    """Print a result dict as ``key: value`` lines (nested values as compact JSON)."""
    from .io import to_jsonable

    file = file or sys.stdout
    if not isinstance(result, dict):
        if result is not None:
            print(json.dumps(to_jsonable(result)), file=file)
        return
    for key, value in result.items():
        value = to_jsonable(value)
        shown = value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)
        print(f"{key}: {shown}", file=file)


# ---------------------------------------------------------------------------------------------------- dispatch
@dataclasses.dataclass(frozen=True)
class TaskCommand:
    """A ``meddl <name> <task> ...`` subcommand: its common options and what it runs."""

    name: str
    help: str
    add_options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Task, argparse.Namespace], int]
    method: str = ""  # the Task method it needs (default: ``name``)

    def __post_init__(self) -> None:
        if not self.method:
            object.__setattr__(self, "method", self.name)


TASK_COMMANDS: tuple[TaskCommand, ...] = (
    TaskCommand("phantom", "write a synthetic dataset in the real dataset's layout", _phantom_options, _run_phantom),
    TaskCommand("train", "train a model package", _train_options, _run_train),
    TaskCommand("evaluate", "evaluate a model on a dataset; write metrics JSON", _evaluate_options, _run_evaluate),
    TaskCommand("infer", "run one study (DICOM folder or NRRD/NIfTI file)", _infer_options, _run_infer),
    TaskCommand("batch", "run many studies (resumable, crash-safe)", _batch_options, _run_batch, "infer"),
    TaskCommand("bench", "measure speed and memory (`bench dicom --input DIR`: DICOM reading)", _bench_options,
                _run_bench),
)


def task_parser(command: TaskCommand, task: Task | None) -> argparse.ArgumentParser:
    """The parser of ``meddl <command> <task>``: common options plus the task's own (``task`` None: common only)."""
    name = task.name if task is not None else "<task>"
    parser = argparse.ArgumentParser(prog=f"meddl {command.name} {name}", description=command.help)
    command.add_options(parser)
    if task is not None:
        task.add_arguments(command.name, parser)
    return parser


def _task_names() -> str:
    """The known task names for help and usage lines (no task library imported)."""
    return ", ".join(task_names()) or "none installed yet"


def _dispatch(command: TaskCommand, args: argparse.Namespace) -> int:
    """Second parsing step: look the task up, parse its options, run the subcommand."""
    if args.task is None:
        parser = task_parser(command, None)
        if args.show_help:
            parser.print_help()
            print(f"\navailable tasks: {_task_names()}  (`meddl {command.name} <task> -h` adds the task's options)")
            if command.name == "bench":
                print("`meddl bench dicom --input DIR [--out F.json]` times the reading of a DICOM series")
            return 0
        parser.error(f"give a task: one of {_task_names()}")
    if command.name == "bench" and args.task == BENCH_DICOM and BENCH_DICOM not in task_names():
        parser = argparse.ArgumentParser(prog="meddl bench dicom", description="time DICOM series reading")
        _bench_dicom_options(parser)
        return _run_bench_dicom(_merge(parser.parse_args(args.task_argv), args))
    task = get_task(args.task)
    if not supports(task, command.method):
        raise _unsupported(task, command.name)
    parser = task_parser(command, task)
    options = parser.parse_args(args.task_argv)
    if command.name in ("phantom", "train", "bench"):
        check_option_limits(parser, options)
    return command.run(task, _merge(options, args))


def _merge(options: argparse.Namespace, outer: argparse.Namespace) -> argparse.Namespace:
    """The task-level options plus ``command``, ``task`` and the global options of the outer parser."""
    for key, value in vars(outer).items():
        if key not in ("task_argv", "show_help", "func") and not hasattr(options, key):
            setattr(options, key, value)
    return options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register phantom, train, evaluate, infer, batch and bench on the ``meddl`` parser (``demo``:
    :mod:`MedDLLib.demo`, which imports this module, not the other way round)."""
    for command in TASK_COMMANDS:
        parser = subparsers.add_parser(
            command.name, help=command.help, description=command.help, add_help=False,
            usage=f"meddl {command.name} <task> [options]   (`meddl {command.name} -h` lists the options)",
        )
        parser.add_argument("-h", "--help", dest="show_help", action="store_true", help="show the options and tasks")
        parser.add_argument("task", metavar="<task>", nargs="?", default=None, help="task name (see -h)")
        parser.add_argument("task_argv", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(func=functools.partial(_dispatch, command))
