"""The local model cache: a plain folder of packages the user can see and clear; import, verify, remove.

``$MEDDL_HOME/models`` when the environment variable ``MEDDL_HOME`` is set, else ``~/.meddl/models`` (created on
demand). Each sub-folder not starting with a dot is one package, named after the folder. Imports are staged in a
hidden folder inside the cache, fully verified, and only then renamed into place, so a bad package never
replaces a working one.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ModelError
from .package import METADATA_FILE, ModelPackage, install, load_package_at, read_package_metadata, verify_package

if TYPE_CHECKING:
    import torch

#: Environment variable that moves the MedDL home folder (the model cache is its ``models`` sub-folder).
HOME_ENV = "MEDDL_HOME"
#: Largest package a folder or archive import copies (bytes, all files together).
MAX_PACKAGE_BYTES = 16 * 1024 ** 3
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def cache_dir() -> Path:
    """The model cache folder: ``$MEDDL_HOME/models`` if ``MEDDL_HOME`` is set, else ``~/.meddl/models``.

    Created on demand. Every sub-folder not starting with a dot is one model package named after the folder.
    """
    home = os.environ.get(HOME_ENV)
    base = Path(home).expanduser() if home else Path.home() / ".meddl"
    folder = base / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def is_valid_name(name: Any) -> bool:
    """Whether ``name`` may name a model in the cache (letters, digits, '.', '_', '-'; at most 100)."""
    return (isinstance(name, str) and 0 < len(name) <= 100 and name[0].isascii() and name[0].isalnum()
            and set(name) <= _NAME_CHARS)


def check_name(name: str) -> None:
    """Refuse a model name that is not :func:`is_valid_name`."""
    if not is_valid_name(name):
        raise ModelError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
                         "(starting with a letter or digit, at most 100 characters)")


def list_models() -> list[dict[str, Any]]:
    """One dict per package in the cache (sorted by name), for tables and model cards.

    Keys: name, path, task, version, recipe, network, training_data, metrics, created, sha256; a broken package
    is listed with name, path and ``error`` instead. Weights are not hashed here (see :func:`verify_model`).
    """
    out = []
    cache = cache_dir()
    for folder in sorted(cache.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        if folder.name.endswith(".training") and (cache / folder.name[: -len(".training")]).is_dir():
            continue  # the training log/state folder that MedDLLib.training writes beside a package
        entry: dict[str, Any] = {"name": folder.name, "path": str(folder)}
        try:
            meta = read_package_metadata(folder)
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
    if is_valid_name(text) and (cache / text / METADATA_FILE).is_file():
        return cache / text
    if path.is_dir():
        raise ModelError(f"{path} is a folder but not a model package (no {METADATA_FILE})")
    if path.is_file():
        hint = f"; import it first: meddl models import {path}" if zipfile.is_zipfile(path) else ""
        raise ModelError(f"{path} is a file, not a model package folder{hint}")
    raise ModelError(f"no model {text!r}: not a package folder and not in the model cache {cache} "
                     f"(available: {', '.join(_names(cache)) or 'none'}; add one with: meddl models import SRC)")


def read_metadata(path_or_name: str | os.PathLike) -> dict[str, Any]:
    """The validated metadata of a package (folder or cached name), without reading or verifying the weights."""
    return read_package_metadata(resolve_model(path_or_name))


def verify_model(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Check a package fully: metadata keys and bounds, SHA-256 of the weights, weights-only load, network fit
    (strict), Grad-CAM layer (see :func:`MedDLLib.models.package.verify_package`)."""
    return verify_package(resolve_model(name_or_path))


def load_package(path_or_name: str | os.PathLike, *, map_location: "str | torch.device" = "cpu",
                 weights: bool = True) -> ModelPackage:
    """Load a package after checking it: metadata keys, then the weights' SHA-256, then a weights-only load.

    Args:
        path_or_name: a package folder or the name of a model in the cache (see :func:`resolve_model`).
        map_location: where the tensors go (``torch.load``'s argument).
        weights: read the weights now; False defers the weights-only load to the first use of
            :attr:`ModelPackage.state_dict` (the SHA-256 is checked now and again then).

    Raises:
        ModelError: missing/invalid metadata (names the key), weights that do not match their SHA-256
            ("tampered or corrupt"), a checkpoint with pickled objects or that is not a state dict.
    """
    return load_package_at(resolve_model(path_or_name), map_location, weights=weights)


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


def import_model(src: str | os.PathLike, name: str | None = None, overwrite: bool = False) -> Path:
    """Copy a package (folder or .zip) into the cache after verifying it; works offline.

    The package is copied/unpacked into a hidden staging folder inside the cache, fully verified
    (:func:`verify_model`) and only then renamed into place: a package that fails verification never replaces a
    model, with or without ``overwrite``. Only regular files and folders are copied: a symbolic link pointing out of
    the package, or to a device such as ``/dev/zero``, and archive members with absolute paths, ``..`` or links
    are refused; at most :data:`MAX_PACKAGE_BYTES` are copied.

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
            copy_package_tree(source, staged)
            default = source.resolve().name
        elif zipfile.is_zipfile(source):
            staged = _extract_zip(source, Path(tmp) / "unzipped")
            default = staged.name if staged.name != "unzipped" else source.stem
        else:
            raise ModelError(f"cannot import {source}: not a package folder or a .zip archive")
        name = name or default
        check_name(name)
        dest = cache / name
        if dest.exists() and not overwrite:
            raise ModelError(f"a model named {name!r} is already in {cache}; use --overwrite (or --name)")
        try:
            verify_package(staged)
        except ModelError as exc:
            kept = f" (the model {name!r} already in the cache is kept)" if dest.exists() else ""
            raise ModelError(f"cannot import {source}: {exc}{kept}") from exc
        install(staged, dest, replace_any=True)
    return dest


def copy_package_tree(source: Path, dest: Path) -> None:
    """Copy the package folder ``source`` to ``dest``: regular files and folders only, bounded in size.

    A symbolic link is followed only when it stays inside ``source`` and ends at a regular file; a link out of the
    package, to a device (``/dev/zero``) or a pipe is refused, so nothing unbounded or outside is copied.
    """
    root = source.resolve()
    total = 0
    dest.mkdir(parents=True)
    for folder, dirs, files in os.walk(source, followlinks=False):
        here = Path(folder)
        rel = here.relative_to(source)
        for d in list(dirs):
            if (here / d).is_symlink():
                raise ModelError(f"cannot import {source}: {rel / d} is a symbolic link to a folder; refused")
            (dest / rel / d).mkdir()
        for f in files:
            item = here / f
            if item.is_symlink():
                target = item.resolve()
                if not target.is_relative_to(root):
                    raise ModelError(f"cannot import {source}: {rel / f} is a symbolic link pointing out of the "
                                     f"package (to {os.readlink(item)}); refused")
            info = item.stat()
            if not stat.S_ISREG(info.st_mode):
                raise ModelError(f"cannot import {source}: {rel / f} is not a regular file (a device or pipe); "
                                 "refused")
            total += info.st_size
            if total > MAX_PACKAGE_BYTES:
                raise ModelError(f"cannot import {source}: more than {MAX_PACKAGE_BYTES:,} bytes; refused")
            shutil.copyfile(item, dest / rel / f, follow_symlinks=True)


def remove_model(name: str) -> Path:
    """Delete the model ``name`` from the cache (only cache entries, never other folders); returns its old path.

    Raises:
        ModelError: no such model, or it could not be deleted: nothing moved (a read-only cache), or it was moved
            out of the cache list but files remain (the message names the hidden folder holding them and why).
    """
    check_name(name)
    cache = cache_dir()
    target = cache / name
    if not target.is_dir() or target.is_symlink():
        available = ", ".join(_names(cache)) or "none"
        raise ModelError(f"no model {name!r} in the model cache {cache} (available: {available})")
    trash = cache / f".removing-{name}-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(target, trash)  # disappears from the cache at once, then is deleted
    except OSError as exc:
        raise ModelError(f"cannot remove model {name!r} from {cache}: {exc.strerror or exc}; nothing was removed"
                         ) from exc
    failures: list[str] = []

    def note(_function: Any, path: str, exc_info: Any) -> None:
        exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        failures.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")

    handler = {"onexc": note} if sys.version_info >= (3, 12) else {"onerror": note}  # onexc is Python 3.12+
    shutil.rmtree(trash, **handler)
    if failures or trash.exists():  # part of it may be gone already: it is never put back half-deleted
        raise ModelError(f"cannot remove model {name!r} completely ({failures[0] if failures else 'files remain'}); "
                         f"it is out of the cache list, and what is left is in {trash} (delete it by hand)")
    return target


def _names(cache: Path) -> list[str]:
    return [p.name for p in sorted(cache.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def _extract_zip(archive: Path, out: Path) -> Path:
    """Extract a package archive safely into ``out``; returns the folder holding ``configs/metadata.json``."""
    out.mkdir(parents=True)
    base = out.resolve()
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        total = 0
        for info in members:
            name = info.filename
            parts = PurePosixPath(name).parts
            mode = info.external_attr >> 16
            if (name.startswith(("/", "\\")) or "\\" in name or ".." in parts or (parts and ":" in parts[0])
                    or not (base / name).resolve().is_relative_to(base)):
                raise ModelError(f"{archive}: unsafe path {name!r} in the archive (absolute or '..'); refused")
            if stat.S_ISLNK(mode):
                raise ModelError(f"{archive}: {name!r} is a symbolic link; refused")
            total += info.file_size
            if total > MAX_PACKAGE_BYTES:
                raise ModelError(f"{archive}: unpacks to more than {MAX_PACKAGE_BYTES:,} bytes; refused")
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
