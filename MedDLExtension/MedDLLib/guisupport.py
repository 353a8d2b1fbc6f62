"""The Qt-free half of the MedDL widgets: dependencies, model cards and the child-process protocol.

The widgets (``MedDLWidgets``, Qt side) stay thin; everything that can be decided without Qt lives here and is
tested in plain Python:

Dependencies (checked on the first Apply, never at import)
    :func:`read_requirements` parses ``Resources/requirements.txt``; :func:`dependency_plan` says what is missing:
    torch (installed through the PyTorch extension, :data:`TORCH_REQUIREMENT`) and the other packages (installed
    with ``slicer.packaging.pip_ensure``); :meth:`DependencyPlan.describe` is the text of the confirmation.

Model cards
    :func:`format_model_card` turns a model package's ``configs/metadata.json`` (a dict) into the text the model
    selector shows: what it was trained on, its metrics with confidence intervals, its input, and always
    "research use only". Missing or odd keys are skipped, never an exception.

Child-process protocol (GUI runs in the background)
    The widget runs ``meddl`` in a child ``PythonSlicer`` process (:func:`child_command`,
    :func:`child_environment`). With ``MEDDL_GUI_PROTOCOL=jsonl`` in its environment the child reports on stdout
    one JSON object per line (:class:`JsonLinesReporter`, obtained with :func:`reporter_from_environment`)::

        {"meddl": 1, "kind": "progress", "progress": 0.4, "message": "running the network"}
        {"meddl": 1, "kind": "log", "message": "resampled to 1 mm"}
        {"meddl": 1, "kind": "result", "result": {"probability": 0.83, "outputs": ["heatmap.nrrd"]}}
        {"meddl": 1, "kind": "error", "message": "series.dcm: missing PixelData"}

    Anything else on stdout or stderr is log text. :class:`RunMonitor` turns the raw output into
    :class:`Message` events and the exit status into a :class:`RunOutcome`; the Qt runner feeds it from a
    ``QProcess`` and :func:`run_child_blocking` (the blocking mode for scripts) from :mod:`subprocess`.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import importlib.metadata
import json
import math
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import InputError

#: The torch requirement (same range as pyproject.toml); torch is installed by the PyTorch extension, not pip.
TORCH_REQUIREMENT = "torch>=2.2"
#: Environment variable that switches the ``meddl`` child process to the JSON-lines protocol.
PROTOCOL_ENV = "MEDDL_GUI_PROTOCOL"
PROTOCOL_VALUE = "jsonl"
#: Key (and version) that marks a stdout line as a protocol message.
PROTOCOL_KEY = "meddl"
PROTOCOL_VERSION = 1
MESSAGE_KINDS = ("progress", "log", "result", "error")
RESEARCH_USE_ONLY = "Research use only: not for diagnosis or treatment decisions."
#: Program run by the child process: the ``meddl`` command of the MedDLLib found on its PYTHONPATH.
_CHILD_PROGRAM = "import sys; from MedDLLib.cli import main; sys.exit(main(sys.argv[1:]))"

VersionLookup = Callable[[str], "str | None"]


# ----------------------------------------------------------------------------------------------------------------
# Dependencies
# ----------------------------------------------------------------------------------------------------------------


def read_requirements(path: str | os.PathLike) -> list[Any]:
    """The requirements of a pip requirements file, as :class:`packaging.requirements.Requirement` objects.

    Blank lines, ``#`` comments (whole-line or trailing) and pip options (lines starting with ``-``) are
    skipped, as ``slicer.packaging.load_requirements`` does.

    Raises:
        InputError: the file is missing, or a line is not a valid requirement (names the file and line).
    """
    from packaging.requirements import InvalidRequirement, Requirement

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the requirements file ({exc.strerror or exc})") from exc
    requirements = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            requirements.append(Requirement(line))
        except InvalidRequirement as exc:
            raise InputError(f"{path}:{number}: {line!r} is not a valid requirement ({exc})") from exc
    return requirements


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (``None`` when it is not installed)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements: Iterable[Any], version_of: VersionLookup = installed_version) -> list[Any]:
    """The requirements that the environment does not satisfy (not installed, or a version out of range).

    A requirement whose environment marker does not apply here (``; sys_platform == "win32"``) is never missing.
    Pre-releases count as satisfying (a development build of a package is accepted). Extras are not followed.

    Args:
        requirements: :class:`~packaging.requirements.Requirement` objects or requirement strings.
        version_of: ``distribution name -> installed version or None`` (default: the current environment).
    """
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion

    missing = []
    for requirement in requirements:
        req = Requirement(requirement) if isinstance(requirement, str) else requirement
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = version_of(req.name)
        try:
            satisfied = version is not None and req.specifier.contains(version, prereleases=True)
        except InvalidVersion:  # an unparsable installed version cannot be trusted to satisfy a range
            satisfied = not req.specifier
        if not satisfied:
            missing.append(req)
    return missing


@dataclasses.dataclass(frozen=True)
class DependencyPlan:
    """What must be installed before a module can run.

    Attributes:
        torch: the torch requirement when torch is missing or too old (install it with the PyTorch extension's
            ``PyTorchUtilsLogic().installTorch``), else ``None``.
        packages: the other missing requirements, as strings for ``pip_ensure``/``pip_install``.
    """

    torch: str | None
    packages: tuple[str, ...]

    @property
    def satisfied(self) -> bool:
        return self.torch is None and not self.packages

    def torch_version_requirement(self) -> str:
        """The version part of the torch requirement (``">=2.2"``), as ``installTorch`` takes it."""
        from packaging.requirements import Requirement

        return str(Requirement(self.torch).specifier) if self.torch else ""

    def describe(self) -> str:
        """One paragraph for the confirmation dialog (empty when nothing is missing)."""
        parts = []
        if self.torch:
            parts.append(f"PyTorch ({self.torch}), installed through the PyTorch extension")
        if self.packages:
            parts.append("these Python packages from PyPI: " + ", ".join(self.packages))
        if not parts:
            return ""
        return (
            "MedDL needs " + "; and ".join(parts) + ". The download can take several minutes and a restart of "
            "Slicer may be needed afterwards."
        )


def dependency_plan(
    requirements_file: str | os.PathLike,
    version_of: VersionLookup = installed_version,
    torch_requirement: str = TORCH_REQUIREMENT,
) -> DependencyPlan:
    """Which of torch and the packages of ``requirements_file`` are missing (see :class:`DependencyPlan`).

    A ``torch`` line in the requirements file is refused: torch must come from the PyTorch extension, whose
    installer picks the build that matches the GPU driver.
    """
    requirements = read_requirements(requirements_file)
    if any(r.name.lower() == "torch" for r in requirements):
        raise InputError(f"{requirements_file}: torch must not be listed; it is installed by the PyTorch extension")
    torch_missing = missing_requirements([torch_requirement], version_of)
    return DependencyPlan(
        torch=torch_requirement if torch_missing else None,
        packages=tuple(str(r) for r in missing_requirements(requirements, version_of)),
    )


#: The oldest 3D Slicer MedDL supports (the first that bundles pydicom 3, Python 3.12 and ``pip_ensure``).
MINIMUM_SLICER = (5, 12)

#: Distribution -> top-level module, where they differ (for packages Slicer may have imported already).
MODULE_OF = {"scikit-image": "skimage", "scikit-learn": "sklearn", "pillow": "PIL", "pylibjpeg-libjpeg": "libjpeg",
             "pylibjpeg-openjpeg": "openjpeg", "pylibjpeg-rle": "rle"}


def slicer_version_problem(major: int, minor: int, version: str = "") -> str | None:
    """One line saying which Slicer MedDL needs, or ``None`` when ``major.minor`` is supported.

    >>> slicer_version_problem(5, 8, "5.8.1").split(". ")[0]
    'MedDL needs 3D Slicer 5.12 or later; this is Slicer 5.8.1'
    >>> slicer_version_problem(5, 12) is None
    True
    """
    if (int(major), int(minor)) >= MINIMUM_SLICER:
        return None
    found = version or f"{major}.{minor}"
    return (f"MedDL needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later; this is Slicer {found}. "
            "Install a current Slicer from https://download.slicer.org.")


def stale_imports(requirements_file: str | os.PathLike, modules: Mapping[str, Any] | None = None) -> list[str]:
    """Packages of ``requirements_file`` whose *imported* version (in ``modules``, default ``sys.modules``) does
    not satisfy the requirement: after an upgrade, Python keeps using the old one until Slicer restarts
    (e.g. ``"pydicom 2.4.4 (needs >=3.0)"``)."""
    import sys

    modules = sys.modules if modules is None else modules
    stale = []
    for requirement in read_requirements(requirements_file):
        module = modules.get(MODULE_OF.get(requirement.name.lower(), requirement.name.replace("-", "_")))
        version = getattr(module, "__version__", None) if module is not None else None
        release = _release(version) if isinstance(version, str) else None
        if release is not None and not requirement.specifier.contains(release, prereleases=True):
            stale.append(f"{requirement.name} {version} (needs {requirement.specifier})")
    return stale


def _release(version: str) -> str | None:
    """``version`` as PEP 440 understands it, or its leading release numbers where a package's ``__version__`` is
    not PEP 440 (OpenVINO's ``"2026.4.1-22982-e213a147257-releases/2026/4"`` -> ``"2026.4.1"``); None: no number."""
    from packaging.version import InvalidVersion, Version

    try:
        return str(Version(version))
    except InvalidVersion:
        match = re.match(r"\d+(\.\d+)*", version.strip())
        return match.group(0) if match else None


# ----------------------------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------------------------


def _as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _first(mapping: Mapping[str, Any], *keys: str) -> Any:
    """The first of ``keys`` present (and not None/empty) in ``mapping``."""
    for key in keys:
        value = mapping.get(key)
        if value not in (None, "", [], {}):
            return value
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _format_number(value: int | float) -> str:
    """Integers as integers (``1,200``), other numbers with 3 decimals below 10 (``0.912``), else 4 digits."""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.4g}"


def _format_list(value: Any, unit: str = "") -> str | None:
    """``[1, 1, 5]`` -> ``"1 x 1 x 5 mm"``; a single number or string as is."""
    if isinstance(value, (list, tuple)) and value and all(_number(v) is not None for v in value):
        return " x ".join(f"{v:g}" for v in value) + (f" {unit}" if unit else "")
    if _number(value) is not None:
        return f"{value:g}" + (f" {unit}" if unit else "")
    if isinstance(value, str):
        return value
    return None


def format_metric(value: Any) -> str | None:
    """A metric as text: ``0.912`` or ``0.912 (95% CI 0.880-0.940)``.

    Accepts a number, or a dict with the value under ``value``/``estimate``/``mean``/``point`` and the interval
    as ``ci``/``ci95`` (two numbers) or ``ci_low``/``ci_high`` (also ``lower``/``upper``, ``low``/``high``).
    ``n`` (the number of cases) is appended when present. Anything else gives ``None``.
    """
    if _number(value) is not None:
        return _format_number(value)
    if not isinstance(value, Mapping):
        return None
    point = _first(value, "value", "estimate", "mean", "point")
    if _number(point) is None:
        return None
    text = _format_number(point)
    interval = _first(value, "ci", "ci95", "ci_95")
    low, high = None, None
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        low, high = _number(interval[0]), _number(interval[1])
    else:
        low = _number(_first(value, "ci_low", "lower", "low", "ci_lower"))
        high = _number(_first(value, "ci_high", "upper", "high", "ci_upper"))
    level = _number(value.get("ci_level", value.get("confidence")))
    if low is not None and high is not None:
        percent = f"{level * 100:g}%" if level is not None and 0 < level < 1 else "95%"
        text += f" ({percent} CI {_format_number(low)}-{_format_number(high)})"
    n = _number(_first(value, "n", "n_cases", "n_studies"))
    if n is not None:
        text += f", n={int(n)}"
    return text


def _metric_lines(metrics: Any, prefix: str = "") -> list[str]:
    lines = []
    for name, value in _as_mapping(metrics).items():
        text = format_metric(value)
        if text is not None:
            lines.append(f"  {prefix}{name}: {text}")
        elif isinstance(value, Mapping):  # a group, e.g. per-label AUROC
            lines.extend(_metric_lines(value, prefix=f"{prefix}{name} / "))
    return lines


def training_data_text(metadata: Mapping[str, Any]) -> tuple[str, bool | None]:
    """``(text, synthetic)``: what the model was trained on, and whether that was synthetic data only.

    Reads ``training_data`` (a dict with ``synthetic`` (bool) or ``kind``/``type`` ("synthetic"/"real"),
    ``n_studies``/``studies``/``n_cases``, ``dataset``/``name``, ``description``) or a plain string.
    ``synthetic`` is ``None`` when the metadata does not say.
    """
    data = metadata.get("training_data")
    if isinstance(data, str) and data.strip():
        lowered = data.lower()
        return data.strip(), True if "synthetic" in lowered or "phantom" in lowered else None
    data = _as_mapping(data)
    if not data:
        return "not stated", None
    synthetic = data.get("synthetic")
    kind = str(_first(data, "kind", "type", "source") or "").lower()
    if not isinstance(synthetic, bool):
        synthetic = True if kind in ("synthetic", "phantom", "phantoms") else False if kind == "real" else None
    parts = []
    if synthetic is True:
        parts.append("synthetic phantoms")
    elif synthetic is False:
        parts.append("real studies")
    dataset = _first(data, "dataset", "name")
    if isinstance(dataset, str):
        parts.append(dataset)
    n = _number(_first(data, "n_studies", "studies", "n_cases", "cases", "n"))
    if n is not None:
        parts.append(f"{int(n):,} studies")
    description = data.get("description")
    if isinstance(description, str) and description.strip():
        parts.append(description.strip())
    return (", ".join(parts) if parts else "not stated"), synthetic


def _network_text(metadata: Mapping[str, Any]) -> str | None:
    network = metadata.get("network")
    if isinstance(network, str):
        return network
    network = _as_mapping(network)
    name = _first(network, "name", "class", "type")
    if not isinstance(name, str):
        return None
    args = _as_mapping(_first(network, "args", "arguments", "kwargs"))
    shown = ", ".join(f"{k}={v}" for k, v in args.items() if isinstance(v, (str, int, float, bool)))
    return f"{name} ({shown})" if shown else name


def _input_text(metadata: Mapping[str, Any]) -> str | None:
    spec = _as_mapping(_first(metadata, "input", "input_spec"))
    if not spec:
        return None
    parts = []
    channels = spec.get("channels")
    if isinstance(channels, (list, tuple)) and channels:
        parts.append(f"{len(channels)} channel{'s' if len(channels) != 1 else ''} ({', '.join(map(str, channels))})")
    elif _number(channels) is not None:
        parts.append(f"{int(channels)} channel{'s' if channels != 1 else ''}")
    windows = spec.get("windows")
    if isinstance(windows, (list, tuple)) and windows:
        shown = []
        for w in windows:
            if isinstance(w, Mapping):
                centre, width = _first(w, "center", "centre"), w.get("width")
                label = f"{w['name']} " if isinstance(w.get("name"), str) else ""
            elif isinstance(w, (list, tuple)) and len(w) == 2:
                (centre, width), label = w, ""
            else:
                centre, width, label = None, None, w if isinstance(w, str) else ""
            if _number(centre) is not None and _number(width) is not None:
                shown.append(f"{label}{centre:g}/{width:g}")
            elif label:
                shown.append(label.strip())
        if shown:
            parts.append("windows " + ", ".join(shown))
    normalisation = _first(spec, "normalization", "normalisation", "intensity")
    if isinstance(normalisation, str):
        parts.append(normalisation)
    spacing = _format_list(_first(spec, "spacing_mm", "spacing"), "mm")
    if spacing:
        parts.append(f"spacing {spacing}")
    size = _format_list(_first(spec, "size", "shape", "spatial_size"), "voxels")
    if size:
        parts.append(f"size {size}")
    modality = _first(spec, "modality", "modalities", "sequences")
    if isinstance(modality, str):
        parts.insert(0, modality)
    elif isinstance(modality, (list, tuple)) and modality:
        parts.insert(0, ", ".join(map(str, modality)))
    return "; ".join(parts) if parts else None


def _labels_text(metadata: Mapping[str, Any]) -> str | None:
    labels = _first(_as_mapping(metadata.get("output")), "labels") or _first(
        metadata, "labels", "output_labels", "outputs", "classes"
    )
    if isinstance(labels, Mapping):
        labels = [f"{k}: {v}" if not isinstance(v, Mapping) else str(k) for k, v in labels.items()]
    if isinstance(labels, (list, tuple)) and labels:
        return ", ".join(str(label) for label in labels)
    return None


def model_title(metadata: Mapping[str, Any], name: str | None = None) -> str:
    """Short label of a model for a selector: ``"ich-improved 1.0.0 (improved, synthetic phantoms)"``."""
    metadata = _as_mapping(metadata)
    title = name or _first(metadata, "name", "task") or "model"
    version = metadata.get("version")
    if isinstance(version, (str, int, float)) and not isinstance(version, bool):
        title = f"{title} {version}"
    details = []
    recipe = metadata.get("recipe")
    if isinstance(recipe, str):
        details.append(recipe)
    data_text, synthetic = training_data_text(metadata)
    if synthetic is True:
        details.append("synthetic phantoms")
    elif synthetic is False:
        details.append("real data")
    return f"{title} ({', '.join(details)})" if details else str(title)


def format_model_card(metadata: Mapping[str, Any] | None, name: str | None = None) -> str:
    """The model card shown next to the model selector, as plain text (never raises on odd metadata).

    Args:
        metadata: the model package's ``configs/metadata.json`` as a dict (keys read: ``task``, ``version``,
            ``recipe``, ``network``, ``input``, ``output.labels``, ``training_data``, ``metrics``, ``sha256``,
            ``libraries``, ``created``, ``description``, ``intended_use``, ``output.caveat``; the layout of
            :mod:`MedDLLib.models`, with a few aliases). ``None`` or a non-dict gives a card that says so.
        name: the model's name in the cache (shown in the title when given).

    Returns:
        Several lines; the second is always :data:`RESEARCH_USE_ONLY`, a model trained on synthetic data
        only says that its output on real scans means nothing, and the task's own caveat (``output.caveat``,
        e.g. "MGMT status from MRI is close to chance on external data") follows.
    """
    meta = _as_mapping(metadata)
    lines = [model_title(meta, name), RESEARCH_USE_ONLY]
    if not meta:
        lines.append("No model description (configs/metadata.json) was found.")
        return "\n".join(lines)
    data_text, synthetic = training_data_text(meta)
    if synthetic is True:
        lines.append("Trained on synthetic phantoms only: its output on real scans is not meaningful.")
    caveat = _as_mapping(meta.get("output")).get("caveat")
    if isinstance(caveat, str) and caveat.strip():
        lines.append(f"Caveat: {caveat.strip()}")
    lines.append("")
    description = meta.get("description")
    if isinstance(description, str) and description.strip():
        lines += [description.strip(), ""]
    fields = [
        ("Task", meta.get("task") if isinstance(meta.get("task"), str) else None),
        ("Recipe", meta.get("recipe") if isinstance(meta.get("recipe"), str) else None),
        ("Network", _network_text(meta)),
        ("Input", _input_text(meta)),
        ("Outputs", _labels_text(meta)),
        ("Trained on", data_text),
        ("Intended use", meta.get("intended_use") if isinstance(meta.get("intended_use"), str) else None),
    ]
    lines += [f"{label}: {value}" for label, value in fields if value]
    metric_lines = _metric_lines(_first(meta, "metrics", "eval_metrics"))
    if metric_lines:
        evaluated_on = _as_mapping(meta.get("evaluation")).get("data") or meta.get("evaluated_on")
        lines.append("Metrics" + (f" (on {evaluated_on})" if isinstance(evaluated_on, str) else "") + ":")
        lines += metric_lines
    else:
        lines.append("Metrics: none recorded")
    sha = meta.get("sha256")
    if isinstance(sha, str) and sha:
        lines.append(f"Weights SHA-256: {sha} (checked before every use)")
    versions = _as_mapping(_first(meta, "libraries", "versions", "library_versions"))
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if isinstance(v, (str, int, float)))
    if shown:
        lines.append(f"Built with: {shown}")
    created = meta.get("created")
    if isinstance(created, str):
        lines.append(f"Created: {created}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One entry of a model selector: ``name`` is what ``--model`` takes; ``problem`` says why it is unusable."""

    name: str
    title: str
    problem: str = ""

    @property
    def usable(self) -> bool:
        return not self.problem


#: The problem of a saved model choice whose package is not in the cache (see :func:`model_choices`).
MISSING_MODEL = "not in the model cache (the scene was saved with it): import the package again to use it"


def model_choices(entries: Iterable[Mapping[str, Any]], task: str | None = None,
                  keep: str | None = None) -> list[ModelChoice]:
    """Selector entries from the model cache listing (:func:`MedDLLib.models.list_models`).

    Models of ``task`` (all tasks when ``None``) come first, sorted by name; broken packages (an ``error`` key)
    follow, unusable, with their error, so the user sees why a model they imported is not offered. ``keep``, a
    saved choice (the parameter node's model of a reopened scene) that is not among them, comes last as unusable
    ``"<name> (missing)"`` with :data:`MISSING_MODEL`: the choice is shown, never silently replaced.
    """
    usable, broken = [], []
    for entry in entries:
        name = str(entry.get("name", "?"))
        if entry.get("error"):
            broken.append(ModelChoice(name, f"{name} (broken)", str(entry["error"])))
        elif task is None or entry.get("task") == task:
            usable.append(ModelChoice(name, model_title(entry, name)))
    choices = sorted(usable, key=lambda c: c.name) + sorted(broken, key=lambda c: c.name)
    if keep and keep not in {c.name for c in choices}:
        choices.append(ModelChoice(keep, f"{keep} (missing)", MISSING_MODEL))
    return choices


def bundle_choices(entries: Iterable[Mapping[str, Any]], outputs: Iterable[str],
                   keep: str | None = None) -> list[ModelChoice]:
    """Selector entries of the imported MONAI bundles (``task`` "monai-bundle" in the cache listing,
    :func:`MedDLLib.models.list_models`) whose outputs include every name of ``outputs``: the bundles of one kind
    (the wholeBody lobes, the BraTS tumour regions) whatever the user named them. ``keep``: a saved choice not
    among them comes last as ``"<name> (missing)"`` (:data:`MISSING_MODEL`), as in :func:`model_choices`."""
    from . import models

    wanted = set(outputs)
    choices = []
    for entry in entries:
        if entry.get("error") or entry.get("task") != "monai-bundle":
            continue
        name = str(entry["name"])
        try:
            labels = set(models.read_metadata(name).get("output", {}).get("labels") or [])
        except models.ModelError:
            continue
        if wanted <= labels:
            choices.append(ModelChoice(name, model_title(entry, name)))
    choices.sort(key=lambda c: c.name)
    if keep and keep not in {c.name for c in choices}:
        choices.append(ModelChoice(keep, f"{keep} (missing)", MISSING_MODEL))
    return choices


#: File-dialog filter of :func:`import_source`: a zipped package, or the metadata file inside a package folder.
IMPORT_FILE_FILTER = "Model package (*.zip metadata.json)"


def import_source(selected: str | os.PathLike) -> Path:
    """What to import for a file picked in the Import dialog: the package folder when ``configs/metadata.json``
    of an unpacked package was picked, else the file itself (a .zip). One dialog thus serves both forms."""
    path = Path(selected)
    if path.name == "metadata.json" and path.parent.name == "configs":
        return path.parent.parent
    return path


# ----------------------------------------------------------------------------------------------------------------
# Child-process protocol
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Message:
    """One event from a child process.

    ``kind`` is ``"progress"`` (``progress`` in [0, 1] and a ``message``), ``"log"`` (a line of text; ``stream``
    says where non-protocol text came from), ``"status"`` (a transient line, e.g. a tqdm bar redrawn with
    ``\\r``), ``"result"`` (``data`` holds the result dict) or ``"error"`` (``message``).
    """

    kind: str
    message: str = ""
    progress: float | None = None
    data: Mapping[str, Any] | None = None
    stream: str = "stdout"


def encode_message(kind: str, message: str = "", progress: float | None = None, data: Mapping | None = None) -> str:
    """One protocol line (no newline). ``progress`` is clamped to [0, 1]; ``data`` must be JSON-serialisable."""
    if kind not in MESSAGE_KINDS:
        raise ValueError(f"unknown message kind {kind!r}; expected one of {MESSAGE_KINDS}")
    record: dict[str, Any] = {PROTOCOL_KEY: PROTOCOL_VERSION, "kind": kind}
    if kind == "progress":
        value = _number(progress)
        if value is None:
            raise ValueError(f"progress must be a finite number, got {progress!r}")
        record["progress"] = min(1.0, max(0.0, value))
    if message:
        record["message"] = str(message)
    if kind == "result":
        record["result"] = dict(data or {})
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def decode_line(line: str, stream: str = "stdout") -> Message:
    """A line of child output as a :class:`Message`: a protocol message, or a ``log`` line with its text."""
    text = line.rstrip("\r\n")
    stripped = text.strip()
    if stream == "stdout" and stripped.startswith("{") and stripped.endswith("}"):
        try:
            record = json.loads(stripped)
        except ValueError:
            record = None
        if (
            isinstance(record, dict)
            and record.get(PROTOCOL_KEY) == PROTOCOL_VERSION
            and record.get("kind") in MESSAGE_KINDS
        ):
            kind = record["kind"]
            message = record.get("message")
            message = message if isinstance(message, str) else ""
            if kind == "progress":
                value = _number(record.get("progress"))
                if value is not None:
                    return Message("progress", message, progress=min(1.0, max(0.0, value)))
            elif kind == "result":
                result = record.get("result")
                return Message("result", message, data=result if isinstance(result, dict) else {})
            else:
                return Message(kind, message)
    return Message("log", text, stream=stream)


class JsonLinesReporter:
    """The child side of the protocol: ``reporter(0.4, "running the network")`` writes a progress line.

    It is a progress callback ``(fraction, message) -> None`` as the logic's ``process(..., progress=...)``
    takes; :meth:`log`, :meth:`result` and :meth:`error` write the other kinds. Each line is written whole and
    flushed, so the GUI sees it at once.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def __call__(self, fraction: float, message: str = "") -> None:
        self._write(encode_message("progress", message, progress=fraction))

    def log(self, message: str) -> None:
        self._write(encode_message("log", message))

    def result(self, data: Mapping[str, Any]) -> None:
        self._write(encode_message("result", data=data))

    def error(self, message: str) -> None:
        self._write(encode_message("error", message))


def reporter_from_environment(environ: Mapping[str, str] | None = None, stream: IO[str] | None = None):
    """A :class:`JsonLinesReporter` when this process runs under the GUI (``MEDDL_GUI_PROTOCOL=jsonl``), else None.

    The ``meddl`` command calls this once and hands the reporter to the code that reports progress.
    """
    environ = os.environ if environ is None else environ
    return JsonLinesReporter(stream) if environ.get(PROTOCOL_ENV) == PROTOCOL_VALUE else None


class LineSplitter:
    """Cuts a stream of byte (or text) chunks into lines.

    Chunks may end in the middle of a line or of a UTF-8 character. ``\\n`` and ``\\r\\n`` end a line;
    a lone ``\\r`` (a progress bar redrawing itself) ends a *transient* line, and so does the end of the stream
    for text that followed a lone ``\\r``.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._after_cr = False  # the pending text follows a lone "\r"

    def feed(self, chunk: bytes | str) -> list[tuple[str, bool]]:
        """``(line, transient)`` pairs completed by ``chunk``."""
        text = self._decoder.decode(chunk) if isinstance(chunk, (bytes, bytearray)) else chunk
        self._pending += text
        lines = []
        start = 0
        i = 0
        pending = self._pending
        while i < len(pending):
            ch = pending[i]
            if ch == "\n":
                lines.append((pending[start:i], False))
                start, self._after_cr = i + 1, False
            elif ch == "\r":
                if i + 1 == len(pending):
                    break  # wait: a "\n" may follow in the next chunk
                if pending[i + 1] == "\n":
                    lines.append((pending[start:i], False))
                    start, self._after_cr = i + 2, False
                    i += 1
                else:
                    lines.append((pending[start:i], True))
                    start, self._after_cr = i + 1, True
            i += 1
        self._pending = pending[start:]
        return lines

    def flush(self) -> list[tuple[str, bool]]:
        """The unterminated rest (at the end of the stream)."""
        rest = (self._pending + self._decoder.decode(b"", final=True)).rstrip("\r")
        transient = self._after_cr
        self._pending, self._after_cr = "", False
        return [(rest, transient)] if rest else []


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """How a child run ended: ``status`` is ``"succeeded"``, ``"failed"`` or ``"cancelled"``."""

    status: str
    exit_code: int | None
    message: str
    result: Mapping[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class RunMonitor:
    """Turns a child's stdout/stderr chunks into :class:`Message` events and its end into a :class:`RunOutcome`.

    State kept for the GUI: :attr:`progress` (``None`` until the first progress message: show a busy bar),
    :attr:`message` (the latest progress/status text), :attr:`result`, :attr:`error` and the last
    ``tail_lines`` log lines (used to explain a failure).
    """

    def __init__(self, tail_lines: int = 20) -> None:
        self._splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        self.progress: float | None = None
        self.message = ""
        self.result: Mapping[str, Any] | None = None
        self.error: str | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)

    def feed(self, chunk: bytes | str, stream: str = "stdout") -> list[Message]:
        """Events in a chunk of ``stream`` (``"stdout"`` or ``"stderr"``)."""
        return self._handle(self._splitters[stream].feed(chunk), stream)

    def flush(self) -> list[Message]:
        """Events of unterminated last lines (call when the process has ended)."""
        events = []
        for stream, splitter in self._splitters.items():
            events += self._handle(splitter.flush(), stream)
        return events

    def _handle(self, lines: list[tuple[str, bool]], stream: str) -> list[Message]:
        events = []
        for line, transient in lines:
            if transient:
                if line.strip():
                    self.message = line.strip()
                    events.append(Message("status", self.message, stream=stream))
                continue
            event = decode_line(line, stream)
            if event.kind == "log" and not event.message.strip():
                continue
            if event.kind == "progress":
                self.progress = event.progress
                self.message = event.message or self.message
            elif event.kind == "result":
                self.result = event.data
            elif event.kind == "error":
                self.error = event.message
            else:
                self.tail.append(event.message)
            events.append(event)
        return events

    def finish(self, exit_code: int | None, cancelled: bool = False, crashed: bool = False) -> RunOutcome:
        """The outcome, from the exit status and what was reported.

        Args:
            exit_code: the process exit status (``None`` if it could not be started or was killed).
            cancelled: the user (or script) asked to stop the run.
            crashed: the process died from a signal / crashed (QProcess.CrashExit).
        """
        if cancelled:
            return RunOutcome("cancelled", exit_code, "Cancelled.", self.result)
        if exit_code == 0 and not crashed and self.error is None:
            return RunOutcome("succeeded", 0, self.message or "Done.", self.result)
        if self.error:
            reason = self.error
        elif self.tail:
            reason = self.tail[-1]
        else:
            reason = ""
        if exit_code is not None and exit_code < 0:
            reason = f"The background process was killed by signal {-exit_code}{': ' + reason if reason else '.'}"
        elif crashed or exit_code is None:
            reason = f"The background process crashed{': ' + reason if reason else '.'}"
        elif not reason:
            reason = f"The background process exited with status {exit_code}."
        return RunOutcome("failed", exit_code, reason, self.result)


def child_command(python_executable: str, meddl_args: Sequence[str]) -> list[str]:
    """The command line that runs ``meddl <meddl_args>`` in a child Python (``PythonSlicer`` inside Slicer).

    The child imports ``MedDLLib`` from its ``PYTHONPATH`` (see :func:`child_environment`); the command does not
    depend on where a launcher script is installed.
    """
    return [str(python_executable), "-c", _CHILD_PROGRAM, *map(str, meddl_args)]


def child_environment(
    base: Mapping[str, str],
    python_paths: Sequence[str | os.PathLike] = (),
    tasks: Sequence[str] = (),
) -> dict[str, str]:
    """The environment of the child process.

    Args:
        base: the parent's environment (``os.environ`` or Qt's ``QProcessEnvironment`` as a dict).
        python_paths: folders to put first on ``PYTHONPATH`` (those holding ``MedDLLib`` and the task libraries).
        tasks: tasks to register in the child, as ``module:attribute`` (``"ICHDetectorLib.cli:TASK"``); Slicer
            has no package metadata, so the entry points of ``pyproject.toml`` are not there.

    Returns:
        A new dict: the protocol switched on, unbuffered UTF-8 output, paths and tasks added.
    """
    from .tasks import EXTRA_TASKS_ENV

    env = dict(base)
    paths = [os.fspath(p) for p in python_paths]
    existing = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths + existing))
    if tasks:
        existing_tasks = [t for t in env.get(EXTRA_TASKS_ENV, "").split(",") if t.strip()]
        env[EXTRA_TASKS_ENV] = ",".join(dict.fromkeys(list(tasks) + existing_tasks))
    env[PROTOCOL_ENV] = PROTOCOL_VALUE
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def python_executable(which: Callable[[str], str | None] | None = None) -> str:
    """The Python for child processes: ``PythonSlicer`` when on the PATH (inside Slicer), else this Python."""
    import shutil

    found = (which or shutil.which)("PythonSlicer")
    return found or sys.executable


class ChildProcess:
    """A child process whose stdout and stderr two reader threads collect; the owner polls it for messages.

    The GUI polls it from a timer on the main thread (so results reach the scene on the main thread and the
    GUI never waits); :func:`run_child_blocking` polls it in a loop. The child gets its own process group
    (POSIX) so that cancelling also stops what it started (``PythonSlicer`` is a launcher that starts the real
    Python as its own child).

    Attributes:
        monitor: the :class:`RunMonitor` (current progress fraction and message).
        outcome: ``None`` while running, then the :class:`RunOutcome`.
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        terminate_timeout_s: float = 5.0,
    ) -> None:
        self.monitor = RunMonitor()
        self.outcome: RunOutcome | None = None
        self._terminate_timeout_s = terminate_timeout_s
        self._kill_at: float | None = None
        self._cancelled = False
        self._chunks: queue.Queue[tuple[str, bytes | None]] = queue.Queue()
        self._open_streams = 0
        options: dict[str, Any] = {}
        if os.name == "nt":  # pragma: no cover - no console window for the child on Windows
            options["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            options["start_new_session"] = True
        try:
            self._process = subprocess.Popen(
                [str(c) for c in command],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
                cwd=cwd,
                **options,
            )
        except OSError as exc:
            self._process = None
            self.outcome = RunOutcome("failed", None, f"Cannot start {command[0]}: {exc.strerror or exc}")
            return
        self._readers = [
            threading.Thread(target=self._pump, args=(name, pipe), daemon=True)
            for name, pipe in (("stdout", self._process.stdout), ("stderr", self._process.stderr))
        ]
        self._open_streams = len(self._readers)
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self.outcome is None

    def _pump(self, stream_name: str, pipe: IO[bytes]) -> None:
        # read1 returns what is available (at least one byte), so lines arrive as soon as they are written
        while True:
            data = pipe.read1(65536)
            if not data:
                break
            self._chunks.put((stream_name, data))
        self._chunks.put((stream_name, None))

    def _signal(self, kill: bool) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        if os.name == "nt":  # pragma: no cover - the whole tree, as the process group does on POSIX
            subprocess.run(
                ["taskkill", "/T", "/PID", str(process.pid)] + (["/F"] if kill else []),
                capture_output=True,
                check=False,
            )
            if kill:
                process.kill()
            return
        import signal

        try:
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            (process.kill if kill else process.terminate)()

    def cancel(self) -> None:
        """Ask the child (and its children) to stop; it is killed if still running after the timeout."""
        if self.outcome is not None or self._cancelled:
            return
        self._cancelled = True
        self._signal(kill=False)
        self._kill_at = time.monotonic() + self._terminate_timeout_s

    def poll(self, timeout: float = 0.0) -> list[Message]:
        """The messages that arrived since the last call (waiting up to ``timeout`` seconds for the first).

        When the child has ended and its output is read, :attr:`outcome` is set (and stays set).
        """
        if self.outcome is not None:
            return []
        events: list[Message] = []
        try:
            item = self._chunks.get(timeout=timeout) if timeout > 0 else self._chunks.get_nowait()
        except queue.Empty:
            item = None
        while item is not None:
            stream_name, data = item
            if data is None:
                self._open_streams -= 1
            else:
                events += self.monitor.feed(data, stream_name)
            try:
                item = self._chunks.get_nowait()
            except queue.Empty:
                item = None
        if self._kill_at is not None and time.monotonic() > self._kill_at:
            self._signal(kill=True)
            self._kill_at = None
        if self._open_streams == 0:
            exit_code = self._process.wait()
            for reader in self._readers:
                reader.join()
            self._process.stdout.close()
            self._process.stderr.close()
            events += self.monitor.flush()
            self.outcome = self.monitor.finish(exit_code, cancelled=self._cancelled, crashed=exit_code < 0)
        return events


def run_child_blocking(
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    on_message: Callable[[Message], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    cwd: str | os.PathLike | None = None,
    poll_s: float = 0.1,
    terminate_timeout_s: float = 5.0,
) -> RunOutcome:
    """Run a child process to the end (the blocking mode for scripts), reporting its messages as they come.

    Args:
        command: the command line (e.g. from :func:`child_command`).
        env: its environment (e.g. from :func:`child_environment`); default: this process's.
        on_message: called in this thread with each :class:`Message`.
        cancel: polled every ``poll_s`` seconds at most; when it returns True the child is terminated (killed
            after ``terminate_timeout_s``) and the outcome is ``"cancelled"``.
        cwd: working folder of the child.

    Returns:
        The :class:`RunOutcome` (:meth:`RunMonitor.finish`). A command that cannot be started is a failed
        outcome with the reason, not an exception.
    """
    child = ChildProcess(command, env, cwd, terminate_timeout_s)
    while child.outcome is None:
        for message in child.poll(timeout=poll_s):
            if on_message is not None:
                on_message(message)
        if cancel is not None and child.outcome is None and cancel():
            child.cancel()
    return child.outcome
