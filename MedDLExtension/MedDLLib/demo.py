"""``meddl demo``: every task's demo step (phantoms -> fixed training -> held-out evaluation -> one inference) and
the report a clinician-scientist reads, ``<output>/index.html``.

The work is fixed (counts, sizes, epochs; no wall-clock budget), so the demo shows the same figures on every
machine; ``--quick`` runs each task on a smaller fixed set-up (minutes in all: the report's browser check uses it).

A task's ``demo(out, args)`` returns a dict; these keys are read (all optional):

* ``what``: one or two sentences, what was done (data, recipe, work);
* ``figures``: a list of :func:`figure` entries (a PNG and its caption); ``png`` (a path or list) is the older,
  caption-less form;
* ``headline``: a :func:`headline` entry, the one number to read, with its 95 % CI and the README's figure;
* ``metrics``: a dict or the path of a JSON file (default ``metrics.json``): every number, shown folded;
* anything else: scalars are listed, existing files linked.

Relative paths are relative to the task's folder ``<output>/<task>``; the page links every file relative to
``<output>``, so the folder can be moved or opened from anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import math
import os
import sys
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InputError
from .tasks import available_tasks, get_task

DEMO_DEFAULT_OUTPUT = "meddl-demo"
DEMO_INDEX = "index.html"
DEMO_JSON = "index.json"


# ---------------------------------------------------------------------------------------------- task helpers
def figure(path: str | os.PathLike, caption: str) -> dict[str, str]:
    """A figure of the report: a PNG (absolute, or relative to the task's folder) and what it shows."""
    return {"path": str(path), "caption": caption}


def headline(name: str, value: float, ci_low: float | None = None, ci_high: float | None = None, *,
             readme: float | None = None, readme_setting: str = "", higher_is_better: bool = True,
             meaning: str = "", digits: int = 3) -> dict[str, Any]:
    """The one number of a task's demo, for the report.

    Args:
        name: what the number is, in words ("AUROC for any haemorrhage, per slice").
        value, ci_low, ci_high: the estimate and its 95 % CI.
        readme: the figure the README's table "What the recipes reach on phantoms" gives for this number;
            readme_setting: the set-up it was measured with (data, epochs), when it differs from the demo's.
        higher_is_better: False for losses (the comparison with the README turns around).
        meaning: what the number means on these phantoms, one or two sentences.
        digits: decimals shown.
    """
    return {"name": name, "value": value, "ci_low": ci_low, "ci_high": ci_high, "readme": readme,
            "readme_setting": readme_setting, "higher_is_better": higher_is_better, "meaning": meaning,
            "digits": digits}


def headline_sentence(h: dict[str, Any]) -> tuple[str, bool]:
    """The headline in words, and whether it falls short of the README's figure (said plainly in the sentence)."""
    d = int(h.get("digits", 3))
    value = h.get("value")
    if not _is_number(value):
        return f"{h['name']}: not computed.", True
    text = f"{h['name']}: {value:.{d}f}"
    low, high = h.get("ci_low"), h.get("ci_high")
    if _is_number(low) and _is_number(high):
        text += f" (95 % confidence interval {low:.{d}f} to {high:.{d}f})"
    text += "."
    readme = h.get("readme")
    below = False
    if _is_number(readme):
        below = value < readme if h.get("higher_is_better", True) else value > readme
        setting = f" ({h['readme_setting']})" if h.get("readme_setting") else ""
        if below:
            text += f" This is BELOW the README's figure of {readme:.{d}f}{setting}"
            if _is_number(low) and _is_number(high) and low <= readme <= high:
                text += ", though the README's figure lies inside this run's interval"
            text += "."
        else:
            text += f" This meets the README's figure of {readme:.{d}f}{setting}."
    return text, below


# ---------------------------------------------------------------------------------------------- command
@dataclasses.dataclass
class DemoEntry:
    """One task's part of the demo report."""

    task: str
    title: str
    status: str  # "ok", "failed" or "not supported"
    seconds: float
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``meddl demo`` on the ``meddl`` parser."""
    from .commands_tasks import _add_device_options

    parser = subparsers.add_parser(
        "demo", help="phantoms -> small training -> evaluation -> inference for every task; writes index.html",
        description="For every installed task: generate phantoms, train a small model (fixed epochs and sizes: "
        "the same figures on every machine), evaluate it on held-out phantoms, run one inference; then write "
        "index.html in the output folder.",
    )
    parser.add_argument("--output", type=Path, default=Path(DEMO_DEFAULT_OUTPUT),
                        help=f"report folder (default: ./{DEMO_DEFAULT_OUTPUT})")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", default=None,
                        help="only these tasks (default: the DICOM step and every installed task)")
    parser.add_argument("--dicom", metavar="DIR", default=None,
                        help="DICOM series for the conversion step (default: the real chest CT beside the "
                        "repository, else a synthetic CT series)")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller fixed set-up per task (a check that everything runs; its figures are "
                        "far below the README's)")
    _add_device_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.set_defaults(func=run_demo)


#: What :mod:`MedDLLib.cli` calls to register this module's subcommand (``commands_tasks`` does not import
#: this module: ``demo -> commands_tasks`` only, no cycle).
add_parser = add_demo_parser


def run_demo(args: argparse.Namespace) -> int:
    """``meddl demo``: run each selected task's ``demo(<output>/<task>, args)``; write index.html and index.json.

    The output folder is made absolute first, so a task's paths and the page's links agree whatever the
    working directory. A task whose demo raises is reported in the index (and on stderr) and the others run.

    Returns:
        0 when every task's demo succeeded, else 1.
    """
    from .commands_tasks import _unsupported

    if args.tasks:
        tasks = {name: get_task(name) for name in dict.fromkeys(args.tasks)}
    else:
        tasks = available_tasks()
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Networks run on torch here: the demo evaluates each freshly trained model on small phantoms once, where a
    # runtime's export and choice (seconds per package) would cost more than they save. `meddl infer` and
    # `meddl batch` use the runtime (Testing/test_runtime_then_training.py: runtime sessions, then training).
    os.environ.setdefault("MEDDL_RUNTIME", "torch")
    entries: list[DemoEntry] = []
    steps: dict[str, tuple[str, Callable[[Path], dict[str, Any]]]] = {}
    if not args.tasks:  # the foundation step: DICOM -> Slicer volume node -> NRRD + slice PNG
        steps["dicom"] = ("DICOM to NRRD through Slicer MRML", lambda task_out: _demo_dicom(task_out, args.dicom))
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
        headline_entry = entry.result.get("headline")
        if isinstance(headline_entry, dict) and getattr(args, "quick", False):
            headline_entry["readme_setting"] = "measured with far more work than this --quick run"
        if isinstance(headline_entry, dict):
            print(f"demo {name}: {headline_sentence(headline_entry)[0]}", file=sys.stderr)
        write_demo_index(out, entries)
    index = out / DEMO_INDEX
    print(f"report: {index}")
    failed = [e.task for e in entries if e.status != "ok"]
    if failed:
        print(f"meddl demo: failed for {', '.join(failed)} (see {index})", file=sys.stderr)
        return 1
    return 0


def _demo_dicom(out: Path, dicom: str | None) -> dict[str, Any]:
    """The DICOM step with the report's wording around :func:`MedDLLib.commands_dicom.demo_convert`'s result."""
    from .commands_dicom import demo_convert

    result = dict(demo_convert(out, dicom) or {})
    pngs = [p for p in _as_list(result.pop("png", None))] or sorted(out.glob("*.png"))
    result.setdefault("what", "A DICOM CT series read by MedDL's DICOM reader (slices sorted by position, HU "
                              "rescale), made a Slicer volume node, saved as NRRD by Slicer's storage node, and its "
                              "middle slice rendered by Slicer's slice logic.")
    result["figures"] = [figure(p, "Middle axial slice of the converted CT, as Slicer shows it (soft-tissue "
                                   "window). Check: anatomy upright, left-right as in the source viewer.")
                         for p in pngs]
    return result


# ---------------------------------------------------------------------------------------------- report page
_STYLE = (
    "body{font-family:sans-serif;margin:2em auto;max-width:62em;line-height:1.45;color:#222}"
    "img{max-width:100%;border:1px solid #ddd} figure{display:inline-block;vertical-align:top;max-width:30em;"
    "margin:.5em 1em .5em 0} figcaption{font-size:.9em;color:#444} .ok{color:#070} .failed{color:#b00}"
    " .below{color:#b00;font-weight:bold} .headline{font-size:1.1em} table{border-collapse:collapse;font-size:.9em}"
    " th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left} section{border-top:2px solid #ccc;"
    "margin-top:2em} .note{background:#fff8e0;padding:.6em 1em;border-left:4px solid #e0b000}"
)

#: On load, each image gets ``data-natural-width`` (0 = it did not load) and a missing one a visible note; the
#: body gets ``data-images-checked``. The browser check (:func:`check_report_in_browser`) reads these attributes.
_IMAGE_CHECK = (
    "<script>window.addEventListener('load',function(){var bad=0;"
    "document.querySelectorAll('img').forEach(function(im){var w=im.complete?im.naturalWidth:0;"
    "im.setAttribute('data-natural-width',String(w));if(!w){bad++;var p=document.createElement('p');"
    "p.className='failed';p.textContent='image missing: '+im.getAttribute('src');im.after(p);}});"
    "document.body.setAttribute('data-images-checked',String(document.images.length));"
    "document.body.setAttribute('data-images-missing',String(bad));});</script>"
)

_INTRO = (
    "<p class=\"note\"><b>Research use only, not for diagnosis.</b> Everything below was computed on "
    "<b>synthetic phantoms</b>: generated studies in each public dataset's on-disk layout with a planted, known "
    "signal (a tumour, a bleed, a survival-linked lesion). The numbers say whether each pipeline learns and "
    "measures the planted signal end to end; they say nothing about performance on patients. Models are small "
    "and trained for minutes on the CPU, with a fixed amount of work, so the figures are the same on every "
    "machine. Intervals are 95 % bootstrap confidence intervals over held-out patients or studies.</p>"
)


def write_demo_index(out: Path, entries: Sequence[DemoEntry]) -> Path:
    """Write ``out/index.html`` (the report: per task what was done, the headline in words, figures with
    captions, every number folded away) and ``out/index.json``, atomically."""
    from .io import atomic_write_json, atomic_write_text, to_jsonable

    out = Path(out)
    sections = [_section(out, entry) for entry in entries]
    summary = _summary_table(entries)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>MedDL demo report</title>"
        f"<style>{_STYLE}</style></head><body>\n<h1>MedDL demo report</h1>\n"
        f"<p>Generated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>\n{_INTRO}\n{summary}\n"
        + "\n".join(sections) + f"\n{_IMAGE_CHECK}\n</body></html>\n"
    )
    atomic_write_json(out / DEMO_JSON, [to_jsonable(dataclasses.asdict(e)) for e in entries])
    return atomic_write_text(out / DEMO_INDEX, page)


def _summary_table(entries: Sequence[DemoEntry]) -> str:
    rows = []
    for e in entries:
        h = e.result.get("headline") if isinstance(e.result.get("headline"), dict) else None
        if h is not None:
            sentence, below = headline_sentence(h)
            cell = f'<span class="{"below" if below else ""}">{html.escape(sentence)}</span>'
        else:
            cell = html.escape(e.error or "")
        rows.append(f"<tr><td><a href=\"#{html.escape(e.task)}\">{html.escape(e.task)}</a></td>"
                    f"<td class=\"{'ok' if e.status == 'ok' else 'failed'}\">{html.escape(e.status)}</td>"
                    f"<td>{_minutes(e.seconds)}</td><td>{cell}</td></tr>")
    return ("<table><tr><th>step</th><th>status</th><th>time</th><th>headline</th></tr>" + "".join(rows)
            + "</table>")


def _section(out: Path, entry: DemoEntry) -> str:
    task_out = out / entry.task
    result = entry.result
    status_class = "ok" if entry.status == "ok" else "failed"
    parts = [f"<h2 id=\"{html.escape(entry.task)}\">{html.escape(entry.title)} "
             f"<small>({html.escape(entry.task)})</small></h2>",
             f'<p class="{status_class}">{html.escape(entry.status)} in {_minutes(entry.seconds)}</p>']
    if entry.error:
        parts.append(f"<pre>{html.escape(entry.error)}</pre>")
        if (task_out / "error.txt").exists():
            parts.append(f'<p><a href="{_href(out, task_out / "error.txt")}">traceback</a></p>')
    if isinstance(result.get("what"), str):
        parts.append(f"<p><b>What was done.</b> {html.escape(result['what'])}</p>")
    h = result.get("headline")
    if isinstance(h, dict):
        sentence, below = headline_sentence(h)
        parts.append(f'<p class="headline{" below" if below else ""}"><b>Result.</b> {html.escape(sentence)}</p>')
        if h.get("meaning"):
            parts.append(f"<p><b>What it means on phantoms.</b> {html.escape(str(h['meaning']))}</p>")
    for path, caption in _figures(task_out, result):
        parts.append(f'<figure><img src="{_href(out, path)}" alt="{html.escape(caption or path.name)}">'
                     f"<figcaption>{html.escape(caption or path.name)}</figcaption></figure>")
    details = []
    for key, value in result.items():
        if key in ("png", "metrics", "figures", "headline", "what"):
            continue
        path = _existing_file(task_out, value)
        if path is not None:
            details.append(f'<li>{html.escape(key)}: <a href="{_href(out, path)}">{html.escape(path.name)}</a></li>')
        elif isinstance(value, (str, int, float, bool)):
            details.append(f"<li>{html.escape(key)}: {html.escape(_fmt(value))}</li>")
    if details:
        parts.append("<ul>" + "".join(details) + "</ul>")
    metrics, metrics_file = _demo_metrics(task_out, result.get("metrics"))
    if metrics or metrics_file is not None:
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in metrics.items())
        link = (f' (<a href="{_href(out, metrics_file)}">{html.escape(metrics_file.name)}</a>)'
                if metrics_file is not None else "")
        parts.append(f"<details><summary>Every number, as the tools write it{link}</summary>"
                     f"<table>{rows}</table></details>")
    return "<section>" + "\n".join(parts) + "</section>"


# ---------------------------------------------------------------------------------------------- browser check
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    """The headless-capable Chromium on PATH (Debian's ``chromium`` first), or None."""
    import shutil

    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def check_report_in_browser(index: str | os.PathLike, screenshot: str | os.PathLike | None = None, *,
                            browser: str | None = None, timeout_s: float = 120.0,
                            window_px: tuple[int, int] = (1280, 6000)) -> dict[str, Any]:
    """Open the report in headless Chromium and read back, for every image, the width the browser decoded.

    The page's own script (``_IMAGE_CHECK``) writes each image's ``naturalWidth`` into ``data-natural-width``
    once the page has loaded; ``--dump-dom`` returns that DOM. With ``screenshot``, a PNG of the page (a
    ``window_px`` window) is written there too.

    Returns:
        ``{"browser", "images": [{"src", "natural_width"}], "missing": [src, ...], "checked": bool}``;
        ``checked`` is False when the page's script did not run (then every image counts as missing).

    Raises:
        InputError: no browser found, or it failed (its stderr's last line is given).
    """
    import subprocess
    import tempfile
    from html.parser import HTMLParser

    browser = browser or find_browser()
    if browser is None:
        raise InputError(f"no headless Chromium found (looked for {', '.join(BROWSERS)}; Debian: apt-get install "
                         "chromium)")
    url = Path(index).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="meddl-chromium-") as profile:
        common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--allow-file-access-from-files", "--hide-scrollbars", f"--user-data-dir={profile}",
                  "--virtual-time-budget=10000"]
        run = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=timeout_s)
        if run.returncode != 0 or "<html" not in run.stdout.lower():
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"{browser} could not open {url}: {last}")
        if screenshot is not None:
            shot = Path(screenshot).resolve()
            shot.parent.mkdir(parents=True, exist_ok=True)
            taken = subprocess.run([*common, f"--screenshot={shot}", f"--window-size={window_px[0]},{window_px[1]}",
                                    url], capture_output=True, text=True, timeout=timeout_s)
            if taken.returncode != 0 or not shot.is_file():
                last = (taken.stderr.strip().splitlines() or ["no output"])[-1]
                raise InputError(f"{browser} could not take a screenshot of {url}: {last}")

    class _Images(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.images: list[dict[str, Any]] = []
            self.checked = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if tag == "body" and a.get("data-images-checked") is not None:
                self.checked = True
            if tag == "img":
                width = a.get("data-natural-width")
                self.images.append({"src": a.get("src"), "natural_width": int(width) if width else 0})

    parser = _Images()
    parser.feed(run.stdout)
    return {"browser": browser, "images": parser.images, "checked": parser.checked,
            "missing": [i["src"] for i in parser.images if i["natural_width"] <= 0]}


def _figures(task_out: Path, result: dict[str, Any]) -> list[tuple[Path, str]]:
    """``(path, caption)`` of the figures to show: ``figures`` entries, else ``png`` paths, else ``*.png``."""
    found: list[tuple[Path, str]] = []
    for item in _as_list(result.get("figures")):
        if isinstance(item, dict) and item.get("path"):
            found.append((_resolve(task_out, item["path"]), str(item.get("caption", ""))))
    for item in _as_list(result.get("png")):
        found.append((_resolve(task_out, item), ""))
    if not found:
        found = [(p, "") for p in sorted(task_out.glob("*.png"))]
    return found


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    """``path`` relative to the report folder ``out`` (both made absolute first), URL-quoted."""
    return urllib.parse.quote(Path(os.path.relpath(Path(path).resolve(), Path(out).resolve())).as_posix())


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _demo_metrics(task_out: Path, metrics: Any) -> tuple[dict[str, Any], Path | None]:
    """Flat metrics to show and the metrics file to link, from a dict, a JSON path or ``metrics.json``."""
    if isinstance(metrics, dict):
        file = task_out / "metrics.json"
        return _flat(metrics), file if file.is_file() else None
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
