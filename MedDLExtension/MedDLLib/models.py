"""Model packages (one checkpoint format), the network registry and the local model cache.

A model package is a folder in MONAI-bundle layout::

    <name>/
      configs/metadata.json   what the model is (see below)
      models/model.pt         the weights: a state dict (parameter name -> tensor), nothing else

``configs/metadata.json`` (written by :func:`save_package`; keys marked * are filled in by it)::

    {
      "format": "meddl-model/1",                               *
      "task": "ich", "version": "1.0.0", "recipe": "improved",
      "network": {"name": "monai.networks.nets.resnet10", "args": {"spatial_dims": 3, ...}},
      "input": {"channels": ["brain", "subdural", "bone"], "windows": ..., "spacing_mm": ..., "size": ...},
      "output": {"labels": ["any", "epidural", ...]},
      "training_data": {"kind": "synthetic" | "real", "n_studies": 40, "description": "meddl phantom ich ..."},
      "metrics": {"auroc": {"value": 0.91, "ci95": [0.85, 0.95]}, ...},
      "sha256": "<hex digest of models/model.pt>",             *
      "libraries": {"torch": ..., "monai": ..., "meddl": ..., "numpy": ..., "python": ...},   *
      "created": "2025-01-01T12:00:00+00:00"                   * (kept when given)
    }

Only ``input.channels`` and ``output.labels`` are required inside ``input``/``output``; tasks add what their
preprocessing needs (windows, normalisation, spacing, size). Loading (:func:`load_package`) checks the keys,
verifies the SHA-256 of the weights *before* reading them and reads them with
``torch.load(..., weights_only=True)``: a tampered file or a checkpoint carrying pickled Python objects is refused
with a :class:`~MedDLLib.errors.ModelError`, and no code from it ever runs.

Networks are named in the metadata and built by :func:`build_network`: an allow-list of MONAI networks (by
``monai.networks.nets.<Name>`` or ``<Name>``; ``pretrained`` is always forced to False, nothing is downloaded) plus
the names task modules add with :func:`register_network` when they are imported. Metadata can never name an
arbitrary importable object.

The model cache is a plain folder the user can see and clear: ``$MEDDL_HOME/models`` when the environment
variable ``MEDDL_HOME`` is set, else ``~/.meddl/models`` (created on demand). Each sub-folder is one package;
its folder name is the model's name. ``meddl models list|import|verify|remove`` manage it offline.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import inspect
import json
import math
import os
import pickle
import platform
import re
import shutil
import stat
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import InputError, ModelError

if TYPE_CHECKING:  # torch is imported lazily: the ``meddl`` parser must not pay for it
    import torch

#: Identifier (and version) of the package format written by this MedDL.
FORMAT = "meddl-model/1"
METADATA_FILE = "configs/metadata.json"
WEIGHTS_FILE = "models/model.pt"
#: Environment variable that moves the MedDL home folder (the model cache is its ``models`` sub-folder).
HOME_ENV = "MEDDL_HOME"

#: MONAI networks metadata may name (``monai.networks.nets.<Name>`` or just ``<Name>``).
MONAI_NETWORKS: tuple[str, ...] = (
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "DenseNet121",
    "BasicUNet",
    "BasicUNetPlusPlus",
    "FlexibleUNet",
    "UNet",
    "SegResNet",
    "EfficientNetBN",
)
_MONAI_PREFIX = "monai.networks.nets."

TRAINING_DATA_KINDS = ("synthetic", "real")

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
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


# ------------------------------------------------------------------------------------------------ networks
_NETWORKS: dict[str, Callable[..., Any]] = {}


def register_network(name: str, factory: Callable[..., "torch.nn.Module"]) -> None:
    """Make ``factory(**args)`` buildable from metadata ``{"network": {"name": name, "args": args}}``.

    Task modules call this when imported (re-registering a name replaces it, so module reloads work).
    Names starting with ``monai.`` are reserved for :data:`MONAI_NETWORKS`.
    """
    if not isinstance(name, str) or not name or name.startswith("monai."):
        raise ValueError(f"invalid network name {name!r} (non-empty, not starting with 'monai.')")
    if not callable(factory):
        raise ValueError(f"factory for network {name!r} is not callable")
    _NETWORKS[name] = factory


def available_networks() -> list[str]:
    """Names :func:`build_network` knows now: registered ones plus the MONAI allow-list."""
    return sorted(_NETWORKS) + [_MONAI_PREFIX + n for n in MONAI_NETWORKS]


def build_network(metadata_or_package: "Mapping[str, Any] | ModelPackage") -> "torch.nn.Module":
    """Build the (untrained) network a package's metadata names, with its arguments.

    Args:
        metadata_or_package: a :class:`ModelPackage` or a metadata dict with ``network.name``/``network.args``.

    Raises:
        ModelError: unknown network name (lists the known ones) or arguments the factory rejects.
    """
    metadata = metadata_or_package.metadata if isinstance(metadata_or_package, ModelPackage) else metadata_or_package
    spec = metadata.get("network") if isinstance(metadata, Mapping) else None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ModelError("metadata has no network.name: cannot build a network")
    name, args = spec["name"], dict(spec.get("args") or {})
    factory = _network_factory(name, metadata.get("task"))
    if factory is None:
        raise ModelError(f"unknown network {name!r}; known: {', '.join(available_networks())} "
                         "(task modules register theirs with MedDLLib.models.register_network)")
    try:
        if "pretrained" in inspect.signature(factory).parameters:
            args["pretrained"] = False  # never download weights at run time
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        pass
    try:
        return factory(**args)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise ModelError(f"cannot build network {name!r} with args {args}: {exc}") from exc


def _network_factory(name: str, task: Any) -> Callable[..., Any] | None:
    if name in _NETWORKS:
        return _NETWORKS[name]
    short = name[len(_MONAI_PREFIX):] if name.startswith(_MONAI_PREFIX) else name
    if short in MONAI_NETWORKS:
        import monai.networks.nets as nets

        return getattr(nets, short)
    if isinstance(task, str):  # a task library registers its networks in its model module (<Module>Lib.model)
        from . import tasks

        try:
            library = type(tasks.get_task(task)).__module__.rpartition(".")[0]
            importlib.import_module(f"{library}.model")
        except Exception:  # noqa: BLE001 - a missing/broken task only means "unknown network" here
            return None
        return _NETWORKS.get(name)
    return None


# ------------------------------------------------------------------------------------------------ packages
@dataclass
class ModelPackage:
    """A loaded, verified model package: its folder, metadata and state dict (tensors on ``map_location``)."""

    path: Path
    metadata: dict[str, Any]
    state_dict: dict[str, "torch.Tensor"] = field(repr=False)

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
        model = _load_into_network(self.metadata, self.state_dict, self.path)
        model.eval()
        return model.to(device) if device is not None else model


def validate_metadata(metadata: Mapping[str, Any], source: str = "metadata", *, saved: bool = True) -> None:
    """Check the keys and types of package metadata; ``saved=False`` skips the keys :func:`save_package` fills.

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
            raise ModelError(f"{source}: key {dotted!r} must be {expected} ({what}), got {node!r}")
    if metadata["training_data"]["kind"] not in TRAINING_DATA_KINDS:
        raise ModelError(f"{source}: training_data.kind must be one of {TRAINING_DATA_KINDS}, "
                         f"got {metadata['training_data']['kind']!r}")
    if saved:
        fmt = metadata["format"]
        if fmt != FORMAT:
            newer = fmt.startswith("meddl-model/")
            raise ModelError(f"{source}: package format {fmt!r} is not {FORMAT!r}"
                             + (" (made by a newer MedDL; update MedDL)" if newer else ""))
        if not _SHA_RE.match(metadata["sha256"]):
            raise ModelError(f"{source}: sha256 must be 64 lowercase hex digits, got {metadata['sha256']!r}")


def save_package(path: str | os.PathLike, state_dict: Mapping[str, "torch.Tensor"] | "torch.nn.Module",
                 metadata: Mapping[str, Any]) -> Path:
    """Write a model package atomically: a reader sees the old package or the new one, never a half-written one.

    The weights are written with ``torch.save`` (tensors moved to the CPU), their SHA-256, the library versions,
    the format and the creation time are added to the metadata, and the network is built and loaded strictly to
    prove the package is usable. Everything is written into a temporary folder beside ``path`` and renamed into
    place; an existing package at ``path`` is replaced (a folder that is not a package is never touched).

    Args:
        path: the package folder to create or replace.
        state_dict: parameter name -> tensor (a module is accepted and its ``state_dict()`` taken; DDP/DataParallel
            wrappers are unwrapped).
        metadata: the keys listed in the module docstring except those marked * (JSON-serialisable; numpy
            numbers are converted, NaN/inf become null).

    Returns:
        The package folder.
    """
    import torch

    dest = Path(path).expanduser().resolve()
    meta = _jsonable(copy.deepcopy(dict(metadata)), "metadata")
    validate_metadata(meta, f"metadata for {dest}", saved=False)
    state = _cpu_state_dict(state_dict)
    _check_replaceable(dest)
    _load_into_network(meta, state, dest)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        weights = tmp / WEIGHTS_FILE
        weights.parent.mkdir(parents=True)
        with open(weights, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        meta.update(format=FORMAT, sha256=_sha256(weights), libraries=library_versions())
        meta["created"] = meta.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds")
        validate_metadata(meta, f"metadata for {dest}")
        _write_json(tmp / METADATA_FILE, meta)
        _install(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def read_metadata(path_or_name: str | os.PathLike) -> dict[str, Any]:
    """The validated metadata of a package (folder or cached name), without reading or verifying the weights."""
    root = resolve_model(path_or_name)
    return _read_metadata(root)


def load_package(path_or_name: str | os.PathLike, *, map_location: "str | torch.device" = "cpu") -> ModelPackage:
    """Load a package after checking it: metadata keys, then the weights' SHA-256, then a weights-only load.

    Args:
        path_or_name: a package folder or the name of a model in the cache (see :func:`resolve_model`).
        map_location: where the tensors go (``torch.load``'s argument).

    Raises:
        ModelError: missing/invalid metadata (names the key), weights that do not match their SHA-256
            ("tampered or corrupt"), a checkpoint with pickled objects or that is not a state dict.
    """
    root = resolve_model(path_or_name)
    metadata = _read_metadata(root)
    _verify_sha256(root, metadata)
    state = _load_weights(root, map_location)
    return ModelPackage(path=root, metadata=metadata, state_dict=state)


def load_task_model(model: "str | os.PathLike | ModelPackage", task: str,
                    device: "torch.device | str | None" = "cpu") -> "tuple[torch.nn.Module, ModelPackage]":
    """``(network in eval mode on device, package)`` of a model for ``task``: a package folder, cached name or package.

    Raises:
        InputError: the package is for another task (a GUI or command-line choice, not a broken file).
        ModelError: see :func:`load_package`.
    """
    package = model if isinstance(model, ModelPackage) else load_package(model)
    if package.task != task:
        raise InputError(f"model {package.name!r} is for task {package.task!r}, not {task!r}")
    return package.network(device), package


def library_versions() -> dict[str, str]:
    """Versions recorded in a package: torch, monai, meddl, numpy, python."""
    import numpy
    import torch

    try:
        from . import __version__
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


# ------------------------------------------------------------------------------------------------ the cache
def cache_dir() -> Path:
    """The model cache folder: ``$MEDDL_HOME/models`` if ``MEDDL_HOME`` is set, else ``~/.meddl/models``.

    Created on demand. Every sub-folder not starting with a dot is one model package named after the folder.
    """
    home = os.environ.get(HOME_ENV)
    base = Path(home).expanduser() if home else Path.home() / ".meddl"
    folder = base / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def list_models() -> list[dict[str, Any]]:
    """One dict per package in the cache (sorted by name), for tables and model cards.

    Keys: name, path, task, version, recipe, network, training_data, metrics, created, sha256; a broken package
    is listed with name, path and ``error`` instead. Weights are not hashed here (see :func:`verify_model`).
    """
    out = []
    for folder in sorted(cache_dir().iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        if folder.name.endswith(".training") and (cache_dir() / folder.name[: -len(".training")]).is_dir():
            continue  # the training log/state folder that MedDLLib.training writes beside a package
        entry: dict[str, Any] = {"name": folder.name, "path": str(folder)}
        try:
            meta = _read_metadata(folder)
        except ModelError as exc:
            entry["error"] = str(exc)
        else:
            entry.update(task=meta["task"], version=meta["version"], recipe=meta["recipe"],
                         network=meta["network"]["name"], training_data=meta["training_data"],
                         metrics=meta["metrics"], created=meta["created"], sha256=meta["sha256"])
        out.append(entry)
    return out


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """The package folder meant by ``name_or_path``: an existing package folder, else a model name in the cache.

    Raises:
        ModelError: saying what was looked for, where, and which models are available.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir() and (path / METADATA_FILE).is_file():
        return path.resolve()
    cache = cache_dir()
    if _NAME_RE.match(text) and (cache / text / METADATA_FILE).is_file():
        return cache / text
    if path.is_dir():
        raise ModelError(f"{path} is a folder but not a model package (no {METADATA_FILE})")
    if path.is_file():
        hint = f"; import it first: meddl models import {path}" if zipfile.is_zipfile(path) else ""
        raise ModelError(f"{path} is a file, not a model package folder{hint}")
    names = [p.name for p in sorted(cache.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    available = ", ".join(names) if names else "none"
    raise ModelError(f"no model {text!r}: not a package folder and not in the model cache {cache} "
                     f"(available: {available}; add one with: meddl models import SRC)")


def import_model(src: str | os.PathLike, name: str | None = None, overwrite: bool = False) -> Path:
    """Copy a package (folder or .zip) into the cache after verifying it; works offline.

    The package is unpacked/copied into a hidden staging folder inside the cache, fully verified
    (:func:`verify_model`: metadata, SHA-256, weights-only load, network fit where the network is known) and only
    then renamed into place. Archive members with absolute paths, ``..`` or symlinks are refused (zip-slip).

    Args:
        src: a package folder, or a .zip holding the package at its top or in one top folder.
        name: the model's name in the cache (default: the folder's name, or the zip's inner folder or stem).
        overwrite: replace a model of the same name.

    Returns:
        The installed package folder.
    """
    source = Path(src).expanduser()
    if not source.exists():
        raise ModelError(f"cannot import {source}: no such file or folder")
    cache = cache_dir()
    with tempfile.TemporaryDirectory(prefix=".import-", dir=cache) as tmp:
        if source.is_dir():
            if not (source / METADATA_FILE).is_file():
                raise ModelError(f"cannot import {source}: not a model package (no {METADATA_FILE})")
            staged = Path(tmp) / "package"
            shutil.copytree(source, staged)
            default = source.resolve().name
        elif zipfile.is_zipfile(source):
            staged = _extract_zip(source, Path(tmp) / "unzipped")
            default = staged.name if staged.name != "unzipped" else source.stem
        else:
            raise ModelError(f"cannot import {source}: not a package folder or a .zip archive")
        name = name or default
        _check_name(name)
        dest = cache / name
        if dest.exists() and not overwrite:
            raise ModelError(f"a model named {name!r} is already in {cache}; use --overwrite (or --name)")
        try:
            _verify(staged)
        except ModelError as exc:
            raise ModelError(f"cannot import {source}: {exc}") from exc
        _install(staged, dest, replace_any=True)
    return dest


def verify_model(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Check a package fully: metadata keys, SHA-256 of the weights, weights-only load, network fit (strict).

    Returns:
        ``{"name", "path", "task", "version", "sha256", "n_tensors", "n_values", "network"}`` where
        ``network`` says whether the network was built and loaded strictly, or why it could not be checked
        (a network from a task module that is not installed).

    Raises:
        ModelError: the first problem found.
    """
    return _verify(resolve_model(name_or_path))


def remove_model(name: str) -> Path:
    """Delete the model ``name`` from the cache (only cache entries, never other folders); returns its old path."""
    _check_name(name)
    cache = cache_dir()
    target = cache / name
    if not target.is_dir():
        names = [p.name for p in sorted(cache.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        raise ModelError(f"no model {name!r} in the model cache {cache} (available: {', '.join(names) or 'none'})")
    trash = cache / f".removing-{name}-{uuid.uuid4().hex[:8]}"
    os.replace(target, trash)  # disappears from the cache at once, then is deleted
    shutil.rmtree(trash, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------------------ internals
def _verify(root: Path) -> dict[str, Any]:
    metadata = _read_metadata(root)
    _verify_sha256(root, metadata)
    state = _load_weights(root, "cpu")
    result: dict[str, Any] = {
        "name": root.name, "path": str(root), "task": metadata["task"], "version": metadata["version"],
        "sha256": metadata["sha256"], "n_tensors": len(state),
        "n_values": int(sum(t.numel() for t in state.values())),
    }
    network = metadata["network"]["name"]
    if _network_factory(network, metadata.get("task")) is None:
        result["network"] = f"not checked: network {network!r} is unknown here (is the {metadata['task']!r} " \
                            "task module installed?)"
    else:
        _load_into_network(metadata, state, root)
        result["network"] = f"{network} built and loaded (strict)"
    return result


def _read_metadata(root: Path) -> dict[str, Any]:
    file = root / METADATA_FILE
    if not file.is_file():
        raise ModelError(f"{root} is not a model package: {METADATA_FILE} is missing")
    try:
        metadata = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{file} is not valid JSON: {exc}") from exc
    validate_metadata(metadata, str(file))
    return metadata


def _verify_sha256(root: Path, metadata: Mapping[str, Any]) -> None:
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{root} is not a complete model package: {WEIGHTS_FILE} is missing")
    if _sha256(weights) != metadata["sha256"]:
        raise ModelError(f"weights of {root} do not match the sha256 in metadata.json (tampered or corrupt)")


def _load_weights(root: Path, map_location: Any) -> dict[str, "torch.Tensor"]:
    import torch

    weights = root / WEIGHTS_FILE
    try:
        obj = torch.load(weights, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _weights_only_detail(exc)
        if "global" in detail.lower():  # the weights-only unpickler met a reference to Python code
            raise ModelError(f"{weights} contains pickled Python objects, not only tensors; refused without "
                             f"running it (MedDL reads weights with torch.load(weights_only=True)): {detail}"
                             ) from exc
        raise ModelError(f"{weights} is not a readable torch checkpoint (weights-only load: {detail})") from exc
    except Exception as exc:  # noqa: BLE001 - any other failure means an unreadable file
        raise ModelError(f"{weights} is not a readable torch checkpoint: {_first_line(exc)}") from exc
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ModelError(f"{weights} is not a state dict (parameter name -> tensor); got {type(obj).__name__}")
    return dict(obj)


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


def _load_into_network(metadata: Mapping[str, Any], state: Mapping[str, Any], where: Path) -> "torch.nn.Module":
    """The network of ``metadata`` with ``state`` loaded strictly (``where`` names the package in errors)."""
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


def _check_replaceable(dest: Path) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ModelError(f"{dest} exists and is not a folder; refusing to replace it")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / METADATA_FILE).is_file():
        raise ModelError(f"{dest} exists and is not a model package; refusing to replace it")


def _install(staged: Path, dest: Path, replace_any: bool = False) -> None:
    """Rename ``staged`` to ``dest``; an existing ``dest`` is moved aside first and deleted after.

    Without ``replace_any`` an existing ``dest`` must be a model package (or empty); cache entries use True.
    """
    if not replace_any:
        _check_replaceable(dest)
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


def _extract_zip(archive: Path, out: Path) -> Path:
    """Extract a package archive safely into ``out``; returns the folder holding ``configs/metadata.json``."""
    out.mkdir(parents=True)
    base = out.resolve()
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            name = info.filename
            parts = PurePosixPath(name).parts
            mode = info.external_attr >> 16
            if (name.startswith(("/", "\\")) or "\\" in name or ".." in parts or (parts and ":" in parts[0])
                    or not (base / name).resolve().is_relative_to(base)):
                raise ModelError(f"{archive}: unsafe path {name!r} in the archive (absolute or '..'); refused")
            if stat.S_ISLNK(mode):
                raise ModelError(f"{archive}: {name!r} is a symbolic link; refused")
        try:
            zf.extractall(out)
        except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
            raise ModelError(f"{archive}: cannot extract: {exc}") from exc
    if (out / METADATA_FILE).is_file():
        return out
    tops = [p for p in out.iterdir() if p.name not in ("__MACOSX",) and not p.name.startswith(".")]
    if len(tops) == 1 and (tops[0] / METADATA_FILE).is_file():
        return tops[0]
    raise ModelError(f"{archive}: no {METADATA_FILE} at the top of the archive or in a single top folder")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ModelError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
                         "(starting with a letter or digit, at most 100 characters)")


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_json(file: Path, data: Any) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


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
    return lines[0].split(". Please use")[0] if lines else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------ command line
def add_parser(subparsers: Any) -> None:
    """``meddl models list [--json] | import SRC [--name N] [--overwrite] | verify NAME | remove NAME``."""
    parser = subparsers.add_parser(
        "models", help="list, import, verify or remove model packages in the local cache",
        description=f"Manage the model cache (${HOME_ENV}/models, default ~/.meddl/models). Works offline.")
    actions = parser.add_subparsers(dest="models_action", metavar="<action>")
    actions.required = True

    p = actions.add_parser("list", help="list the models in the cache")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_list)

    p = actions.add_parser("import", help="verify a package folder or .zip and copy it into the cache")
    p.add_argument("src", type=Path, help="package folder or .zip archive")
    p.add_argument("--name", help="name in the cache (default: folder or archive name)")
    p.add_argument("--overwrite", action="store_true", help="replace a model with the same name")
    p.set_defaults(func=_cmd_import)

    p = actions.add_parser("verify", help="check metadata, SHA-256 and weights of a model")
    p.add_argument("name", help="model name in the cache, or a package folder")
    p.set_defaults(func=_cmd_verify)

    p = actions.add_parser("remove", help="delete a model from the cache")
    p.add_argument("name", help="model name in the cache")
    p.set_defaults(func=_cmd_remove)


def _cmd_list(args: argparse.Namespace) -> int:
    models = list_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    print(f"model cache: {cache_dir()}")
    if not models:
        print("no models yet (train one with `meddl train`, or add one with `meddl models import SRC`)")
        return 0
    rows = [("NAME", "TASK", "VERSION", "RECIPE", "TRAINED ON", "CREATED")]
    for m in models:
        if "error" in m:
            rows.append((m["name"], "BROKEN", "", "", m["error"], ""))
            continue
        data = m["training_data"]
        rows.append((m["name"], m["task"], m["version"], m["recipe"],
                     f"{data['kind']} ({data['n_studies']} studies)", m["created"][:10]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + str(row[-1]))
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    dest = import_model(args.src, name=args.name, overwrite=args.overwrite)
    print(f"imported {dest.name} -> {dest} (sha256 verified)")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    result = verify_model(args.name)
    print(f"OK {result['name']} ({result['task']} {result['version']}): sha256 {result['sha256']} matches; "
          f"{result['n_tensors']} tensors, {result['n_values']} values; network: {result['network']}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    removed = remove_model(args.name)
    print(f"removed {args.name} ({removed})")
    return 0
