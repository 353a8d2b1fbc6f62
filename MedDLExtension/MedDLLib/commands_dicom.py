"""``meddl inspect`` and ``meddl convert``: the DICOM subcommands.

* ``meddl inspect DIR [--json]``: every series (volume) under DIR with its size, spacing, orientation and its
  problems (gantry tilt, uneven gaps, several echoes, missing tags) in plain sentences; files that are not
  DICOM images are listed with the reason.
* ``meddl convert DIR OUT.nrrd [--series UID] [--irregular resample|refuse]``: DICOM series -> Slicer volume
  node (:func:`MedDLLib.io.load_volume`) -> file written by Slicer's storage node
  (:func:`MedDLLib.io.save_node`). A folder holding several volumes and no ``--series`` is an error that
  lists them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import InputError

#: Output file types ``convert`` writes (Slicer picks the writer from the extension).
CONVERT_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha")


def add_parser(subparsers: Any) -> None:
    """Register ``inspect`` and ``convert`` on the ``meddl`` subparsers."""
    p = subparsers.add_parser(
        "inspect", help="list the DICOM series under a folder and their problems",
        description="List every DICOM series (one entry per volume) under DIR with its problems.",
    )
    p.add_argument("dir", help="folder searched recursively")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_inspect)

    p = subparsers.add_parser(
        "convert", help="convert a DICOM series to NRRD through a Slicer volume node",
        description="Read one DICOM series into a Slicer volume node and write it with Slicer's storage node.",
    )
    p.add_argument("dir", help="folder with the DICOM files")
    p.add_argument("output", help="output file (.nrrd, .nii.gz, ...)")
    p.add_argument("--series", metavar="UID", help="the volume uid (as `meddl inspect` lists it) or SeriesInstanceUID")
    p.add_argument("--irregular", choices=("resample", "refuse"), default="resample",
                   help="a gantry-tilted or unevenly spaced series: resample onto a regular grid (default) or refuse")
    p.set_defaults(func=run_convert)


def format_summary(entry: dict[str, Any]) -> str:
    """Text block for one :func:`MedDLLib.dicom.inspect_folder` entry."""
    if "skipped" in entry:
        lines = [f"Skipped {len(entry['skipped'])} files:"]
        lines += [f"  {item['path']}: {item['reason']}" for item in entry["skipped"]]
        return "\n".join(lines)
    spacing = " x ".join(f"{v:.4g}" for v in entry.get("spacing_mm", [])) or "?"
    head = (f"{entry['uid']}\n  {entry['description'] or '(no description)'}: {entry['modality'] or '?'}, "
            f"{entry['files']} file{'s' if entry['files'] != 1 else ''} of {entry['columns']}x{entry['rows']}, {entry.get('orientation', '?')}, "
            f"spacing {spacing} mm, {entry['transfer_syntax']}")
    lines = [head]
    lines += [f"  problem: {text}" for text in entry["problems"]]
    lines += [f"  note: {text}" for text in entry["warnings"]]
    if not entry["problems"]:
        lines.append("  no problems: one regular volume")
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    from . import dicom

    entries = dicom.inspect_folder(args.dir)
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        volumes = sum("uid" in e for e in entries)
        print(f"{args.dir}: {volumes} volume{'s' if volumes != 1 else ''}")
        for entry in entries:
            print(format_summary(entry))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from . import dicom, headless, io, nodes

    if not args.output.lower().endswith(CONVERT_SUFFIXES):
        raise InputError(f"{args.output}: output must end in one of {', '.join(CONVERT_SUFFIXES)}")
    # What io.load_volume does for a DICOM folder, in two steps so the reader's warnings can be shown.
    volume = dicom.read_dicom_folder(args.dir, series_uid=args.series, irregular=args.irregular)
    hs = headless.create_scene()
    try:
        node = nodes.add_scalar_volume(hs.scene, volume, volume.metadata.get("series_description") or "volume")
        path = io.save_node(node, args.output)
    finally:
        hs.scene.Clear(1)
    for text in volume.metadata.get("warnings", []):
        print(f"meddl convert: warning: {text}", file=sys.stderr)
    k, j, i = volume.shape_kji
    spacing = " x ".join(f"{v:.4g}" for v in volume.geometry.spacing_mm)
    print(f"wrote {path}: {i}x{j}x{k} voxels ({volume.array.dtype}), spacing {spacing} mm")
    return 0
