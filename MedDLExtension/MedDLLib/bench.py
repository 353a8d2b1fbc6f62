"""Benchmarks: MedDL's DICOM read against SimpleITK's ImageSeriesReader, side by side in one run.

``meddl bench dicom --input DIR --out F.json`` calls :func:`bench_dicom_read`; :func:`write_json` and
:func:`format_table` write and show its result. Both readers run alternately in the same process, ``repeats`` times each after one
warm-up read each (file cache and imports warm for both), and the medians are compared. Speed is measured
here, never asserted in tests.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _time(func: Callable[[], Any]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def bench_dicom_read(folder: str | os.PathLike, repeats: int = 7, workers: int | None = None) -> dict[str, Any]:
    """Time reading the one DICOM series in ``folder``: MedDL (find_series + read_series, what ``meddl
    convert`` does before writing) against SimpleITK (GetGDCMSeriesFileNames + ImageSeriesReader.Execute).

    Args:
        folder: a folder holding one DICOM series (in it or in a subfolder).
        repeats: timed runs of each reader (medians reported).
        workers: passed to MedDL's reader (None: its automatic choice).

    Returns:
        JSON-ready dict: seconds per run of both readers, their medians, ``ratio`` (MedDL median / SimpleITK
        median: below 1 means MedDL is faster), the volume read and the machine.
    """
    import SimpleITK as sitk

    from . import dicom

    folder = Path(folder)
    if repeats < 1:
        raise ValueError("repeats must be at least 1")

    def meddl_read():
        found = dicom.find_series(folder, workers=workers)
        return dicom.read_series(dicom.select_series(found), workers=workers)

    volume = meddl_read()  # warm-up, and the checks below
    # SimpleITK reads the same series from the folder that holds its files (MedDL searches below ``folder``).
    series_folders = {str(Path(f).parent) for f in volume.metadata.get("files", [])}
    if len(series_folders) != 1:
        raise ValueError(f"{folder}: the series' files lie in {len(series_folders)} folders; SimpleITK's "
                         f"ImageSeriesReader reads one folder, so the two readers cannot be compared")
    series_folder, series_uid = series_folders.pop(), str(volume.metadata.get("series_uid", ""))

    def sitk_read():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(series_folder, series_uid))
        return reader.Execute()

    image = sitk_read()
    same_voxels = bool(np.array_equal(volume.array, sitk.GetArrayFromImage(image)))
    same_geometry = bool(
        np.allclose(volume.geometry.spacing_mm, image.GetSpacing(), atol=1e-4)
        and np.allclose(volume.geometry.origin_lps_mm, image.GetOrigin(), atol=1e-4)
        and np.allclose(volume.geometry.direction.ravel(), image.GetDirection(), atol=1e-6)
    )
    meddl_s: list[float] = []
    sitk_s: list[float] = []
    for _ in range(repeats):  # alternate so that both see the same machine load
        meddl_s.append(_time(meddl_read))
        sitk_s.append(_time(sitk_read))
    meddl_median = statistics.median(meddl_s)
    sitk_median = statistics.median(sitk_s)
    return {
        "benchmark": "dicom_read",
        "folder": str(folder),
        "files": len(volume.metadata.get("files", [])),
        "shape_kji": list(volume.shape_kji),
        "dtype": str(volume.array.dtype),
        "repeats": repeats,
        "meddl_seconds": meddl_s,
        "simpleitk_seconds": sitk_s,
        "meddl_median_s": meddl_median,
        "simpleitk_median_s": sitk_median,
        "ratio_meddl_over_simpleitk": meddl_median / sitk_median,
        "same_voxels_as_simpleitk": same_voxels,
        "same_geometry_as_simpleitk": same_geometry,
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "simpleitk": sitk.Version_VersionString(),
            "pydicom": __import__("pydicom").__version__,
        },
    }


def run_meddl_child(arguments: list[str], log: str | os.PathLike, task_entry: str,
                    library_folder: str | os.PathLike) -> tuple[int, float, float]:
    """Run ``python -m MedDLLib.cli ARGUMENTS`` in a fresh child, as a user runs ``meddl``.

    Args:
        arguments: the ``meddl`` command line, e.g. ``["infer", "ich", "--input", ...]``.
        log: file receiving the child's stdout and stderr.
        task_entry: ``module:attribute`` of the task (added to ``$MEDDL_EXTRA_TASKS``).
        library_folder: the folder holding the task's package (put first on the child's ``PYTHONPATH``).
    Returns:
        ``(exit status, wall seconds, peak resident memory of that child alone in MB)`` (``ru_maxrss`` of
        :func:`os.wait4`).
    """
    import subprocess
    import sys

    env = dict(os.environ)
    extra = [e for e in env.get("MEDDL_EXTRA_TASKS", "").split(",") if e]
    env["MEDDL_EXTRA_TASKS"] = ",".join(extra + [task_entry])
    env["PYTHONPATH"] = os.pathsep.join([str(library_folder)] +
                                        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "MedDLLib.cli", *arguments], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    return os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss / 1024.0


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a benchmark result as JSON, atomically (:func:`MedDLLib.io.atomic_write_json`)."""
    from .io import atomic_write_json

    return atomic_write_json(path, result)


def format_table(result: dict[str, Any]) -> str:
    """A small text table of :func:`bench_dicom_read`'s result."""
    rows = [
        ("reader", "median (ms)", "min (ms)", "max (ms)"),
        ("MedDL find_series+read_series", *_ms(result["meddl_seconds"])),
        ("SimpleITK ImageSeriesReader", *_ms(result["simpleitk_seconds"])),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    k, j, i = result["shape_kji"]
    lines.append(
        f"{result['files']} files, {i}x{j}x{k} {result['dtype']}, {result['repeats']} runs each: MedDL/SimpleITK = "
        f"{result['ratio_meddl_over_simpleitk']:.2f} (same voxels: {result['same_voxels_as_simpleitk']}, "
        f"same geometry: {result['same_geometry_as_simpleitk']})"
    )
    return "\n".join(lines)


def _ms(seconds: list[float]) -> tuple[str, str, str]:
    return (f"{1000 * statistics.median(seconds):.1f}", f"{1000 * min(seconds):.1f}", f"{1000 * max(seconds):.1f}")
