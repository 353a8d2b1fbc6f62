"""``meddl models list|import|verify|remove``: the model cache on the command line (offline).

``import`` takes a MedDL package (folder or .zip) by default; ``--format`` names the other formats MedDL can turn
into a package (:data:`IMPORT_FORMATS`): a MONAI model-zoo bundle folder (:mod:`MedDLLib.bundles`) and published
checkpoints whose task declares an importer (:attr:`MedDLLib.tasks.Task.importers`, e.g. ``buda-unet`` for LGG).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from . import models, taskregistry
from .errors import InputError

#: ``--format`` -> (help, task that provides the importer or None for MedDL's own formats).
IMPORT_FORMATS: dict[str, tuple[str, str | None]] = {
    "auto": ("a MedDL package or a MONAI bundle folder, told apart by its metadata (default)", None),
    "meddl": ("a MedDL model package: folder or .zip", None),
    "monai-bundle": ("a MONAI model-zoo bundle folder (configs/ and models/model.pt), run through MedDL's "
                     "allow-list (see MedDLLib.bundles)", None),
    "buda-unet": ("Buda et al.'s kaggle_3m brain MRI U-Net state dict (unet-e012d006.pt, "
                  "mateuszbuda/brain-segmentation-pytorch) -> an LGG package", "lgg"),
}


def add_parser(subparsers: Any) -> None:
    """``meddl models list | import SRC [--format F] [--name N] [--overwrite] | verify NAME | run NAME -i IN -o OUT |
    remove NAME``."""
    parser = subparsers.add_parser(
        "models", help="list, import, verify or remove model packages in the local cache",
        description=f"Manage the model cache (${models.HOME_ENV}/models, default ~/.meddl/models). Works offline.")
    actions = parser.add_subparsers(dest="models_action", metavar="<action>")
    actions.required = True

    p = actions.add_parser("list", help="list the models in the cache")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_list)

    formats = "\n".join(f"  {name:13s} {text}" for name, (text, _) in IMPORT_FORMATS.items())
    p = actions.add_parser("import", help="verify a package (or a model of another format) and add it to the cache",
                           description=f"Import formats (--format):\n{formats}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="package folder or .zip archive, bundle folder, or checkpoint file")
    p.add_argument("--format", default="auto", choices=list(IMPORT_FORMATS),
                   help="what SRC is (default: auto); see the list above")
    p.add_argument("--name", help="name in the cache (default: folder or archive name)")
    p.add_argument("--overwrite", action="store_true", help="replace a model with the same name")
    p.set_defaults(func=_cmd_import)

    p = actions.add_parser("verify", help="check metadata, SHA-256, weights and network of a model")
    p.add_argument("name", help="model name in the cache, or a package folder")
    p.set_defaults(func=_cmd_verify)

    p = actions.add_parser("run", help="run an imported MONAI zoo bundle on a study; masks on the input's grid",
                           description="Run an imported MONAI model-zoo bundle (meddl models import BUNDLE_FOLDER) "
                                       "through MedDL's allow-list. Writes labels.nrrd (one label per voxel) or one "
                                       "<region>.nrrd per output channel, volumes.csv (mL) and bundle_result.json.")
    p.add_argument("name", help="the bundle's name in the cache, or its folder")
    p.add_argument("--input", "-i", type=Path, action="append", required=True,
                   help="a DICOM folder or NRRD/NIfTI file; repeat once per input channel, in the bundle's order "
                        "(e.g. T1c, T1, T2, FLAIR for brats_mri_segmentation)")
    p.add_argument("--output", "-o", type=Path, required=True, help="output folder (created; written atomically)")
    p.add_argument("--roi-size", type=int, nargs=3, metavar=("I", "J", "K"),
                   help="sliding-window size in voxels (default: the bundle's)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=_cmd_run)

    p = actions.add_parser("remove", help="delete a model from the cache")
    p.add_argument("name", help="model name in the cache")
    p.set_defaults(func=_cmd_remove)


def detect_format(src: Path) -> str:
    """``monai-bundle`` for a folder with ``configs/inference.json`` whose metadata has no MedDL ``format`` key
    (a model-zoo bundle), else ``meddl``."""
    meta = src / models.METADATA_FILE
    if src.is_dir() and (src / models.INFERENCE_FILE).is_file() and meta.is_file():
        try:
            if "format" not in json.loads(meta.read_text(encoding="utf-8")):
                return "monai-bundle"
        except (OSError, ValueError, RecursionError, TypeError):
            pass  # the MedDL import says what is wrong with it
    return "meddl"


def importer(fmt: str) -> Callable[..., Path]:
    """The function importing ``fmt`` (``(src, name=None, overwrite=False) -> installed folder``)."""
    if fmt == "meddl":
        return models.import_model
    if fmt == "monai-bundle":
        from . import bundles

        return bundles.import_bundle
    if fmt not in IMPORT_FORMATS:
        raise InputError(f"unknown import format {fmt!r}; known: {', '.join(IMPORT_FORMATS)}")
    return taskregistry.task_importer(IMPORT_FORMATS[fmt][1] or "", fmt)


def _cmd_list(args: argparse.Namespace) -> int:
    found = models.list_models()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(f"model cache: {models.cache_dir()}")
    if not found:
        print("no models yet (train one with `meddl train`, or add one with `meddl models import SRC`)")
        return 0
    rows = [("NAME", "TASK", "VERSION", "RECIPE", "TRAINED ON", "CREATED")]
    for m in found:
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
    fmt = detect_format(args.src) if args.format == "auto" else args.format
    dest = importer(fmt)(args.src, name=args.name, overwrite=args.overwrite)
    print(f"imported {dest.name} -> {dest} (verified)")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    result = models.verify_model(args.name)
    print(f"OK {result['name']} ({result['task']} {result['version']}): sha256 {result['sha256']} matches; "
          f"{result['n_tensors']} tensors, {result['n_values']} values; network: {result['network']}; "
          f"MONAI bundle: {result['monai_bundle']}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from . import bundles
    from .dicom import read_dicom_folder
    from .geometry import Volume
    from .io import atomic_folder, atomic_write_json, read_volume_file
    from .outputs import write_table, write_volume

    if args.roi_size is not None and not all(8 <= v <= 1024 for v in args.roi_size):
        raise InputError(f"--roi-size must be three sizes from 8 to 1024 voxels, got {args.roi_size}")
    out = args.output
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "bundle_result.json").is_file())):
        raise InputError(f"{out} exists and is not an earlier `meddl models run` output; choose another --output")
    volumes = [read_dicom_folder(p) if p.is_dir() else read_volume_file(p) for p in args.input]
    result = bundles.run_bundle(args.name, volumes, device=args.device, roi_size=args.roi_size)
    voxel_ml = result.geometry.voxel_volume_ml()

    with atomic_folder(out) as tmp:
        files: dict[str, str] = {}
        if result.labelmap is not None:
            write_volume(tmp / "labels.nrrd", Volume(result.labelmap, result.geometry))
            files["labels"] = "labels.nrrd"
            counts = np.bincount(result.labelmap.ravel().clip(0), minlength=len(result.labels))
            names = [result.labels[i] for i in sorted(result.labels) if i > 0]
            volumes_ml = [round(float(counts[i]) * voxel_ml, 3) for i in sorted(result.labels) if i > 0]
        else:
            names, volumes_ml = [], []
            for name, mask in result.masks.items():
                file = "".join(c if c.isalnum() else "_" for c in name.lower()) + ".nrrd"
                write_volume(tmp / file, Volume(mask, result.geometry))
                files[name] = file
                names.append(name)
                volumes_ml.append(round(float(mask.sum()) * voxel_ml, 3))
        write_table(tmp / "volumes.csv", {"structure": names, "volume_ml": volumes_ml})
        atomic_write_json(tmp / "bundle_result.json", {
            "model": str(args.name), "inputs": [str(p) for p in args.input], "files": files,
            "labels": {str(k): v for k, v in result.labels.items()}, "notes": result.notes,
            "volumes_ml": dict(zip(names, volumes_ml))})
    print(f"wrote {out} ({', '.join(files.values())}, volumes.csv); "
          + (f"notes: {'; '.join(result.notes)}" if result.notes else "no notes"))
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    removed = models.remove_model(args.name)
    print(f"removed {args.name} ({removed})")
    return 0
