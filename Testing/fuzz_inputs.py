"""Hostile and careless inputs for the ``meddl`` command, made from copies of real files, and the rules they must obey.

Each :class:`Case` builds one bad input (a copied real DICOM series with one header element or file broken, a
named pipe, a NIfTI with a wrong pixdim, a corrupted batch output, an absurd option) and the ``meddl`` command
line that meets it. :func:`run_case` runs the command in a child process with a time limit and judges the
outcome by the rules of issue 18:

* never a traceback, never a hang (the time limit), never a signal;
* an error is one line ``meddl <command>: error: ...`` (or argparse's ``usage`` + one line) with a non-zero exit
  status, naming what is wrong (one of the case's ``mention`` words: the file, the tag, the option);
* an answer (exit 0) is allowed only where the case allows it, and then with a warning naming the problem
  where the case asks for one;
* nothing is left behind: no ``.partial`` entry anywhere, no output where the command failed;
* the inputs are unchanged (names, bytes).

:func:`summarise` counts the outcomes per class (what ``Testing/test_fuzz.py`` prints and writes as JSON).
The DICOM cases start from :data:`REAL_CT` (a Siemens chest CT, TCIA) and the Philips scanner export beside the
repository; pydicom's own test files are used where a property needs them (Modality LUT Sequence).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("MEDDL_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))
REAL_CT = REAL_DATA / "ct_chest_tcia_lung_pet_ct_dx_A0002" / "dicom"
PHILIPS_EXPORT = REAL_DATA / "ct_philips_export_dicomdir" / "export"

#: Slices of the real chest CT copied for the inspect/convert cases (every 3rd of the 30: 8 mm -> 24 mm gaps).
REAL_SLICES = tuple(range(0, 30, 3))
#: Seconds a command may take before it counts as a hang.
TIMEOUT_S = 120.0


# ---------------------------------------------------------------------------------------------- fixtures
@dataclasses.dataclass
class Fixtures:
    """What the cases share: a small chest CT series derived from the real one, a tiny lung model, a phantom
    dataset, a place for the model cache (all made once per test module)."""

    root: Path
    small_ct: Path  # DICOM folder: the real chest CT at 4x coarser pixels, 12 slices (for infer)
    lung_model: Path | None = None  # a model package folder
    lung_data: Path | None = None  # a lung phantom dataset


def make_small_ct(folder: Path, slices: int = 12, step: int = 4) -> Path:
    """The real chest CT with every ``step``-th pixel (so 128 x 128) and its middle ``slices`` slices, written as a
    DICOM series with the real geometry (position, orientation, spacing x ``step``)."""
    from MedDLLib.dicom import read_dicom_folder
    from MedDLLib.dicomwrite import write_series
    from MedDLLib.geometry import Geometry, Volume

    real = read_dicom_folder(REAL_CT)
    k0 = (real.array.shape[0] - slices) // 2
    array = np.asarray(real.array[k0:k0 + slices, ::step, ::step], dtype=np.float32)
    g = real.geometry
    direction = np.asarray(g.direction_lps, dtype=float)
    origin = np.asarray(g.origin_lps_mm) + direction[:, 2] * g.spacing_mm[2] * k0
    geometry = Geometry((g.spacing_mm[0] * step, g.spacing_mm[1] * step, g.spacing_mm[2]), tuple(origin),
                        tuple(map(tuple, direction)))
    write_series(folder, Volume(array, geometry, {"modality": "CT"}), modality="CT", window=(-600.0, 1200.0),
                 file_names="instance", series_description="real chest CT, 4x coarser")
    return folder


def copy_real_ct(folder: Path) -> Path:
    """Every third file of the real chest CT (10 slices) copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(REAL_CT.glob("*.dcm"))
    for i in REAL_SLICES:
        shutil.copyfile(files[i], folder / files[i].name)
        os.chmod(folder / files[i].name, 0o644)
    return folder


def copy_series(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder)
    for p in folder.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return folder


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files of a series folder, in slice order (by name: the copies keep the writer's order)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix == ".dcm")


def edit(files: Sequence[Path], change: Callable[[Any], None]) -> None:
    """Rewrite each file with ``change(dataset)`` applied (pydicom, same transfer syntax)."""
    import pydicom

    for path in files:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path, enforce_file_format=False)


def set_raw(keyword: str, value: Any, vr: str | None = None) -> Callable[[Any], None]:
    """A change that sets ``keyword`` to ``value`` as given (no validation: DS strings such as 'NaN' pass)."""
    import pydicom
    from pydicom.dataelem import DataElement

    def change(ds: Any) -> None:
        tag = pydicom.datadict.tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, vr or pydicom.datadict.dictionary_VR(tag), value)
    return change


def delete(*keywords: str) -> Callable[[Any], None]:
    def change(ds: Any) -> None:
        for k in keywords:
            if k in ds:
                delattr(ds, k)
    return change


def patch_bytes(path: Path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) in a file's bytes: for values pydicom refuses to write."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert old in data, f"{old!r} not in {path}"
    path.write_bytes(data.replace(old, new, 1))


def middle(files: Sequence[Path], n: int = 1) -> list[Path]:
    k = len(files) // 2
    return list(files[k:k + n])


# ---------------------------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Built:
    """What a case built: the ``meddl`` arguments, the inputs that must stay unchanged, the outputs that must not
    exist after a failure."""

    argv: list[str]
    inputs: list[Path]
    outputs: list[Path] = dataclasses.field(default_factory=list)
    check: Callable[[subprocess.CompletedProcess], str | None] | None = None  # extra rule: why it failed, or None
    as_nobody: bool = False  # run as an unprivileged user (permission cases when the tests run as root)
    isolate: bool = False  # run in a child process with a time limit (what could hang: named pipes)


@dataclasses.dataclass
class Case:
    """One hostile input.

    Attributes:
        name: unique id (pytest parameter id).
        klass: the class of issue 18 it belongs to.
        build: ``build(case_folder, fixtures) -> Built``.
        expect: "error" (must fail with one clear line), "answer" (must succeed), "either" (one of both; an
            answer must carry a warning naming the problem when ``warn`` is set).
        mention: words of which one must appear in the error line (or the warning); case-insensitive.
        warn: an answer must print a warning containing one of ``mention``.
        needs: "lung_model" when the case needs the tiny trained lung model.
    """

    name: str
    klass: str
    build: Callable[[Path, Fixtures], Built]
    expect: str = "error"
    mention: tuple[str, ...] = ()
    warn: bool = False
    needs: str = ""
    as_nobody: bool = False  # built and run in a private folder as an unprivileged user (permission cases)


def _series_case(name: str, klass: str, command: str, mutate: Callable[[list[Path]], None], *,
                 expect: str = "error", mention: Sequence[str] = (), warn: bool = False, source: str = "real",
                 ) -> Case:
    """A case on a copied DICOM series (``source`` "real": 10 real chest CT files; "small": the small CT) run
    through ``command`` ("inspect", "inspect-json", "convert", "infer")."""

    def build(tmp: Path, fx: Fixtures) -> Built:
        series = copy_real_ct(tmp / "study") if source == "real" else copy_series(fx.small_ct, tmp / "study")
        mutate(dicom_files(series))
        isolate = name.startswith(("pipe", "deep"))  # could hang or exhaust the stack: a child process
        return dataclasses.replace(_series_built(command, series, tmp, fx), isolate=isolate)

    needs = "lung_model" if command == "infer" else ""
    return Case(f"{name}-{command}", klass, build, expect, tuple(mention), warn, needs)


def _series_built(command: str, series: Path, tmp: Path, fx: Fixtures) -> Built:
    """The command line of a series case ("inspect", "inspect-json", "convert" or "infer" lung)."""
    if command == "inspect":
        return Built(["inspect", str(series)], [series])
    if command == "inspect-json":
        return Built(["inspect", "--json", str(series)], [series], check=_strict_json)
    if command == "convert":
        return Built(["convert", str(series), str(tmp / "out.nrrd")], [series], [tmp / "out.nrrd"])
    assert command == "infer"
    return Built(["infer", "lung", "--input", str(series), "--output", str(tmp / "out"), "--model",
                  str(fx.lung_model)], [series], [tmp / "out"])


def _strict_json(proc: subprocess.CompletedProcess) -> str | None:
    if proc.returncode != 0:
        return None

    def refuse(value: str) -> None:
        raise ValueError(f"not JSON: {value}")
    try:
        json.loads(proc.stdout, parse_constant=refuse)
    except ValueError as exc:
        return f"inspect --json printed no strict JSON ({exc})"
    return None


def _ts_invalid(files: list[Path]) -> None:
    for f in middle(files, 2):  # Explicit VR LE's UID -> a UID of the same length that is no transfer syntax
        patch_bytes(f, b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.9.9.9\x00")


def _lut(kind: str) -> Callable[[list[Path]], None]:
    def mutate(files: list[Path]) -> None:
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence as Seq

        def change(ds: Any) -> None:
            item = Dataset()
            if kind == "short":
                item.add_new(0x00283002, "US", [4096, 0, 16])  # LUTDescriptor
                item.add_new(0x00283006, "US", [0] * 10)  # LUTData: 10 of the 4096 entries
                item.ModalityLUTType = "HU"
            elif kind == "no_descriptor":
                item.add_new(0x00283006, "US", [0] * 10)
            ds.ModalityLUTSequence = Seq([] if kind == "empty" else [item])
            for k in ("RescaleSlope", "RescaleIntercept"):
                if k in ds:
                    delattr(ds, k)
        edit(files, change)
    return mutate


def _outlier(value: str, which: str = "one") -> Callable[[list[Path]], None]:
    """ImagePositionPatient z of the last file (or of ``which="all"`` files) set to ``value`` (mm)."""
    def mutate(files: list[Path]) -> None:
        def change(ds: Any) -> None:
            x, y, _ = (str(v) for v in ds.ImagePositionPatient)
            set_raw("ImagePositionPatient", [x, y, value])(ds)
        edit(files if which == "all" else files[-1:], change)
    return mutate


def _chmod_unreadable(files: list[Path]) -> None:
    os.chmod(middle(files)[0], 0)


def _unreadable_subfolder(files: list[Path]) -> None:
    sub = files[0].parent / "part2"
    sub.mkdir()
    for f in files[len(files) // 3: 2 * len(files) // 3]:
        os.replace(f, sub / f.name)
    os.chmod(sub, 0)


def _pipe_in_series(files: list[Path]) -> None:
    os.mkfifo(files[0].parent / "zz_pipe.dcm")


#: Depth of the deep-folder case (deeper than Python's recursion limit: os.walk/rglob/rmtree recurse).
DEEP_LEVELS = 1100


def _deep(files: list[Path]) -> None:
    """A copy of one slice :data:`DEEP_LEVELS` folders below the series (made without recursion)."""
    fd = os.open(files[0].parent, os.O_RDONLY)
    try:
        for _ in range(DEEP_LEVELS):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        data = files[0].read_bytes()
        out = os.open("copy.dcm", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)


def remove_tree(root: Path) -> None:
    """Delete ``root`` without recursion (``shutil.rmtree`` recurses once per level)."""
    stack = [(root, False)]
    while stack:
        path, expanded = stack.pop()
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        elif expanded:
            path.rmdir()
        else:
            os.chmod(path, 0o755)
            stack.append((path, True))
            stack.extend((Path(e.path), False) for e in os.scandir(path))


def walk_files(root: Path) -> list[Path]:
    """Every entry under ``root`` (no recursion, links not followed)."""
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        try:
            entries = list(os.scandir(p))
        except OSError:
            continue
        for e in entries:
            out.append(Path(e.path))
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
    return out


def dicom_cases() -> list[Case]:
    """The DICOM header and folder cases, each through inspect and convert (and infer where the volume matters)."""
    cases: list[Case] = []
    spec: list[tuple[str, str, Callable[[list[Path]], None], dict[str, Any], tuple[str, ...]]] = [
        ("ts-invalid", "transfer syntax", _ts_invalid, {}, ("TransferSyntaxUID", "transfer syntax")),
        ("lut-empty", "modality LUT", _lut("empty"), {}, ("ModalityLUTSequence",)),
        ("lut-short", "modality LUT", _lut("short"), {}, ("ModalityLUTSequence", "LUTData")),
        ("lut-no-descriptor", "modality LUT", _lut("no_descriptor"), {}, ("LUTDescriptor",)),
        ("slope-1e20", "rescale", lambda f: edit(f, set_raw("RescaleSlope", "1e20")), {}, ("RescaleSlope",)),
        ("slope-1e300", "rescale", lambda f: edit(f, set_raw("RescaleSlope", "1e300")), {}, ("RescaleSlope",)),
        ("intercept-1e300", "rescale", lambda f: edit(f, set_raw("RescaleIntercept", "1e300")), {},
         ("RescaleIntercept", "RescaleSlope")),
        ("ipp-1e6", "position outlier", _outlier("1000000"), {"expect": "either", "warn": True},
         ("ImagePositionPatient",)),
        ("ipp-1e300", "position outlier", _outlier("1e300"), {"expect": "either", "warn": True},
         ("ImagePositionPatient",)),
        ("ipp-1e300-all", "position outlier", _outlier("1e300", "all"), {}, ("ImagePositionPatient",)),
        ("spacing-1e-30", "pixel spacing", lambda f: edit(f, set_raw("PixelSpacing", ["1e-30", "1e-30"])), {},
         ("PixelSpacing",)),
        ("spacing-negative", "pixel spacing", lambda f: edit(f, set_raw("PixelSpacing", ["-0.6", "-0.6"])), {},
         ("PixelSpacing",)),
        ("spacing-nan", "pixel spacing", lambda f: edit(f, set_raw("PixelSpacing", ["NaN", "NaN"])), {},
         ("PixelSpacing",)),
        ("bits8-all", "pixel data size", lambda f: edit(f, set_raw("BitsAllocated", 8)), {},
         ("BitsAllocated", "Pixel Data")),
        ("bits8-two", "pixel data size", lambda f: edit(middle(f, 2), set_raw("BitsAllocated", 8)), {},
         ("BitsAllocated", "Pixel Data")),
        ("bits1", "pixel data size", lambda f: edit(f, set_raw("BitsAllocated", 1)), {},
         ("BitsAllocated", "Pixel Data")),
        ("rows256", "pixel data size", lambda f: edit(f, set_raw("Rows", 256)), {}, ("Rows", "Pixel Data")),
        ("zero-byte-slice", "missing slice", lambda f: middle(f)[0].write_bytes(b""), {}, ("0 bytes", "empty")),
        ("pipe-in-series", "non-regular file", _pipe_in_series, {"expect": "either"}, ("pipe",)),
        ("deep-folder", "deep folders", _deep, {"expect": "either"}, ("copy",)),
    ]
    for name, klass, mutate, kw, mention in spec:
        for command in ("inspect", "convert"):
            kws = dict(kw)
            if command == "inspect":  # inspect describes; it fails only where the folder cannot be searched
                kws = {"expect": "answer", "warn": name not in ("pipe-in-series", "deep-folder")}
            cases.append(_series_case(name, klass, command, mutate, mention=mention, **kws))
    # missing / placeholder pixel spacing: convert writes 1 mm pixels with a warning, infer refuses
    for name, change in (("spacing-missing", delete("PixelSpacing")),
                         ("spacing-0", set_raw("PixelSpacing", ["0", "0"]))):
        cases.append(_series_case(name, "pixel spacing", "convert", lambda f, c=change: edit(f, c),
                                  expect="answer", warn=True, mention=("PixelSpacing",)))
        cases.append(_series_case(name, "pixel spacing", "infer", lambda f, c=change: edit(f, c),
                                  source="small", mention=("PixelSpacing",)))
    cases.append(_series_case("window-nan", "strict json", "inspect-json",
                              lambda f: edit(f, set_raw("WindowCenter", ["NaN", "Infinity"])), expect="answer"))
    cases.append(_series_case("spacing-nan", "strict json", "inspect-json",
                              lambda f: edit(f, set_raw("PixelSpacing", ["NaN", "Inf"])), expect="answer"))
    for name, mutate, mention in (("zero-byte-slice", lambda f: middle(f)[0].write_bytes(b""), ("0 bytes",)),
                                  ("ipp-1e6", _outlier("1000000"), ("ImagePositionPatient",)),
                                  ("pipe-in-series", _pipe_in_series, ("pipe",))):
        cases.append(_series_case(name, "infer on bad series", "infer", mutate, source="small",
                                  expect="error" if name == "zero-byte-slice" else "either", mention=mention))
    for name, mutate, mention in (("unreadable-slice", _chmod_unreadable, ("1-16.dcm: cannot be read",)),
                                  ("unreadable-subfolder", _unreadable_subfolder, ("part2: folder cannot be read",))):
        for command in ("inspect", "convert"):
            case = _series_case(name, "missing slice", command, mutate, mention=mention,
                                expect="answer" if command == "inspect" else "error", warn=command == "inspect")
            cases.append(dataclasses.replace(case, as_nobody=True))
    return cases


def _bench_broken_lut(tmp: Path, fx: Fixtures) -> Built:
    series = copy_real_ct(tmp / "study")
    _lut("empty")(dicom_files(series))
    return Built(["bench", "dicom", "--input", str(series)], [series])


def _pipe_input(kind: str) -> Callable[[Path, Fixtures], Built]:
    def build(tmp: Path, fx: Fixtures) -> Built:
        pipe = tmp / "study.nrrd"
        os.mkfifo(pipe)
        if kind == "convert":
            return Built(["convert", str(pipe), str(tmp / "out.nrrd")], [], [tmp / "out.nrrd"], isolate=True)
        if kind == "inspect":
            return Built(["inspect", str(pipe)], [], isolate=True)
        return Built(["infer", "lung", "--input", str(pipe), "--output", str(tmp / "out"), "--model",
                      str(fx.lung_model)], [], [tmp / "out"], isolate=True)
    return build


def _pipe_in_batch(tmp: Path, fx: Fixtures) -> Built:
    studies = tmp / "studies"
    copy_series(fx.small_ct, studies / "good")
    os.mkfifo(studies / "blocked.nrrd")
    return Built(["batch", "lung", "--input", str(studies), "--output", str(tmp / "out"), "--model",
                  str(fx.lung_model)], [studies], isolate=True)


def _volume_file(kind: str) -> Callable[[Path, Fixtures], Built]:
    """A NIfTI/NRRD of the small CT with a broken pixdim or NaN/inf voxels, through ``infer lung``."""

    def build(tmp: Path, fx: Fixtures) -> Built:
        import SimpleITK as sitk

        from MedDLLib.dicom import read_dicom_folder

        volume = read_dicom_folder(fx.small_ct)
        image = sitk.GetImageFromArray(volume.array.astype(np.float32))
        image.SetSpacing(volume.geometry.spacing_mm)
        image.SetOrigin(volume.geometry.origin_lps_mm)
        image.SetDirection(np.asarray(volume.geometry.direction_lps).ravel().tolist())
        if kind.startswith("nrrd"):
            path = tmp / "ct.nrrd"
            array = sitk.GetArrayFromImage(image)
            array[2:4, 10:30, 10:30] = np.nan if kind == "nrrd-nan" else np.inf
            bad = sitk.GetImageFromArray(array)
            bad.CopyInformation(image)
            sitk.WriteImage(bad, str(path))
        elif kind == "nii-nan-voxels":
            path = tmp / "ct.nii.gz"
            array = sitk.GetArrayFromImage(image)
            array[2:4, 10:30, 10:30] = np.nan
            bad = sitk.GetImageFromArray(array)
            bad.CopyInformation(image)
            sitk.WriteImage(bad, str(path))
        else:  # pixdim[1] (offset 80 of the NIfTI-1 header) patched in the bytes: nibabel would "fix" it
            import struct

            path = tmp / "ct.nii"
            sitk.WriteImage(image, str(path))
            value = {"nii-pixdim-0": 0.0, "nii-pixdim-nan": float("nan"),
                     "nii-pixdim-neg": -volume.geometry.spacing_mm[0]}[kind]
            data = bytearray(path.read_bytes())
            data[80:84] = struct.pack("<f", value)
            path.write_bytes(bytes(data))
        os.chmod(path, 0o644)
        return Built(["infer", "lung", "--input", str(path), "--output", str(tmp / "out"), "--model",
                      str(fx.lung_model)], [path], [tmp / "out"])
    return build


def _usage(argv: list[str]) -> Callable[[Path, Fixtures], Built]:
    def build(tmp: Path, fx: Fixtures) -> Built:
        return Built([a.replace("{tmp}", str(tmp)) for a in argv], [], [tmp / "data"])
    return build


def _resume_corrupt(tmp: Path, fx: Fixtures) -> Built:
    """A batch run whose first study's result.json is then corrupted: --resume must run that study again."""
    studies = tmp / "studies"
    copy_series(fx.small_ct, studies / "a")
    out = tmp / "out"
    argv = ["batch", "lung", "--input", str(studies), "--output", str(out), "--model", str(fx.lung_model)]
    first = run_meddl_here(argv)
    assert first.returncode == 0, first.stderr
    (out / "a" / "result.json").write_text('{"risk_score": 0.3, "risk_gr')

    def check(proc: subprocess.CompletedProcess) -> str | None:
        try:
            json.loads((out / "a" / "result.json").read_text())
        except (OSError, ValueError):
            return "--resume kept a corrupted result.json as done"
        return None if "1 done" in proc.stdout else f"the study was not run again: {proc.stdout.strip()}"
    return Built(argv + ["--resume"], [studies], check=check)


def _killed_infer(tmp: Path, fx: Fixtures) -> Built:
    """The staging folders a killed ``meddl infer`` leaves beside its output: the next run removes them."""
    out = tmp / "out"
    for stale in (f".out.{999999}-abcd.partial", ".out.k3j2l1.partial"):
        (tmp / stale).mkdir()
        (tmp / stale / "half.nrrd").write_bytes(b"NRRD0004\n")
    series = copy_series(fx.small_ct, tmp / "study")

    def check(proc: subprocess.CompletedProcess) -> str | None:
        left = [p.name for p in tmp.iterdir() if p.name.endswith(".partial")]
        return f"stale staging folders left: {left}" if left else None
    return Built(["infer", "lung", "--input", str(series), "--output", str(out), "--model", str(fx.lung_model)],
                 [series], check=check)


def _phantom_over_dataset(earlier_phantom: bool) -> Callable[[Path, Fixtures], Built]:
    def build(tmp: Path, fx: Fixtures) -> Built:
        data = tmp / "data"
        if earlier_phantom:
            proc = run_meddl_here(["phantom", "lung", str(data), "--cases", "2", "--seed", "1"])
            assert proc.returncode == 0, proc.stderr
            return Built(["phantom", "lung", str(data), "--cases", "2", "--seed", "2"], [])
        data.mkdir()
        (data / "clinical.csv").write_text("case_id,time,event\nP1,100,1\n")
        return Built(["phantom", "lung", str(data), "--cases", "2", "--seed", "1"], [data])
    return build


def _evaluate_over_file(tmp: Path, fx: Fixtures) -> Built:
    target = tmp / "clinical.csv"
    target.write_text("case_id,time,event\nP1,100,1\n")
    return Built(["evaluate", "lung", "--data", str(fx.lung_data), "--model", str(fx.lung_model), "--out",
                  str(target)], [target, fx.lung_data])


def scanner_export_cases() -> list[Case]:
    def build(command: str) -> Callable[[Path, Fixtures], Built]:
        def inner(tmp: Path, fx: Fixtures) -> Built:
            if command == "inspect":
                return Built(["inspect", str(PHILIPS_EXPORT)], [PHILIPS_EXPORT])
            return Built(["convert", str(PHILIPS_EXPORT), str(tmp / "head.nrrd")], [PHILIPS_EXPORT])
        return inner
    return [Case("philips-export-inspect", "scanner export", build("inspect"), "answer", ("DICOMDIR",), True),
            Case("philips-export-convert", "scanner export", build("convert"), "answer", ("set aside",), True)]


def other_cases() -> list[Case]:
    return [
        Case("bench-dicom-broken-lut", "modality LUT", _bench_broken_lut, "error", ("ModalityLUTSequence",)),
        Case("pipe-as-input-inspect", "non-regular file", _pipe_input("inspect"), "either", ("pipe",)),
        Case("pipe-as-input-convert", "non-regular file", _pipe_input("convert"), "error", ("pipe", "regular")),
        Case("pipe-as-input-infer", "non-regular file", _pipe_input("infer"), "error", ("pipe", "regular"),
             needs="lung_model"),
        Case("pipe-among-batch-studies", "non-regular file", _pipe_in_batch, "error", ("pipe", "regular"),
             needs="lung_model"),
        Case("nii-pixdim-0", "volume file geometry", _volume_file("nii-pixdim-0"), "error", ("spacing", "pixdim"),
             needs="lung_model"),
        Case("nii-pixdim-nan", "volume file geometry", _volume_file("nii-pixdim-nan"), "error",
             ("spacing", "pixdim"), needs="lung_model"),
        Case("nii-pixdim-neg", "volume file geometry", _volume_file("nii-pixdim-neg"), "error",
             ("spacing", "pixdim"), needs="lung_model"),
        Case("nrrd-nan-voxels", "non-finite voxels", _volume_file("nrrd-nan"), "error", ("NaN", "finite"),
             needs="lung_model"),
        Case("nrrd-inf-voxels", "non-finite voxels", _volume_file("nrrd-inf"), "error", ("NaN", "finite"),
             needs="lung_model"),
        Case("nii-nan-voxels", "non-finite voxels", _volume_file("nii-nan-voxels"), "error", ("NaN", "finite"),
             needs="lung_model"),
        Case("phantom-cases-1e30", "option limits", _usage(["phantom", "lung", "{tmp}/data", "--cases",
                                                            str(10**30)]), "error", ("--cases",)),
        Case("phantom-seed-neg", "option limits", _usage(["phantom", "lung", "{tmp}/data", "--seed", "-5"]),
             "error", ("--seed",)),
        Case("phantom-size-200000", "option limits", _usage(["phantom", "ich", "{tmp}/data", "--size", "200000"]),
             "error", ("--size",)),
        Case("train-size-5000", "option limits", _usage(["train", "ich", "--data", "{tmp}/nodata", "--out",
                                                         "{tmp}/m", "--size", "5000"]), "error", ("--size",)),
        Case("batch-resume-corrupt-result", "batch resume", _resume_corrupt, "answer", needs="lung_model"),
        Case("infer-after-kill", "partial outputs", _killed_infer, "answer", needs="lung_model"),
        Case("phantom-over-dataset", "inputs overwritten", _phantom_over_dataset(False), "error",
             ("clinical.csv", "holds")),
        Case("phantom-over-phantom", "inputs overwritten", _phantom_over_dataset(True), "answer"),
        Case("evaluate-out-over-dataset-file", "inputs overwritten", _evaluate_over_file, "error",
             ("--out", "metrics"), needs="lung_model"),
    ]


def all_cases() -> list[Case]:
    return dicom_cases() + scanner_export_cases() + other_cases()


# ---------------------------------------------------------------------------------------------- running
def run_meddl_here(argv: Sequence[str]) -> subprocess.CompletedProcess:
    """``meddl argv`` in this process (:func:`MedDLLib.cli.main`), its output captured; an exception escaping
    ``main`` is written to stderr as the traceback it would print."""
    import contextlib
    import io
    import traceback

    from MedDLLib.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - the traceback is the finding
            err.write(traceback.format_exc())
            code = 1
    return subprocess.CompletedProcess(list(argv), int(code or 0), out.getvalue(), err.getvalue())


def run_meddl(argv: Sequence[str], cwd: Path, *, timeout: float = TIMEOUT_S, as_nobody: bool = False,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``meddl argv`` in a child process (this Python, its MEDDL_HOME); TimeoutExpired on a hang."""
    command = [sys.executable, "-c", "import sys; from MedDLLib.cli import main; sys.exit(main())", *argv]
    if as_nobody and os.geteuid() == 0:
        command = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *command]
    full_env = {**os.environ, "PYTHONFAULTHANDLER": "", **(env or {})}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
                          stdin=subprocess.DEVNULL)


def snapshot(paths: Sequence[Path]) -> dict[str, str]:
    """Name -> SHA-1 (or the file type) of everything under ``paths`` (links not followed, pipes not opened)."""
    out: dict[str, str] = {}
    for root in paths:
        stack = [root]
        while stack:
            p = stack.pop()
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                out[str(p)] = f"dir {stat.S_IMODE(st.st_mode):o}"
                try:
                    stack.extend(Path(e.path) for e in os.scandir(p))
                except OSError:
                    pass
            elif stat.S_ISREG(st.st_mode):
                try:
                    out[str(p)] = hashlib.sha1(p.read_bytes()).hexdigest()
                except OSError:
                    out[str(p)] = f"unreadable {st.st_size}"
            else:
                out[str(p)] = f"mode {st.st_mode:o}"
    return out


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error:" in line or line.startswith("usage:")]


def judge(case: Case, built: Built, proc: subprocess.CompletedProcess | None, seconds: float,
          before: dict[str, str], after: dict[str, str], tmp: Path) -> list[str]:
    """Why the outcome breaks the rules (empty: it is fine)."""
    if proc is None:
        return [f"hang: no answer in {TIMEOUT_S:g} s"]
    why = []
    text = proc.stdout + proc.stderr
    if "Traceback" in text:
        tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:]
        why.append(f"traceback: {tail}")
    if proc.returncode < 0:
        why.append(f"killed by signal {-proc.returncode}")
    mention_hit = not case.mention or any(m.lower() in text.lower() for m in case.mention)
    if proc.returncode != 0:
        if case.expect == "answer":
            why.append(f"failed where an answer is due: {proc.stderr.strip()[-300:]}")
        errors = [line for line in proc.stderr.splitlines() if ": error:" in line or ": failed: " in line]
        if len(errors) != 1:
            why.append(f"expected one error line, got {len(errors)}: {proc.stderr.strip()[-300:]}")
        elif case.mention and not any(m.lower() in errors[0].lower() for m in case.mention):
            why.append(f"error line names none of {case.mention}: {errors[0][:300]}")
        for out in built.outputs:
            if out.exists():
                why.append(f"output left after a failure: {out}")
    else:
        if case.expect == "error":
            why.append(f"answered (exit 0) where a refusal is due: {text.strip()[-300:]}")
        elif case.warn and not mention_hit:
            why.append(f"answered without a warning naming {case.mention}: {text.strip()[-300:]}")
    if built.check is not None:
        extra = built.check(proc)
        if extra:
            why.append(extra)
    left = [str(p) for p in walk_files(tmp) if p.name.endswith(".partial")]
    if left:
        why.append(f".partial entries left: {left[:3]}")
    if before != after:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        why.append(f"inputs changed: {changed[:3]}")
    return why


def run_case(case: Case, tmp: Path, fx: Fixtures) -> dict[str, Any]:
    """Build ``case`` in ``tmp``, run it, judge it; returns a JSON-ready outcome row."""
    private = None
    if case.as_nobody and os.geteuid() == 0:  # the unprivileged user must reach the case folder: one of its own
        private = Path(tempfile.mkdtemp(prefix="meddl-fuzz-"))  # (pytest's folders are private to root)
        os.chmod(private, 0o755)
        tmp = private / "case"
    tmp.mkdir(parents=True, exist_ok=True)
    built = case.build(tmp, fx)
    if private is not None:
        built.as_nobody = True
        os.chmod(tmp, 0o777)
    before = snapshot(built.inputs)
    start = time.perf_counter()
    try:
        if built.isolate or built.as_nobody:
            proc: subprocess.CompletedProcess | None = run_meddl(built.argv, tmp, as_nobody=built.as_nobody)
        else:
            proc = run_meddl_here(built.argv)
    except subprocess.TimeoutExpired:
        proc = None
    seconds = time.perf_counter() - start
    after = snapshot(built.inputs)
    why = judge(case, built, proc, seconds, before, after, tmp)
    for deep in (p for p in tmp.glob("study/d")):  # pytest's clean-up would recurse once per level
        remove_tree(deep)
    if private is not None:
        remove_tree(private)
    first_line = ""
    if proc is not None:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        first_line = (_error_lines(proc.stderr) or lines or [""])[-1][:400]
    return {"case": case.name, "class": case.klass, "command": built.argv[0], "expect": case.expect,
            "exit": None if proc is None else proc.returncode, "seconds": round(seconds, 2),
            "ok": not why, "why": why, "said": first_line}


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts per class and in all: cases, ended well, refused with one line, answered."""
    classes: dict[str, dict[str, int]] = {}
    for row in rows:
        c = classes.setdefault(row["class"], {"cases": 0, "ok": 0, "refused": 0, "answered": 0, "bad": 0})
        c["cases"] += 1
        c["ok" if row["ok"] else "bad"] += 1
        if row["exit"] not in (0, None):
            c["refused"] += 1
        elif row["exit"] == 0:
            c["answered"] += 1
    total = {k: sum(c[k] for c in classes.values()) for k in ("cases", "ok", "refused", "answered", "bad")}
    return {"total": total, "classes": classes}


def format_table(summary: dict[str, Any]) -> str:
    head = f"{'class':28} {'cases':>5} {'ok':>4} {'bad':>4} {'refused':>7} {'answered':>8}"
    lines = [head, "-" * len(head)]
    for name, c in sorted(summary["classes"].items()):
        lines.append(f"{name:28} {c['cases']:5d} {c['ok']:4d} {c['bad']:4d} {c['refused']:7d} {c['answered']:8d}")
    t = summary["total"]
    lines.append(f"{'all':28} {t['cases']:5d} {t['ok']:4d} {t['bad']:4d} {t['refused']:7d} {t['answered']:8d}")
    return "\n".join(lines)
