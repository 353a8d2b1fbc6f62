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
    meddl demo     [--output OUT] [--tasks T ...] [--minutes-per-task M] [--device ...] [--force-cpu] [--seed S]

A task method that raises :class:`NotImplementedError` gives one line, "task X does not support <subcommand>
yet", and exit status 1. Results are printed (``key: value``) and JSON files are written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import html
import json
import os
import sys
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InputError
from .tasks import Task, available_tasks, get_task

#: ``meddl bench dicom --input DIR``: the DICOM reading benchmark (not a task).
BENCH_DICOM = "dicom"
DEMO_DEFAULT_OUTPUT = "meddl-demo"
DEMO_INDEX = "index.html"
DEMO_JSON = "index.json"


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
    _add_device_options(parser)


def _batch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="folder holding the studies")
    parser.add_argument("--model", default=None, help="model package (folder or cached name; default: the task's)")
    parser.add_argument("--output", type=Path, required=True, help="output folder: one sub-folder per study")
    parser.add_argument("--resume", action="store_true", help="skip studies finished by an earlier run")
    _add_device_options(parser)


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


def _run_phantom(task: Task, args: argparse.Namespace) -> int:
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
    from .io import atomic_write_json
    from .progress import activity

    with activity(f"evaluate {task.name}"):  # elapsed time on a terminal (the tasks report no fraction)
        metrics = _call(task, "evaluate", task.evaluate, args)

    atomic_write_json(args.out, metrics)
    print_result(metrics)
    print(f"metrics written to {args.out}")
    return 0


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
    task.check_model(args.model)
    from .progress import fraction_reporter

    # progress lines for the GUI's progress bar; else a bar on a terminal; else None
    args.progress = reporter_from_environment() or fraction_reporter(f"infer {task.name}")
    try:
        with atomic_folder(output) as staging:
            result = _call(task, "infer", task.infer, args.input, args.model, staging, args)
            saved = to_jsonable(dict(result or {}), base=staging)
            atomic_write_json(staging / RESULT_JSON, saved)
    finally:
        if hasattr(args.progress, "close"):
            args.progress.close()
    print_result(saved)
    print(f"outputs written to {output}")
    return 0


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
    return ", ".join(available_tasks()) or "none installed yet"


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
    if command.name == "bench" and args.task == BENCH_DICOM and BENCH_DICOM not in available_tasks():
        parser = argparse.ArgumentParser(prog="meddl bench dicom", description="time DICOM series reading")
        _bench_dicom_options(parser)
        return _run_bench_dicom(_merge(parser.parse_args(args.task_argv), args))
    task = get_task(args.task)
    if not supports(task, command.method):
        raise _unsupported(task, command.name)
    options = task_parser(command, task).parse_args(args.task_argv)
    return command.run(task, _merge(options, args))


def _merge(options: argparse.Namespace, outer: argparse.Namespace) -> argparse.Namespace:
    """The task-level options plus ``command``, ``task`` and the global options of the outer parser."""
    for key, value in vars(outer).items():
        if key not in ("task_argv", "show_help", "func") and not hasattr(options, key):
            setattr(options, key, value)
    return options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register phantom, train, evaluate, infer, batch, bench and demo on the ``meddl`` parser."""
    for command in TASK_COMMANDS:
        parser = subparsers.add_parser(
            command.name, help=command.help, description=command.help, add_help=False,
            usage=f"meddl {command.name} <task> [options]   (`meddl {command.name} -h` lists the options)",
        )
        parser.add_argument("-h", "--help", dest="show_help", action="store_true", help="show the options and tasks")
        parser.add_argument("task", metavar="<task>", nargs="?", default=None, help="task name (see -h)")
        parser.add_argument("task_argv", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(func=functools.partial(_dispatch, command))
    _add_demo_parser(subparsers)


# ---------------------------------------------------------------------------------------------------- demo
@dataclasses.dataclass
class DemoEntry:
    """One task's part of the demo report."""

    task: str
    title: str
    status: str  # "ok", "failed" or "not supported"
    seconds: float
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None


def _add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="phantoms -> small training -> evaluation -> inference for every task; writes index.html",
        description="For every installed task: generate phantoms, train a small model for a bounded time, "
        "evaluate it, run one inference with a PNG; then write index.html in the output folder.",
    )
    parser.add_argument("--output", type=Path, default=Path(DEMO_DEFAULT_OUTPUT),
                        help=f"report folder (default: ./{DEMO_DEFAULT_OUTPUT})")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", default=None,
                        help="only these tasks (default: the DICOM step and every installed task)")
    parser.add_argument("--dicom", metavar="DIR", default=None,
                        help="DICOM series for the conversion step (default: the real chest CT beside the "
                        "repository, else a synthetic CT series)")
    parser.add_argument("--minutes-per-task", type=positive_float, default=3.0,
                        help="training time budget per task in minutes (default: 3)")
    _add_device_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """``meddl demo``: run each selected task's ``demo(<output>/<task>, args)``; write index.html and index.json.

    A task whose demo raises is reported in the index (and on stderr) and the others still run.

    Returns:
        0 when every task's demo succeeded, else 1.
    """
    from .commands_dicom import demo_convert

    if args.tasks:
        tasks = {name: get_task(name) for name in dict.fromkeys(args.tasks)}
    else:
        tasks = available_tasks()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[DemoEntry] = []
    steps: dict[str, tuple[str, Callable[[Path], dict[str, Any]]]] = {}
    if not args.tasks:  # the foundation step: DICOM -> Slicer volume node -> NRRD + slice PNG
        steps["dicom"] = ("DICOM to NRRD through Slicer MRML", lambda task_out: demo_convert(task_out, args.dicom))
    for name, task in tasks.items():
        steps[name] = (task.title or name, lambda task_out, task=task: task.demo(task_out, args))
    if not steps:
        raise InputError("no task modules are installed (none registered in the 'meddl.tasks' entry points)")
    for name, (title, run_step) in steps.items():
        task = tasks.get(name)
        task_out = out / name
        task_out.mkdir(parents=True, exist_ok=True)
        print(f"demo {name}: running (output in {task_out})", file=sys.stderr)
        start = time.perf_counter()
        try:
            result = dict(run_step(task_out) or {})
            entry = DemoEntry(name, title, "ok", 0.0, result)
        except NotImplementedError as exc:
            error = str(_unsupported(task, "demo", exc))
            entry = DemoEntry(name, title, "not supported", 0.0, error=error)
        except Exception as exc:  # one failing task must not stop the others
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            entry = DemoEntry(name, title, "failed", 0.0, error=message)
            (task_out / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        entry.seconds = round(time.perf_counter() - start, 1)
        entries.append(entry)
        print(f"demo {name}: {entry.status} in {entry.seconds} s" + (f": {entry.error}" if entry.error else ""),
              file=sys.stderr)
        write_demo_index(out, entries)
    index = out / DEMO_INDEX
    print(f"report: {index}")
    failed = [e.task for e in entries if e.status != "ok"]
    if failed:
        print(f"meddl demo: failed for {', '.join(failed)} (see {index})", file=sys.stderr)
        return 1
    return 0


def write_demo_index(out: Path, entries: Sequence[DemoEntry]) -> Path:
    """Write ``out/index.html`` (figures, metrics and files per task) and ``out/index.json``, atomically.

    Read from each entry's result: ``png`` (a path or list of paths; default: the ``*.png`` files in
    ``out/<task>``), ``metrics`` (a dict, or a path to a JSON file; default: ``out/<task>/metrics.json`` if
    present) and any other top-level entries (scalars shown, existing paths linked). Relative paths are relative
    to ``out/<task>``.
    """
    from .io import atomic_write_json, atomic_write_text, to_jsonable

    sections = []
    for entry in entries:
        task_out = out / entry.task
        parts = [f"<h2>{html.escape(entry.title)} <small>({html.escape(entry.task)})</small></h2>"]
        status_class = "ok" if entry.status == "ok" else "failed"
        parts.append(f'<p class="{status_class}">{html.escape(entry.status)} in {entry.seconds} s</p>')
        if entry.error:
            parts.append(f"<pre>{html.escape(entry.error)}</pre>")
            if (task_out / "error.txt").exists():
                parts.append(f'<p><a href="{_href(out, task_out / "error.txt")}">traceback</a></p>')
        result = entry.result
        pngs = [_resolve(task_out, p) for p in _as_list(result.get("png"))] or sorted(task_out.glob("*.png"))
        for png in pngs:
            parts.append(f'<figure><img src="{_href(out, png)}" alt="{html.escape(png.name)}">'
                         f"<figcaption>{html.escape(png.name)}</figcaption></figure>")
        metrics, metrics_file = _demo_metrics(task_out, result.get("metrics"))
        if metrics:
            rows = "".join(
                f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in metrics.items()
            )
            parts.append(f"<table>{rows}</table>")
        if metrics_file is not None:
            parts.append(f'<p><a href="{_href(out, metrics_file)}">{html.escape(metrics_file.name)}</a></p>')
        details = []
        for key, value in result.items():
            if key in ("png", "metrics"):
                continue
            path = _existing_file(task_out, value)
            if path is not None:
                link = f'<a href="{_href(out, path)}">{html.escape(path.name)}</a>'
                details.append(f"<li>{html.escape(key)}: {link}</li>")
            elif isinstance(value, (str, int, float, bool)):
                details.append(f"<li>{html.escape(key)}: {html.escape(_fmt(value))}</li>")
        if details:
            parts.append("<ul>" + "".join(details) + "</ul>")
        sections.append("<section>" + "\n".join(parts) + "</section>")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>MedDL demo</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:70em} img{max-width:100%} .ok{color:#070}"
        " .failed{color:#b00} table{border-collapse:collapse} th,td{border:1px solid #ccc;padding:.2em .6em;"
        "text-align:left}</style></head><body>\n<h1>MedDL demo</h1>\n"
        f"<p>Generated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}. Synthetic phantom data, small models "
        "trained for minutes on the CPU: research use only, not for diagnosis.</p>\n"
        + "\n".join(sections) + "\n</body></html>\n"
    )
    atomic_write_json(out / DEMO_JSON, [to_jsonable(dataclasses.asdict(e)) for e in entries])
    return atomic_write_text(out / DEMO_INDEX, page)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _resolve(base: Path, value: str | os.PathLike) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _existing_file(base: Path, value: Any) -> Path | None:
    """``value`` as an existing path (relative to ``base``), or None for any other value: a number, a sentence,
    a text too long to be a file name."""
    if not isinstance(value, (str, os.PathLike)) or not str(value) or "\n" in str(value):
        return None
    try:
        path = _resolve(base, value)
        return path if path.exists() else None
    except (OSError, ValueError):  # e.g. "File name too long"
        return None


def _href(out: Path, path: Path) -> str:
    return urllib.parse.quote(Path(os.path.relpath(path, out)).as_posix())


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _demo_metrics(task_out: Path, metrics: Any) -> tuple[dict[str, Any], Path | None]:
    """Flat metrics to show and the metrics file to link, from a dict, a JSON path or ``metrics.json``."""
    if isinstance(metrics, dict):
        return _flat(metrics), None
    path = _resolve(task_out, metrics) if metrics else task_out / "metrics.json"
    if not path.is_file():
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, path
    return (_flat(data) if isinstance(data, dict) else {}), path


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts flattened to ``a.b`` keys; scalars only."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (str, int, float, bool)):
            flat[f"{prefix}{key}"] = value
    return flat
