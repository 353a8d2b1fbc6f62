"""Write a :class:`~MedDLLib.geometry.Volume` as a DICOM series: one file per slice, scanner-like headers.

Used by the tests (every trap a reader must handle: shuffled file names, oblique orientations, uneven gaps,
gantry tilt, several echoes, MONOCHROME1, missing tags, compressed transfer syntaxes) and by the synthetic
phantom generators, which write realistic studies with it.

Physical model of what is written (LPS, mm). With ``g = volume.geometry``, ``r, c, n`` the columns of
``g.direction`` (the i, j, k axes) and ``(sx, sy, sz) = g.spacing_mm``, pixel ``(i, j)`` of slice ``k`` lies at::

    origin + offset_k * n + i * sx * r + j * sy * c_tilt

* ``offset_k = k * sz`` unless ``slice_offsets_mm`` gives the distances along ``n`` (uneven gaps, missing
  slices).
* ``c_tilt = cos(t) * c + sin(t) * n`` with ``t = gantry_tilt_deg`` (0 by default). This is how a CT with a
  tilted gantry stores its images: ImageOrientationPatient rows are tilted about the row axis ``r``, but the
  table still moves along ``n``, so ImagePositionPatient steps along ``n`` and not along the image normal
  ``r x c_tilt``: the stack is sheared. GantryDetectorTilt (0018,1120) is written as ``t``.

:func:`pixel_positions_lps_mm` returns exactly these positions, so a phantom can sample its anatomy where the
written pixels really are. Voxel values of ``volume.array`` are output units (HU for CT); the stored values are
``round((value - intercept) / slope)``.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from .geometry import Volume

#: SOP class written for each modality (anything else: Secondary Capture).
SOP_CLASS_BY_MODALITY: dict[str, UID] = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "CR": ComputedRadiographyImageStorage,
}

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)


def _tilted_axes(direction: np.ndarray, gantry_tilt_deg: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row axis ``r``, tilted column axis ``c_tilt`` and table axis ``n`` (LPS unit vectors)."""
    r, c, n = direction[:, 0], direction[:, 1], direction[:, 2]
    t = np.deg2rad(gantry_tilt_deg or 0.0)
    return r, np.cos(t) * c + np.sin(t) * n, n


def slice_offsets(volume: Volume, slice_offsets_mm: Sequence[float] | None = None) -> np.ndarray:
    """Distance (mm) of each slice from the origin along the table axis: ``k * sz`` or the given offsets."""
    nk = volume.array.shape[0]
    if slice_offsets_mm is None:
        return np.arange(nk) * volume.geometry.spacing_mm[2]
    offsets = np.asarray(slice_offsets_mm, dtype=float)
    if offsets.shape != (nk,):
        raise ValueError(f"slice_offsets_mm needs {nk} values (one per slice), got {offsets.shape}")
    return offsets


def pixel_positions_lps_mm(
    volume: Volume, *, gantry_tilt_deg: float | None = None, slice_offsets_mm: Sequence[float] | None = None
) -> np.ndarray:
    """LPS position (mm) of every pixel :func:`write_series` writes, shape ``(k, j, i, 3)``."""
    g = volume.geometry
    r, c_tilt, n = _tilted_axes(g.direction, gantry_tilt_deg)
    nk, nj, ni = volume.array.shape
    sx, sy, _ = g.spacing_mm
    k_off = slice_offsets(volume, slice_offsets_mm)
    return (
        np.asarray(g.origin_lps_mm)
        + k_off[:, None, None, None] * n
        + (np.arange(nj) * sy)[None, :, None, None] * c_tilt
        + (np.arange(ni) * sx)[None, None, :, None] * r
    )


def _stored_values(
    values: np.ndarray, slope: float | None, intercept: float | None, bits_stored: int | None,
    pixel_representation: int | None,
) -> tuple[np.ndarray, int, int, int]:
    """Stored integers for ``values`` (output units) plus (bits allocated, bits stored, pixel representation)."""
    stored = np.rint((np.asarray(values, dtype=float) - (intercept or 0.0)) / (slope or 1.0)).astype(np.int64)
    lo, hi = int(stored.min()), int(stored.max())
    if pixel_representation is None:
        pixel_representation = 1 if lo < 0 else 0
    if bits_stored is None:
        bits_stored = 16
    bits_allocated = 8 if bits_stored <= 8 else 16
    if pixel_representation:
        valid = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1)
    else:
        valid = (0, 2**bits_stored - 1)
    if lo < valid[0] or hi > valid[1]:
        raise ValueError(
            f"stored values {lo}..{hi} do not fit {bits_stored} bits "
            f"({'signed' if pixel_representation else 'unsigned'}, {valid[0]}..{valid[1]}): "
            "change rescale_slope/rescale_intercept, bits_stored or pixel_representation"
        )
    dtype = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16}[
        (bits_allocated, pixel_representation)
    ]
    return stored.astype(dtype), bits_allocated, bits_stored, pixel_representation


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text if len(text) <= 16 else f"{value:.10g}"[:16]


def write_series(
    folder: str | Path,
    volume: Volume,
    *,
    modality: str = "CT",
    rescale_slope: float | None = 1.0,
    rescale_intercept: float | None = -1024.0,
    bits_stored: int | None = None,
    pixel_representation: int | None = None,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    file_names: str = "shuffled",
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_id: str = "MEDDL-PHANTOM-0001",
    patient_name: str = "Phantom^MedDL",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    study_description: str = "MedDL synthetic study",
    series_description: str = "MedDL synthetic series",
    series_number: int = 1,
    echo_number: int | None = None,
    echo_time_ms: float | None = None,
    gantry_tilt_deg: float | None = None,
    slice_offsets_mm: Sequence[float] | None = None,
    extra: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write ``volume`` as a DICOM series, one file per slice, into ``folder`` (created if needed).

    Args:
        folder: output folder (several series may share it).
        volume: voxels ``[k, j, i]`` in output units (HU for CT) and the geometry they are placed at.
        modality: DICOM Modality (also chooses the SOP class: CT, MR, CR, else Secondary Capture).
        rescale_slope, rescale_intercept: RescaleSlope / RescaleIntercept; ``None`` omits that tag (and the
            stored value is computed as if it were 1 / 0).
        bits_stored: BitsStored (default 16); BitsAllocated is 8 up to 8 bits, else 16.
        pixel_representation: 0 unsigned, 1 signed (default: signed only when a stored value is negative).
        photometric: "MONOCHROME2" or "MONOCHROME1" (same stored values; only the display sense differs).
        window: (centre, width) or a list of them, in output units (WindowCenter / WindowWidth).
        file_names: "shuffled" (names and InstanceNumbers unrelated to position) or "instance"
            (``<series>[_e<echo>]_<instance>.dcm``, InstanceNumber rising along the slice axis). An existing
            file is never overwritten (FileExistsError).
        transfer_syntax: Explicit/Implicit VR Little Endian, Explicit VR Big Endian, or a compressed syntax
            pydicom can encode here (RLE Lossless, JPEG 2000 Lossless).
        patient_id ... series_number: identifiers; UIDs are generated when not given.
        echo_number, echo_time_ms: EchoNumbers / EchoTime (MR echoes of one series).
        gantry_tilt_deg: write a gantry-tilted (sheared) stack, see the module docstring.
        slice_offsets_mm: distance of each slice from the origin along the slice axis (uneven gaps).
        extra: more elements by keyword, set on every file (e.g. ``{"SliceThickness": "5"}``); a value of
            ``None`` deletes that element.
        seed: seed of the shuffled InstanceNumbers.

    Returns:
        the written paths, in slice order (k = 0 first).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if file_names not in ("shuffled", "instance"):
        raise ValueError(f"file_names must be 'shuffled' or 'instance', got {file_names!r}")
    transfer_syntax = UID(transfer_syntax)
    stored, bits_allocated, bits_stored, pixel_representation = _stored_values(
        volume.array, rescale_slope, rescale_intercept, bits_stored, pixel_representation
    )
    g = volume.geometry
    r, c_tilt, n = _tilted_axes(g.direction, gantry_tilt_deg)
    sx, sy, sz = g.spacing_mm
    offsets = slice_offsets(volume, slice_offsets_mm)
    nk, rows, cols = stored.shape
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    sop_class = SOP_CLASS_BY_MODALITY.get(modality, SecondaryCaptureImageStorage)
    windows = [] if window is None else ([window] if np.isscalar(window[0]) else list(window))  # type: ignore[index]
    rng = np.random.default_rng(seed)
    instance_numbers = rng.permutation(nk) + 1 if file_names == "shuffled" else np.arange(nk) + 1
    today = datetime.date.today().strftime("%Y%m%d")

    paths: list[Path] = []
    for k in range(nk):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if file_names == "shuffled":  # unrelated to position, unique through the SOP Instance UID
            name = f"IM{hashlib.sha1(meta.MediaStorageSOPInstanceUID.encode()).hexdigest()[:12]}.dcm"
        else:
            echo = f"_e{echo_number}" if echo_number is not None else ""
            name = f"{series_number:03d}{echo}_{int(instance_numbers[k]):04d}.dcm"
        path = folder / name
        if path.exists():
            raise FileExistsError(f"{path} exists: write each series with its own series_number/echo_number")
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.StudyDescription, ds.SeriesDescription = study_description, series_description
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = series_number, int(instance_numbers[k]), 1
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        position = np.asarray(g.origin_lps_mm) + offsets[k] * n
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*r, *c_tilt)]
        ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing (along j), column spacing (along i)
        ds.SliceThickness = _ds(sz)
        ds.SliceLocation = _ds(float(np.dot(position, np.cross(r, c_tilt))))
        if gantry_tilt_deg is not None:
            ds.GantryDetectorTilt = _ds(gantry_tilt_deg)
        if echo_number is not None:
            ds.EchoNumbers = echo_number
        if echo_time_ms is not None:
            ds.EchoTime = _ds(echo_time_ms)
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
        ds.PixelRepresentation = pixel_representation
        if rescale_intercept is not None:
            ds.RescaleIntercept = _ds(rescale_intercept)
        if rescale_slope is not None:
            ds.RescaleSlope = _ds(rescale_slope)
        if (rescale_slope is not None or rescale_intercept is not None) and modality == "CT":
            ds.RescaleType = "HU"
        if windows:
            ds.WindowCenter = [_ds(w[0]) for w in windows]
            ds.WindowWidth = [_ds(w[1]) for w in windows]
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        for keyword, value in (extra or {}).items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        _save(ds, path, transfer_syntax)
        paths.append(path)
    return paths


def _save(ds: FileDataset, path: Path, transfer_syntax: UID) -> None:
    """Write ``ds`` in ``transfer_syntax`` (native syntaxes directly, compressed ones through pydicom)."""
    if transfer_syntax in _UNCOMPRESSED:
        if transfer_syntax == ExplicitVRBigEndian:
            arr = np.frombuffer(ds.PixelData, dtype=np.dtype(f"<{'ui'[ds.PixelRepresentation]}{ds.BitsAllocated // 8}"))
            ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        if transfer_syntax == ExplicitVRBigEndian:  # pydicom only writes big endian when forced to
            pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
        else:
            ds.save_as(path, enforce_file_format=True, implicit_vr=transfer_syntax.is_implicit_VR, little_endian=True)
    else:
        ds.compress(transfer_syntax, generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
