"""``meddl inspect`` and ``meddl convert``: the DICOM subcommands.

* ``meddl inspect DIR [--json]``: every series (volume) under DIR with its size, spacing, orientation and its
  problems (gantry tilt, uneven gaps, several echoes, missing tags) in plain sentences; files that are not
  DICOM images are listed with the reason.
* ``meddl convert DIR OUT.nrrd [--series UID] [--irregular resample|refuse] [--png SLICE.png]``: DICOM series
  -> Slicer volume node -> file written by Slicer's storage node (:func:`MedDLLib.io.save_node`), optionally
  with a PNG of the middle slice rendered by Slicer's slice logic. A folder holding several volumes and no
  ``--series`` is an error that lists them.

:func:`demo_convert` is the first step of ``meddl demo``: the real chest CT beside the repository (or any
folder) converted and rendered the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
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
    p.add_argument("--png", metavar="SLICE.png", help="also render the middle slice (Slicer slice logic) to this PNG")
    p.set_defaults(func=run_convert)


def format_summary(entry: dict[str, Any]) -> str:
    """Text block for one :func:`MedDLLib.dicom.inspect_folder` entry."""
    if "skipped" in entry:
        lines = [f"Skipped {len(entry['skipped'])} files:"]
        lines += [f"  {item['path']}: {item['reason']}" for item in entry["skipped"]]
        lines += [f"  problem: {text}" for text in entry.get("problems", [])]
        return "\n".join(lines)
    spacing = " x ".join(f"{v:.4g}" for v in entry.get("spacing_mm", [])) or "?"
    head = (f"{entry['uid']}\n  {entry['description'] or '(no description)'}: {entry['modality'] or '?'}, "
            f"{entry['files']} file{'s' if entry['files'] != 1 else ''} of {entry['columns']}x{entry['rows']}, "
            f"{entry.get('orientation', '?')}, "
            f"spacing {spacing} mm, {entry['transfer_syntax']}")
    lines = [head]
    lines += [f"  problem: {text}" for text in entry["problems"]]
    lines += [f"  note: {text}" for text in entry["warnings"]]
    if not entry["problems"]:
        lines.append("  no problems: one regular volume")
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    from . import dicom
    from .io import to_jsonable

    entries = dicom.inspect_folder(args.dir)
    if args.json:  # strict JSON: a value that is no finite number is null, never NaN/Infinity
        print(json.dumps(to_jsonable(entries), indent=2, allow_nan=False))
    else:
        volumes = sum("uid" in e for e in entries)
        print(f"{args.dir}: {volumes} volume{'s' if volumes != 1 else ''}")
        for entry in entries:
            print(format_summary(entry))
    return 0


def convert_series(
    folder: str | os.PathLike, output: str | os.PathLike, *, series_uid: str | None = None,
    irregular: str = "resample", png: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """DICOM series -> volume node -> ``output`` (Slicer storage node); optionally the middle slice as PNG.

    Returns a summary (output paths, size, spacing in mm, reader warnings).
    """
    from . import dicom, headless, io, nodes, render

    if not str(output).lower().endswith(CONVERT_SUFFIXES):
        raise InputError(f"{output}: output must end in one of {', '.join(CONVERT_SUFFIXES)}")
    # What io.load_volume does for a DICOM folder, in two steps so the reader's warnings can be reported.
    # Without PixelSpacing the file is written with 1 mm pixels and a warning (as SimpleITK/dcm2niix); inference
    # refuses such a series (dicom.read_series' unknown_spacing).
    volume = dicom.read_dicom_folder(folder, series_uid=series_uid, irregular=irregular, unknown_spacing="assume_1mm")
    hs = headless.create_scene()
    try:
        node = nodes.add_scalar_volume(hs.scene, volume, volume.metadata.get("series_description") or "volume")
        path = io.save_node(node, output)
        if png is not None:
            middle = render.slice_offset_of(node, (volume.shape_kji[0] - 1) / 2)
            png = render.render_slice_png(png, node, offset_mm=middle)
    finally:
        hs.scene.Clear(1)
    k, j, i = volume.shape_kji
    return {"output": str(path), "png": str(png) if png is not None else None, "size_ijk": [i, j, k],
            "spacing_mm": list(volume.geometry.spacing_mm), "dtype": str(volume.array.dtype),
            "modality": volume.metadata.get("modality", ""), "warnings": list(volume.metadata.get("warnings", []))}


def run_convert(args: argparse.Namespace) -> int:
    summary = convert_series(args.dir, args.output, series_uid=args.series, irregular=args.irregular, png=args.png)
    for text in summary["warnings"]:
        print(f"meddl convert: warning: {text}", file=sys.stderr)
    i, j, k = summary["size_ijk"]
    spacing = " x ".join(f"{v:.4g}" for v in summary["spacing_mm"])
    print(f"wrote {summary['output']}: {i}x{j}x{k} voxels ({summary['dtype']}), spacing {spacing} mm")
    if summary["png"]:
        print(f"wrote {summary['png']}: middle slice")
    return 0


#: The real chest CT that ships beside the repository (``../shared/data/real``), used by ``meddl demo``.
REAL_CHEST_CT = Path(os.environ.get("MEDDL_REAL_DATA", Path(__file__).resolve().parents[3] / "shared" / "data" / "real")
                     ) / "ct_chest_tcia_lung_pet_ct_dx_A0002" / "dicom"


def demo_convert(out: Path, dicom_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The DICOM step of ``meddl demo``: convert a series to NRRD and render its middle slice.

    Uses ``dicom_dir``, else the real chest CT beside the repository, else writes a small synthetic CT
    series (shuffled file names) with :mod:`MedDLLib.dicomwrite` first.
    """
    out.mkdir(parents=True, exist_ok=True)
    if dicom_dir is None and REAL_CHEST_CT.is_dir():
        dicom_dir = REAL_CHEST_CT
    source = "given folder" if dicom_dir is not None else "real chest CT (TCIA, CC BY 4.0)"
    if dicom_dir is None:
        dicom_dir, source = _write_demo_series(out / "synthetic_ct_dicom"), "synthetic CT series"
    summary = convert_series(dicom_dir, out / "ct.nrrd", png=out / "ct_middle_slice.png")
    return {"png": "ct_middle_slice.png", "nrrd": "ct.nrrd", "source": f"{source}: {dicom_dir}",
            "size": "x".join(map(str, summary["size_ijk"])),
            "spacing_mm": " x ".join(f"{v:.4g}" for v in summary["spacing_mm"]),
            "warnings": "; ".join(summary["warnings"]) or "none"}


def _write_demo_series(folder: Path) -> Path:
    import numpy as np

    from .dicomwrite import write_series
    from .geometry import Geometry, Volume
    from .phantoms import HU, ellipsoid_mask

    if folder.is_dir() and any(folder.iterdir()):
        return folder
    shape = (24, 96, 96)
    hu = np.full(shape, HU["air"], np.float32)
    hu[ellipsoid_mask(shape, (11.5, 48, 48), (40, 40, 44))] = HU["soft_tissue"]
    for side in (30, 66):
        hu[ellipsoid_mask(shape, (11.5, 46, side), (14, 26, 13))] = HU["lung"]
    volume = Volume(hu, Geometry((3.0, 3.0, 5.0), (-144.0, -144.0, -60.0)), {"modality": "CT"})
    write_series(folder, volume, modality="CT", window=(-600.0, 1500.0), file_names="shuffled")
    return folder
