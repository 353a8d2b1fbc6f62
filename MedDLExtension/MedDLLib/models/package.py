"""One model package on disk: its metadata, its weights and their checksum; saving, loading and verifying it.

A model package is a folder in MONAI-bundle layout (see :mod:`MedDLLib.models` for the keys)::

    <name>/
      configs/metadata.json    what the model is (MedDL's keys and the MONAI bundle specification's keys)
      configs/inference.json   ``network_def`` for MONAI's tools (MedDL itself never reads it)
      models/model.pt          the weights: a state dict (parameter name -> tensor), nothing else

Loading checks the metadata keys and bounds (input sizes, Grad-CAM layer), then the SHA-256 of the weights
*before* reading them (a regular file inside the package, at most :data:`MAX_WEIGHTS_BYTES`), then reads them with
``torch.load(..., weights_only=True)``: a tampered file or a checkpoint carrying pickled Python objects is refused
with a :class:`~MedDLLib.errors.ModelError`, and no code from it ever runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import io
import pickle
import pickletools
import platform
import re
import shutil
import stat
import tempfile
import uuid
import warnings
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ModelError
from . import monai_spec
from .registry import build_network

if TYPE_CHECKING:
    import torch

#: Identifier (and version) of the package format written by this MedDL.
FORMAT = "meddl-model/1"
METADATA_FILE = "configs/metadata.json"
INFERENCE_FILE = monai_spec.INFERENCE_FILE
WEIGHTS_FILE = "models/model.pt"
TRAINING_DATA_KINDS = ("synthetic", "real")
#: Largest metadata.json MedDL reads (bytes) and deepest nesting it accepts.
MAX_METADATA_BYTES = 4 * 1024 * 1024
MAX_METADATA_DEPTH = 32
#: Largest weights file MedDL hashes and reads (bytes).
MAX_WEIGHTS_BYTES = 8 * 1024 ** 3
#: Input sizes (voxels a side, slices) a package may ask for: keys of ``input`` and their bounds.
INPUT_SIZE_KEYS = {"size": (1, 2048), "depth": (1, 2048), "n_slices": (1, 2048), "shape_kji": (1, 2048),
                   "context": (0, 64)}
#: The sentence MedDL says when a weights file holds pickled Python objects.
PICKLE_REFUSAL = ("holds pickled Python objects, not only tensors: MedDL refused it without running any of it "
                  "(weights are read with torch.load(weights_only=True); save a plain state dict)")

# (dotted key, expected type(s), description) that the caller of save_package provides.
_CALLER_KEYS: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("task", (str,), "task name, e.g. 'ich'"),
    ("version", (str,), "model version string, e.g. '1.0.0'"),
    ("recipe", (str,), "training recipe, e.g. 'seed' or 'improved'"),
    ("network", (dict,), "{'name': ..., 'args': {...}}"),
    ("network.name", (str,), "registered network name"),
    ("network.args", (dict,), "keyword arguments of the network factory"),
    ("input", (dict,), "input specification"),
    ("input.channels", (list, int), "channel names (list) or count"),
    ("output", (dict,), "output specification"),
    ("output.labels", (list,), "output label names"),
    ("training_data", (dict,), "what the model was trained on"),
    ("training_data.kind", (str,), "'synthetic' or 'real'"),
    ("training_data.n_studies", (int,), "number of training studies"),
    ("training_data.description", (str,), "free text"),
    ("metrics", (dict,), "evaluation metrics (may be empty)"),
)
# Keys save_package fills in.
_SAVED_KEYS: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("format", (str,), FORMAT),
    ("sha256", (str,), "hex SHA-256 of models/model.pt"),
    ("libraries", (dict,), "library versions"),
    ("created", (str,), "ISO date-time"),
)
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ModelPackage:
    """A verified model package: its folder, metadata and state dict (tensors on ``map_location``).

    A package loaded with ``weights=False`` (:func:`load_package_at`) reads its state dict on first use of
    :attr:`state_dict`, checking the weights' SHA-256 again first: a prediction that runs on a recorded runtime
    export (:mod:`MedDLLib.runtime`) never needs it, nor torch.
    """

    path: Path
    metadata: dict[str, Any]
    _state: dict[str, "torch.Tensor"] | None = field(default=None, repr=False)
    map_location: Any = field(default="cpu", repr=False)

    @property
    def state_dict(self) -> dict[str, "torch.Tensor"]:
        """Parameter name -> tensor (weights-only load; read now when it was deferred)."""
        if self._state is None:
            verify_sha256(self.path, self.metadata)
            self._state = load_weights(self.path, self.map_location)
        return self._state

    @property
    def weights_read(self) -> bool:
        """Whether the state dict is in memory (False until a deferred package's weights are used)."""
        return self._state is not None

    @property
    def name(self) -> str:
        """The package folder's name (the model's name in the cache)."""
        return self.path.name

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def labels(self) -> list[str]:
        return list(self.metadata["output"]["labels"])

    def network(self, device: "torch.device | str | None" = None) -> "torch.nn.Module":
        """The network with these weights loaded (strict), in eval mode, on ``device`` when given."""
        model = load_into_network(self.metadata, self.state_dict, self.path)
        model.eval()
        return model.to(device) if device is not None else model


def validate_metadata(metadata: Mapping[str, Any], source: str = "metadata", *, saved: bool = True) -> None:
    """Check the keys, types and bounds of package metadata; ``saved=False`` skips the keys :func:`save_package`
    fills.

    Raises:
        ModelError: naming ``source`` and the first missing or wrong key.
    """
    if not isinstance(metadata, Mapping):
        raise ModelError(f"{source}: metadata must be a JSON object, got {type(metadata).__name__}")
    keys = _CALLER_KEYS + (_SAVED_KEYS if saved else ())
    for dotted, types, what in keys:
        node: Any = metadata
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ModelError(f"{source}: missing key {dotted!r} ({what})")
            node = node[part]
        if not isinstance(node, types) or (isinstance(node, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            raise ModelError(f"{source}: key {dotted!r} must be {expected} ({what}), got {_short(node)}")
    if metadata["training_data"]["kind"] not in TRAINING_DATA_KINDS:
        raise ModelError(f"{source}: training_data.kind must be one of {TRAINING_DATA_KINDS}, "
                         f"got {metadata['training_data']['kind']!r}")
    _check_input_sizes(metadata["input"], source)
    if saved:
        fmt = metadata["format"]
        if fmt != FORMAT:
            newer = fmt.startswith("meddl-model/")
            raise ModelError(f"{source}: package format {fmt!r} is not {FORMAT!r}"
                             + (" (made by a newer MedDL; update MedDL)" if newer else ""))
        if not _SHA_RE.match(metadata["sha256"]):
            raise ModelError(f"{source}: sha256 must be 64 lowercase hex digits, got {metadata['sha256']!r}")


def _check_input_sizes(spec: Mapping[str, Any], source: str) -> None:
    """Input sizes within :data:`INPUT_SIZE_KEYS` bounds (a size of 100000 would allocate terabytes)."""
    channels = spec["channels"]
    n_channels = len(channels) if isinstance(channels, list) else channels
    if not 1 <= n_channels <= 64:
        raise ModelError(f"{source}: input.channels must name 1 to 64 channels, got {n_channels}")
    for key, (low, high) in INPUT_SIZE_KEYS.items():
        if key not in spec:
            continue
        values = spec[key] if isinstance(spec[key], list) else [spec[key]]
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ModelError(f"{source}: input.{key} must be whole numbers from {low} to {high}, "
                                 f"got {_short(spec[key])}")


def check_gradcam_layer(metadata: Mapping[str, Any], network: "torch.nn.Module", source: str) -> None:
    """``output.gradcam_layer``, when given, must name a module of the network."""
    layer = metadata["output"].get("gradcam_layer")
    if layer is None:
        return
    names = dict(network.named_modules())
    if not isinstance(layer, str) or layer not in names or not layer:
        top = ", ".join(n for n in names if n and "." not in n)
        raise ModelError(f"{source}: output.gradcam_layer {_short(layer)} is not a layer of network "
                         f"{metadata['network']['name']!r} (its top-level layers: {top})")


def save_package(path: str | os.PathLike, state_dict: Mapping[str, "torch.Tensor"] | "torch.nn.Module",
                 metadata: Mapping[str, Any]) -> Path:
    """Write a model package atomically: a reader sees the old package or the new one, never a half-written one.

    The weights are written with ``torch.save`` (tensors moved to the CPU), their SHA-256, the library versions,
    the format, the creation time and the MONAI bundle keys are added to the metadata, ``configs/inference.json``
    is written, and the network is built and loaded strictly to prove the package is usable. Everything is
    written into a temporary folder beside ``path`` and renamed into place; an existing package at ``path`` is
    replaced (a folder that is not a package is never touched).

    Args:
        path: the package folder to create or replace.
        state_dict: parameter name -> tensor (a module is accepted and its ``state_dict()`` taken; DDP/DataParallel
            wrappers are unwrapped).
        metadata: the keys listed in :mod:`MedDLLib.models` except those filled in here (JSON-serialisable; numpy
            numbers are converted, NaN/inf become null).

    Returns:
        The package folder.
    """
    import torch

    dest = Path(path).expanduser().resolve()
    meta = _jsonable(copy.deepcopy(dict(metadata)), "metadata")
    validate_metadata(meta, f"metadata for {dest}", saved=False)
    state = _cpu_state_dict(state_dict)
    check_replaceable(dest)
    network = load_into_network(meta, state, dest)
    check_gradcam_layer(meta, network, f"metadata for {dest}")

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        weights = tmp / WEIGHTS_FILE
        weights.parent.mkdir(parents=True)
        with open(weights, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        libraries = library_versions()
        meta.update(format=FORMAT, sha256=sha256_file(weights), libraries=libraries)
        meta["created"] = meta.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds")
        meta = {**monai_spec.bundle_metadata(meta, libraries, monai_spec.network_io(network, meta)), **meta}
        validate_metadata(meta, f"metadata for {dest}")
        write_json(tmp / METADATA_FILE, meta)
        write_json(tmp / INFERENCE_FILE, monai_spec.inference_config(meta))
        install(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def read_package_metadata(root: Path) -> dict[str, Any]:
    """The validated metadata of the package folder ``root`` (weights not read)."""
    file = root / METADATA_FILE
    if not file.is_file():
        raise ModelError(f"{root} is not a model package: {METADATA_FILE} is missing")
    size = file.stat().st_size
    if size > MAX_METADATA_BYTES:
        raise ModelError(f"{file} is {size:,} bytes; a model's metadata is at most {MAX_METADATA_BYTES:,}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{file} cannot be read as UTF-8 text: {exc}") from exc
    depth = _nesting_depth(text)
    if depth > MAX_METADATA_DEPTH:
        raise ModelError(f"{file} nests brackets {depth} deep; model metadata nests at most {MAX_METADATA_DEPTH}")
    try:
        metadata = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ModelError(f"{file} is not valid JSON: {_first_line(exc)}") from exc
    validate_metadata(metadata, str(file))
    return metadata


def verify_package(root: Path) -> dict[str, Any]:
    """Check the package folder ``root`` fully: metadata, SHA-256, weights-only load, network fit (strict) and
    Grad-CAM layer.

    Returns:
        ``{"name", "path", "task", "version", "sha256", "n_tensors", "n_values", "network", "monai_bundle"}``.

    Raises:
        ModelError: the first problem found (an unknown network is a problem, never "not checked").
    """
    metadata = read_package_metadata(root)
    verify_sha256(root, metadata)
    state = load_weights(root, "cpu")
    network = load_into_network(metadata, state, root)
    check_gradcam_layer(metadata, network, str(root / METADATA_FILE))
    # MONAI reads the deprecated "optional_packages_version" as "required_packages_version"
    missing = [k for k in monai_spec.REQUIRED_KEYS if k not in metadata
               and not (k == "required_packages_version" and "optional_packages_version" in metadata)]
    has_config = (root / INFERENCE_FILE).is_file()
    problems = ([f"missing {', '.join(missing)}"] if missing else []) + ([] if has_config else
                                                                         [f"no {INFERENCE_FILE}"])
    return {
        "name": root.name, "path": str(root), "task": metadata["task"], "version": metadata["version"],
        "sha256": metadata["sha256"], "n_tensors": len(state),
        "n_values": int(sum(t.numel() for t in state.values())),
        "network": f"{metadata['network']['name']} built and loaded (strict)",
        "monai_bundle": "yes" if not problems else f"no ({'; '.join(problems)}; an older MedDL wrote none)",
    }


def load_package_at(root: Path, map_location: "str | torch.device" = "cpu", *, weights: bool = True) -> ModelPackage:
    """Load the package folder ``root`` after checking it: metadata keys, then the weights' SHA-256, then a
    weights-only load (see :func:`MedDLLib.models.load_package` for names in the cache). ``weights=False`` defers
    the load (and torch) to the first use of :attr:`ModelPackage.state_dict`."""
    metadata = read_package_metadata(root)
    verify_sha256(root, metadata)
    package = ModelPackage(path=root, metadata=metadata, map_location=map_location)
    if weights:
        package.state_dict  # noqa: B018 - read now
    return package


def library_versions() -> dict[str, str]:
    """Versions recorded in a package: torch, monai, meddl, numpy, python."""
    import numpy
    import torch

    try:
        from .. import __version__
    except ImportError:  # MedDLLib imported as a namespace package (stale editable install): ask the metadata
        from importlib import metadata

        __version__ = metadata.version("meddl")
    try:
        import monai

        monai_version = monai.__version__
    except ImportError:  # pragma: no cover - monai is a dependency
        monai_version = "not installed"
    return {"torch": torch.__version__, "monai": monai_version, "meddl": __version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


# ------------------------------------------------------------------------------------------------ weights
def check_weights_file(root: Path) -> Path:
    """The weights file of ``root``: a regular file inside the package, at most :data:`MAX_WEIGHTS_BYTES`.

    A symbolic link (to ``/dev/zero``, or out of the package) or a device, pipe or folder is refused before
    anything reads it.
    """
    weights = root / WEIGHTS_FILE
    if weights.is_symlink():
        raise ModelError(f"{weights} is a symbolic link (to {os.readlink(weights)}); weights must be a regular "
                         "file inside the package")
    try:
        info = weights.stat()
    except FileNotFoundError:
        raise ModelError(f"{root} is not a complete model package: {WEIGHTS_FILE} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelError(f"{weights} is not a regular file (a device, pipe or folder); refused")
    if info.st_size > MAX_WEIGHTS_BYTES:
        raise ModelError(f"{weights} is {info.st_size:,} bytes, more than MedDL reads ({MAX_WEIGHTS_BYTES:,})")
    return weights


def verify_sha256(root: Path, metadata: Mapping[str, Any]) -> None:
    """The weights' SHA-256 equals the metadata's (checked before the weights are unpickled)."""
    weights = check_weights_file(root)
    if sha256_file(weights) != metadata["sha256"]:
        raise ModelError(f"weights of {root} do not match the sha256 in metadata.json (tampered or corrupt)")


def load_weights(root: Path, map_location: Any) -> dict[str, "torch.Tensor"]:
    """The state dict of ``root``'s weights, read with ``torch.load(weights_only=True)``."""
    weights = check_weights_file(root)
    return read_state_dict(weights, map_location)


def read_state_dict(file: Path, map_location: Any = "cpu") -> dict[str, "torch.Tensor"]:
    """A state dict (name -> tensor) from a torch file, weights-only; pickled objects are refused with
    :data:`PICKLE_REFUSAL`."""
    import torch

    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says it better
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if _is_pickle(file):  # a pickle the weights-only reader refused: it references Python code or objects
            raise ModelError(f"{file} {PICKLE_REFUSAL} [{_weights_only_detail(exc)}]") from exc
        raise ModelError(f"{file} is not a readable torch checkpoint (weights-only load: "
                         f"{_weights_only_detail(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 - any other failure means an unreadable file
        raise ModelError(f"{file} is not a readable torch checkpoint: {_first_line(exc)}") from exc
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ModelError(f"{file} is not a state dict (parameter name -> tensor); got {type(obj).__name__}")
    return dict(obj)


def _is_pickle(file: Path) -> bool:
    """Whether ``file`` is a torch zip checkpoint or starts with valid pickle opcodes (read, never executed)."""
    if zipfile.is_zipfile(file):
        return True
    with open(file, "rb") as f:
        head = f.read(4096)
    try:
        for count, _ in enumerate(pickletools.genops(io.BytesIO(head)), start=1):
            if count >= 2:
                return True
    except (ValueError, EOFError, UnicodeDecodeError):
        return False
    return False


def load_into_network(metadata: Mapping[str, Any], state: Mapping[str, Any], where: Path) -> "torch.nn.Module":
    """The network of ``metadata`` with ``state`` loaded strictly (``where`` names the package in errors).

    Keys and shapes are compared on the ``meta`` device first, so weights that do not fit are refused naming the
    first mismatching key before the network is allocated.
    """
    check_state_fits(build_network(metadata, on_meta=True).state_dict(), state,
                     f"weights of {where} do not fit network {metadata['network']['name']!r}")
    model = build_network(metadata)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = " ".join(lines[:2])  # "Error(s) in loading state_dict for X:" and the first mismatch
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise ModelError(f"weights of {where} do not fit network {metadata['network']['name']!r}: "
                         f"{detail or type(exc).__name__}") from exc
    return model


def check_state_fits(expected: Mapping[str, Any], state: Mapping[str, Any], what: str) -> None:
    """``state`` has exactly ``expected``'s keys with the same shapes; else one line naming the first mismatching
    key (in the weights' order; then the first key the weights lack). ``what`` starts the message."""
    for key, tensor in state.items():
        if key not in expected:
            raise ModelError(f"{what}: first mismatching key {key!r} is not in the network")
        shape, want = tuple(getattr(tensor, "shape", ())), tuple(expected[key].shape)
        if shape != want:
            raise ModelError(f"{what}: first mismatching key {key!r}: shape {list(shape)}, expected {list(want)}")
    missing = [key for key in expected if key not in state]
    if missing:
        raise ModelError(f"{what}: first mismatching key {missing[0]!r} is missing from the weights "
                         f"({len(missing)} missing)")


def _cpu_state_dict(state_dict: Any) -> dict[str, "torch.Tensor"]:
    import torch

    if isinstance(state_dict, torch.nn.Module):
        module = state_dict
        while isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            module = module.module
        state_dict = module.state_dict()
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ModelError(f"state_dict must be a non-empty mapping of parameter name -> tensor, "
                         f"got {type(state_dict).__name__}")
    out = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(f"state_dict entry {key!r} is {type(value).__name__}, expected a tensor")
        out[key] = value.detach().to("cpu").clone()  # own storage: no views of larger tensors saved
    return out


# ------------------------------------------------------------------------------------------------ files
def check_replaceable(dest: Path) -> None:
    """``dest`` is absent, empty or a model package (never replace a user's other folder or file)."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ModelError(f"{dest} exists and is not a folder; refusing to replace it")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / METADATA_FILE).is_file():
        raise ModelError(f"{dest} exists and is not a model package; refusing to replace it")


def install(staged: Path, dest: Path, replace_any: bool = False) -> None:
    """Rename ``staged`` to ``dest``; an existing ``dest`` is moved aside first and deleted after.

    Without ``replace_any`` an existing ``dest`` must be a model package (or empty); cache entries use True.
    """
    if not replace_any:
        check_replaceable(dest)
    if not dest.exists():
        os.replace(staged, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(dest, old)
    try:
        os.replace(staged, dest)
    except OSError:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(file: Path) -> str:
    """Hex SHA-256 of ``file``."""
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_json(file: Path, data: Any) -> None:
    """Write ``data`` as JSON (no NaN), flushed to disk (inside a staging folder that is renamed after)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _nesting_depth(text: str) -> int:
    """The deepest bracket nesting of JSON ``text`` (outside strings), without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _jsonable(obj: Any, where: str) -> Any:
    """A JSON-ready copy: numpy/torch scalars and arrays to Python, NaN/inf to None, Paths to str."""
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ModelError(f"{where}: key {key!r} is not a string")
            out[key] = _jsonable(value, f"{where}.{key}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy / torch scalars and arrays
        return _jsonable(obj.tolist(), where)
    raise ModelError(f"{where} is a {type(obj).__name__}, which cannot be stored in metadata.json")


def _weights_only_detail(exc: BaseException) -> str:
    """The reason torch's weights-only unpickler gave (e.g. "Unsupported global: GLOBAL io.open ...")."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[0].split(". Please use")[0] if lines else type(exc).__name__
    return detail if len(detail) <= 200 else detail[:197] + "..."


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."
