"""The one DICOM reader of MedDL: find the image series in a folder tree and read each as one :class:`Volume`.

Plain data in, plain data out (paths, :class:`DicomSeries`, :class:`~MedDLLib.geometry.Volume`); pydicom
does the parsing and decoding. The steps and the rules they follow:

1. :func:`find_series` reads every file's header once (up to the pixel data, whose byte offset it notes),
   skips files that are not DICOM images (and says why), drops exact copies of a file (same SOPInstanceUID
   and header, e.g. a backup in a subfolder: the first by path is kept, with a warning), groups the rest by
   SeriesInstanceUID and splits a group into several volumes wherever it is not one volume: different
   SeriesNumber, orientation, image size, pixel spacing, photometric interpretation or echo (EchoNumbers,
   EchoTime); and, where slices repeat a position, by AcquisitionNumber, TemporalPositionIdentifier,
   TriggerTime, ImageType, then by order of appearance. A split volume's ``uid`` is the SeriesInstanceUID plus
   ``#`` and what tells it apart (``1.2.3#echo=2``). Slices are sorted by position along the slice normal
   (ImageOrientationPatient x ImagePositionPatient), never by file name or InstanceNumber. Gantry tilt
   (positions not moving along the normal), uneven gaps, missing tags, malformed values and an
   ImageOrientationPatient that is no orientation become plain sentences in :attr:`DicomSeries.problems`.
2. :func:`read_series` decodes the pixels (every transfer syntax pydicom has a decoder for: pylibjpeg
   plugins for JPEG, JPEG-LS, JPEG 2000, RLE; Deflated Explicit VR Little Endian through pydicom's inflated
   data set), applies the Modality LUT (RescaleSlope/Intercept or the Modality LUT Sequence) so CT is in HU,
   and builds the geometry from the positions. A tilted or unevenly spaced stack is resampled onto a regular
   orthogonal grid (``irregular="resample"``, reported in ``metadata["warnings"]``) or refused
   (``irregular="refuse"``).
3. :func:`read_dicom_folder` = 1 + 2 for a folder holding one volume (or a chosen one);
   :func:`inspect_folder` gives JSON-ready summaries.

Hostile and careless input (issue 18; ``Testing/test_fuzz.py`` generates each kind):

* Only regular files are opened (named pipes, sockets and devices are listed as skipped, never read); the folder
  tree is walked without recursion (any depth); a DICOMDIR or vendor directory file (Media Storage Directory) is
  skipped with a note. An empty or unreadable file, or a folder that cannot be listed, may hold slices:
  :func:`select_series` refuses the folder naming it (never a volume interpolated across the gap).
* A header that does not describe its pixel data (native Pixel Data length against Rows x Columns x
  BitsAllocated), a TransferSyntaxUID that is no transfer syntax, an empty or inconsistent Modality LUT Sequence,
  a rescale beyond +-:data:`MAX_RESCALED_VALUE` and a PixelSpacing that is no size (0 or negative, NaN, outside
  :data:`PIXEL_SPACING_RANGE_MM`) are problems of the series: ``inspect`` lists them, reading refuses.
  A CT/MR/PT/NM series without a pixel size is refused by default (``unknown_spacing``).
* A slice whose ImagePositionPatient lies beyond :data:`MAX_POSITION_MM` or far off the others is set aside with
  a warning; a resampling that would make many more slices than the series has is refused.
* When no uid is given and a folder holds several volumes of which exactly one is an image stack (a scanner
  export with localisers, screen captures, colour images), that stack is read and the others are named as set
  aside.

Conventions:

* Values: stored values through the Modality LUT. Integer results stay integer (the smallest of uint8,
  uint16, int16, int32 that holds every value the headers of all files allow: CT with 12 bits stored is int16
  HU; a value that does not fit raises DicomError, it never wraps), non-integer rescales give float32,
  resampled volumes are float32.
* MONOCHROME1 (higher stored value = darker): values without physical units (CR, DX, MG, ...) are inverted
  to the MONOCHROME2 sense, ``v' = v_min + v_max - v`` over the range the Modality LUT can produce (for
  unsigned pixels without rescale: ``2**BitsStored - 1 - v``, what SimpleITK/GDCM return). The window centres
  in the metadata are mirrored the same way and :func:`apply_voi` undoes and redoes the inversion, so windows
  still show what the file meant. Values with physical units (CT, PT, or a RescaleType other than "US") are
  never inverted, so HU stay HU; a warning says the file asked for inverted display.
* Geometry: LPS, :class:`~MedDLLib.geometry.Geometry` (ITK convention, so it compares directly with
  SimpleITK). Origin = position of the first slice along the normal, slice spacing = mean gap. A single slice
  gets its slice spacing from SpacingBetweenSlices, else SliceThickness (SimpleITK ignores the latter and
  says 1 mm), with a warning; no ImagePositionPatient falls back on SliceLocation, with a warning.
* Irregular stacks are resampled onto the orthogonal grid of the image planes through the first slice
  (rows, columns, normal; what hardening Slicer's acquisition transform gives): a gantry tilt by shifting each
  slice in-plane (bilinear), uneven gaps by linear interpolation along the normal at the most common gap.
* Not read (a clear DicomError): multi-frame (enhanced) files, colour images. A Siemens mosaic is read as the
  2D tile image it is stored as, with a warning.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import stat
import struct
import sys
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, as_pixel_options, get_decoder
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from .errors import DicomError
from .geometry import Geometry, Volume

__all__ = [
    "DicomSeries",
    "DicomSlice",
    "SeriesList",
    "StackLayout",
    "apply_voi",
    "find_series",
    "inspect_folder",
    "orientation_name",
    "read_dicom_folder",
    "read_series",
    "select_series",
]

#: Elements read from each header (everything else is skipped while parsing: about twice as fast).
HEADER_KEYWORDS: tuple[str, ...] = (
    "SOPClassUID", "SOPInstanceUID", "Modality", "ImageType", "PatientID", "StudyInstanceUID",
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "FrameOfReferenceUID", "InstanceNumber",
    "AcquisitionNumber", "TemporalPositionIdentifier", "TriggerTime", "EchoNumbers", "EchoTime",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "ImagerPixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "SliceLocation", "GantryDetectorTilt", "SamplesPerPixel",
    "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "RescaleIntercept", "RescaleSlope", "RescaleType",
    "ModalityLUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
)

#: SOP Class of a DICOMDIR (and of vendor directory files such as Philips' DIRFILE).
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

#: Pixel data elements and their keywords.
_PIXEL_TAGS = {
    (0x7FE0, 0x0010): "PixelData", (0x7FE0, 0x0008): "FloatPixelData", (0x7FE0, 0x0009): "DoubleFloatPixelData",
}

#: Tolerances. Positions count as the same when closer than this along the normal (mm).
SAME_POSITION_MM = 0.01
#: A stack counts as tilted when a slice lies off the normal through the first slice by more than
#: max(this, 1 % of the pixel size) in mm ...
INPLANE_TOLERANCE_MM = 0.01
#: ... and unevenly spaced when a slice lies off the regular grid by more than max(this, 1 % of the gap).
GAP_TOLERANCE_MM = 0.01
#: Orientation cosines and pixel spacings that differ by less than this are the same.
ORIENTATION_TOLERANCE = 1e-3

#: When ``workers`` is None, header parsing runs on a process pool from this many files, and decoding of
#: compressed pixel data from :data:`PARALLEL_MIN_COMPRESSED_FILES`, and only on machines with more than two
#: cores. Measured on 2 cores (30 to 1500 files, native and JPEG 2000), every pool lost to one process:
#: parsing is pure Python (threads wait on the GIL), a process pool costs about 40 ms to start and 0.37 ms per
#: header to pickle back against 0.4-0.9 ms to parse one, and native pixel data decodes at memory speed. The
#: thresholds for bigger machines follow from those per-file costs.
PARALLEL_MIN_HEADER_FILES = 500
PARALLEL_MIN_COMPRESSED_FILES = 16

T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------------------------- data types
@dataclasses.dataclass
class DicomSlice:
    """One DICOM image file: its path, the header elements MedDL uses and where its pixel data starts.

    Attributes:
        path: the file.
        header: the :data:`HEADER_KEYWORDS` elements (a small pydicom Dataset, with ``file_meta``).
        pixel_offset: byte offset of the pixel data *value* in the file (None: no pixel data element); for
            Deflated Explicit VR Little Endian, in the inflated data set (:func:`_decode` reads those through
            pydicom).
        pixel_keyword: "PixelData", "FloatPixelData" or "DoubleFloatPixelData".
        pixel_vr: VR of the pixel data element (None for implicit VR).
        defect: why the pixels cannot be read (a sentence naming the file and tag), or None.
    """

    path: Path
    header: pydicom.Dataset = dataclasses.field(repr=False)
    pixel_offset: int | None = None
    pixel_keyword: str | None = None
    pixel_vr: str | None = None
    defect: str | None = None

    @property
    def transfer_syntax(self) -> UID:
        return UID(self.header.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))

    @property
    def position(self) -> np.ndarray | None:
        """ImagePositionPatient (LPS mm) or None."""
        return _floats(self.header, "ImagePositionPatient", 3)

    @property
    def orientation(self) -> np.ndarray | None:
        """ImageOrientationPatient (row cosines, column cosines) or None."""
        return _floats(self.header, "ImageOrientationPatient", 6)

    @property
    def frames(self) -> int:
        """NumberOfFrames (1 when absent; when malformed, :attr:`defect` says so)."""
        return _int(self.header, "NumberOfFrames") or 1

    @property
    def instance_number(self) -> int:
        """InstanceNumber (0 when absent or malformed: it only breaks ties)."""
        return _int(self.header, "InstanceNumber") or 0


@dataclasses.dataclass
class StackLayout:
    """Where the slices of a series are, sorted along the slice normal (all vectors LPS, mm).

    Attributes:
        row_axis, column_axis, normal: unit vectors of i (along a row), j (down a column), and their cross.
        pixel_spacing_mm: (i, j) pixel size.
        positions_lps_mm: (N, 3) position of each slice's first pixel, in slice order.
        offsets_mm: (N,) distance of each slice from the first along ``normal``.
        inplane_mm: (N, 2) offset of each slice from the normal through the first slice, along (i, j).
        slice_spacing_mm: the regular slice spacing (mean gap, or the fallback for a single slice).
        spacing_source: where ``slice_spacing_mm`` comes from ("ImagePositionPatient", "SliceLocation",
            "SpacingBetweenSlices", "SliceThickness" or "default").
        tilt_deg: angle between the stacking direction and the normal (0 for an orthogonal stack).
        tilted: slices are shifted in-plane from one to the next (gantry tilt or inconsistent positions).
        uneven: the gaps between slices differ.
        order_known: False when several slices have neither ImagePositionPatient nor SliceLocation.
        pixel_spacing_known: False when neither PixelSpacing nor ImagerPixelSpacing is there (1 mm assumed).
        geometry_defect: why the geometry cannot be trusted at all (a PixelSpacing or ImagePositionPatient that is
            no size or position); :func:`read_series` refuses such a series.
    """

    row_axis: np.ndarray
    column_axis: np.ndarray
    normal: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    positions_lps_mm: np.ndarray
    offsets_mm: np.ndarray
    inplane_mm: np.ndarray
    slice_spacing_mm: float
    spacing_source: str
    tilt_deg: float = 0.0
    tilted: bool = False
    uneven: bool = False
    order_known: bool = True
    pixel_spacing_known: bool = True
    geometry_defect: str | None = None

    @property
    def regular(self) -> bool:
        """True when the slices form a regular orthogonal grid (no resampling needed)."""
        return not (self.tilted or self.uneven)

    @property
    def irregularity(self) -> str:
        """Why the stack is resampled: ``"gantry tilt"``, ``"uneven gaps"``, both joined by "and", or ``""``."""
        return " and ".join(what for what, flag in (("gantry tilt", self.tilted), ("uneven gaps", self.uneven)) if flag)

    @property
    def gaps_mm(self) -> np.ndarray:
        return np.diff(self.offsets_mm)


@dataclasses.dataclass
class DicomSeries:
    """One volume's worth of DICOM files (a series, or one part of a series that was not one volume).

    Attributes:
        uid: identifier of this volume: the SeriesInstanceUID, plus ``#key=value,...`` when the series
            was split (e.g. ``1.2.3#echo=2``). What ``meddl convert --series`` takes.
        series_uid: the SeriesInstanceUID.
        files: the files in slice order (along the slice normal).
        metadata: modality, series_description, series_number, window_center/window_width (lists), patient_id,
            study_uid, series_uid, frame_of_reference_uid, files.
        problems: plain sentences on why these files are not a plain regular volume (tilt, uneven gaps,
            split from a larger series, missing tags, unreadable pixel data).
        warnings: what reading does about the data (fallback tags, inversions, mosaics).
        slices: per-file headers, in slice order.
        layout: slice positions and their analysis.
    """

    uid: str
    series_uid: str
    files: list[Path]
    metadata: dict[str, Any]
    problems: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    slices: list[DicomSlice] = dataclasses.field(default_factory=list, repr=False)
    layout: StackLayout | None = dataclasses.field(default=None, repr=False)

    @property
    def description(self) -> str:
        return str(self.metadata.get("series_description") or "")

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of the series and its problems (what ``meddl inspect`` prints)."""
        first = self.slices[0].header
        out: dict[str, Any] = {
            "uid": self.uid,
            "series_uid": self.series_uid,
            "description": self.description,
            "modality": self.metadata.get("modality", ""),
            "series_number": self.metadata.get("series_number"),
            "patient_id": self.metadata.get("patient_id", ""),
            "study_uid": self.metadata.get("study_uid", ""),
            "files": len(self.files),
            "rows": int(first.get("Rows") or 0),
            "columns": int(first.get("Columns") or 0),
            "folder": str(self.files[0].parent),
            "transfer_syntax": self.slices[0].transfer_syntax.name,
        }
        if self.layout is not None:
            lay = self.layout
            out.update(
                orientation=orientation_name(lay.normal) if _orientation_defect(self.slices[0]) is None else "unknown",
                spacing_mm=[round(v, 6) for v in (*lay.pixel_spacing_mm, lay.slice_spacing_mm)],
                slice_spacing_from=lay.spacing_source,
                tilt_deg=round(lay.tilt_deg, 4),
                gap_min_max_mm=[round(float(lay.gaps_mm.min()), 6), round(float(lay.gaps_mm.max()), 6)]
                if len(lay.gaps_mm) else None,
                regular=lay.regular,
            )
        out["window_center"] = self.metadata.get("window_center", [])
        out["window_width"] = self.metadata.get("window_width", [])
        out["problems"] = list(self.problems)
        out["warnings"] = list(self.warnings)
        return out


class SeriesList(list):
    """The :class:`DicomSeries` found under a folder (a list), plus the files skipped and why.

    Attributes:
        root: the folder searched.
        skipped: (path, reason) of every file that is not a readable DICOM image.
        corrupt: the subset of ``skipped`` that looked like DICOM but could not be parsed.
    """

    def __init__(self, items: Iterable[DicomSeries] = (), root: Path | None = None,
                 skipped: Sequence[tuple[Path, str]] = (), corrupt: Sequence[tuple[Path, str]] = ()) -> None:
        super().__init__(items)
        self.root = root
        self.skipped = list(skipped)
        self.corrupt = list(corrupt)


class _Skipped(Exception):
    """A file that is not a DICOM image (reason in the message)."""


class _Corrupt(Exception):
    """A file that starts like DICOM but cannot be parsed (reason in the message)."""


class _Unreadable(_Corrupt):
    """A file that may hold a slice but cannot be read (empty, no permission): never skipped silently."""


# --------------------------------------------------------------------------------------------- small helpers
def _floats(ds: pydicom.Dataset, keyword: str, count: int) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        values = np.asarray([float(v) for v in (value if isinstance(value, Iterable) else [value])], dtype=float)
    except (TypeError, ValueError):
        return None
    return values if values.shape == (count,) and np.all(np.isfinite(values)) else None


def _float(ds: pydicom.Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        result = float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return result if math.isfinite(result) else None


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    """An IS element as an int; None when absent or not a whole number (e.g. "1A", "7.5")."""
    value = _float(ds, keyword)
    return int(value) if value is not None and value.is_integer() else None


def _malformed(ds: pydicom.Dataset, keyword: str, value: float | int | None) -> bool:
    """True when ``keyword`` is present and not empty but ``value`` (its parsed form) is None: unparseable."""
    return value is None and ds.get(keyword) not in (None, "")


def _float_list(ds: pydicom.Dataset, keyword: str) -> list[float]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            pass
    return [v for v in out if math.isfinite(v)]


def _tag_name(keyword: str) -> str:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else keyword


def orientation_name(normal: np.ndarray, tolerance: float = 1e-3) -> str:
    """"axial", "coronal", "sagittal" (slice normal along z, y, x within ``tolerance``) or "oblique"."""
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 1.0 - tolerance:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _in_slicer_application() -> bool:
    """True inside the Slicer application, where MedDL starts no worker processes by itself (a child process
    there would be the application executable)."""
    slicer = sys.modules.get("slicer")
    return getattr(slicer, "app", None) is not None


def _parallel_map(func: Callable[[T], R], items: Sequence[T], workers: int | None, auto_min_items: int
                  ) -> Iterator[R]:
    """``func(x) for x in items``, in order, on a process pool of ``workers`` processes when that is more than one.

    ``workers=None`` chooses one process per core when the machine has more than two cores, there are at
    least ``auto_min_items`` items and this is not the Slicer application, else 1 (see
    :data:`PARALLEL_MIN_HEADER_FILES`). Serially, each result is made only when it is asked for.
    """
    if workers is None:
        cores = os.cpu_count() or 1
        workers = cores if cores > 2 and len(items) >= auto_min_items and not _in_slicer_application() else 1
    workers = max(1, min(int(workers), len(items)))
    if workers == 1:
        yield from (func(x) for x in items)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(func, items, chunksize=max(1, len(items) // (4 * workers)))


# --------------------------------------------------------------------------------------------- headers
#: Headers are parsed from the first bytes of a file read in one go (faster than many small reads); a header
#: longer than this is parsed from the file itself.
HEADER_CHUNK_BYTES = 64 * 1024


def _parse_header(f: BinaryIO, size: int) -> tuple[pydicom.Dataset, BinaryIO]:
    """Parse a header up to the pixel data; returns it and a stream positioned at the pixel data element."""
    head = f.read(HEADER_CHUNK_BYTES)
    stream = io.BytesIO(head)
    try:
        ds = pydicom.dcmread(stream, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))
        if len(head) == size or stream.tell() + 12 <= len(head):
            if ds.buffer is stream:
                ds.buffer = None  # the header keeps no copy of the chunk (64 KB a file, pickled with it otherwise)
            return ds, stream
    except InvalidDicomError:
        raise
    except Exception:
        if len(head) == size:  # the whole file was there: it is damaged
            raise
    f.seek(0)  # the header goes on past the chunk: parse it from the file
    return pydicom.dcmread(f, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS)), f


def _read_header(path: str | os.PathLike) -> DicomSlice:
    """Read the header of one DICOM image file and note where its pixel data starts.

    Raises:
        _Skipped: not a DICOM file, or a DICOM file that is not an image (report, not an error).
        _Corrupt: it starts like DICOM but cannot be parsed.
    """
    path = Path(path)
    try:
        # O_NONBLOCK: a named pipe given as a path must never block the open; only regular files are read.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise _Skipped("not a regular file (named pipe, socket or device): not read")
        if info.st_size == 0:
            os.close(fd)
            raise _Unreadable("empty file (0 bytes): a slice lost in copying?")
        with os.fdopen(fd, "rb") as f:
            size = info.st_size
            try:
                ds, stream = _parse_header(f, size)
            except InvalidDicomError:
                raise _Skipped("not a DICOM file (no DICM prefix)") from None
            except RecursionError:
                raise _Corrupt("corrupt DICOM header (sequences nested too deeply)") from None
            except Exception as exc:  # pydicom raises many kinds on damaged files
                raise _Corrupt(f"corrupt DICOM header ({type(exc).__name__}: {exc})") from None
            ts = UID(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
            ts_defect = None
            if not ts.is_transfer_syntax:
                ts_defect = (f"{path}: {_tag_name('TransferSyntaxUID')} is '{ts}', not a transfer syntax: how the "
                             "Pixel Data (7FE0,0010) is encoded is unknown")
                ts = UID("1.2.840.10008.1.2.1")  # parse on as pydicom did (its guess), never decode
            if ts == DeflatedExplicitVRLittleEndian and ds.buffer is not None:
                # pydicom inflated the data set into a buffer and stopped there at the pixel data
                stream, ds.buffer = ds.buffer, None  # (a header keeps no copy of the whole file)
                here = stream.tell()
                size = stream.seek(0, os.SEEK_END)
                stream.seek(here)
            element = stream.read(8)
            if "Rows" not in ds or "Columns" not in ds:
                sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
                if sop == MEDIA_STORAGE_DIRECTORY:
                    raise _Skipped("a DICOMDIR / media directory (Media Storage Directory Storage), not an image: "
                                   "the images are found by reading the folders")
                if not sop:
                    raise _Corrupt("corrupt DICOM: no SOPClassUID (0008,0016) and no image (damaged file?)")
                if "Image Storage" in UID(sop).name:
                    raise _Corrupt(f"corrupt DICOM: {UID(sop).name} without Rows/Columns (0028,0010/0011) "
                                   "(file truncated or damaged)")
                raise _Skipped(f"DICOM but not an image ({UID(sop).name})")
            if len(element) < 8:
                return DicomSlice(path, ds, defect=f"{path}: no Pixel Data (7FE0,0010) element")
            endian = "<" if ts.is_little_endian else ">"
            group, elem = struct.unpack(f"{endian}HH", element[:4])
            keyword = _PIXEL_TAGS.get((group, elem))
            if keyword is None:
                return DicomSlice(path, ds, defect=f"{path}: no Pixel Data (7FE0,0010) element")
            if ts.is_implicit_VR:
                vr, (length,) = None, struct.unpack(f"{endian}L", element[4:])
            else:
                vr = element[4:6].decode("ascii", "replace")
                (length,) = struct.unpack(f"{endian}L", stream.read(4))
            offset = stream.tell()
    except OSError as exc:
        raise _Unreadable(f"cannot be read ({exc.strerror or exc})") from None
    defect = ts_defect
    if defect:
        pass
    elif length != 0xFFFFFFFF and offset + length > size:
        defect = f"{path}: Pixel Data (7FE0,0010) is truncated ({size - offset} of {length} bytes present)"
    elif _malformed(ds, "NumberOfFrames", _int(ds, "NumberOfFrames")):
        defect = (f"{path}: {_tag_name('NumberOfFrames')} is '{_display(ds.get('NumberOfFrames'))}', not a whole "
                  "number: how many frames Pixel Data (7FE0,0010) holds is unknown")
    elif length != 0xFFFFFFFF and not ts.is_compressed and ts != DeflatedExplicitVRLittleEndian:
        defect = _native_length_defect(path, ds, keyword, length)
    if defect is None:
        defect = _header_defect(path, ds)
    return DicomSlice(path, ds, offset, keyword, vr, defect)


def _native_length_defect(path: Path, ds: pydicom.Dataset, keyword: str, length: int) -> str | None:
    """Why the length of native (uncompressed) greyscale pixel data does not match Rows x Columns x frames x
    BitsAllocated (a sentence naming the file and tags), or None when it matches. Trailing padding of up to one row
    is allowed (pydicom reads such files); more (BitsAllocated 8 or Rows 256 declared over 16-bit 512-row data), or
    less, is not. Colour data (SamplesPerPixel > 1, e.g. YBR_FULL_422 with its subsampled chroma) is not checked:
    MedDL does not read it."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.get("BitsAllocated") or 0)
        samples = int(ds.get("SamplesPerPixel") or 1)
        frames = _int(ds, "NumberOfFrames") or 1
    except (TypeError, ValueError, AttributeError):
        return f"{path}: Rows/Columns/BitsAllocated (0028,0010/0011/0100) are not whole numbers"
    if samples != 1:
        return None
    if keyword != "PixelData":
        bits = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}[keyword]
    if bits not in (1, 8, 16, 32, 64) or rows <= 0 or cols <= 0:
        return (f"{path}: Rows {rows}, Columns {cols}, BitsAllocated {bits} (0028,0010/0011/0100) describe no image "
                "(BitsAllocated must be 1, 8, 16, 32 or 64)")
    expected = (rows * cols * frames * samples * bits + 7) // 8
    row_bytes = max(1, (cols * bits + 7) // 8)
    if expected <= length <= expected + row_bytes:
        return None
    return (f"{path}: Pixel Data (7FE0,0010) holds {length} bytes but Rows x Columns x BitsAllocated "
            f"({rows} x {cols} x {bits} bits, {frames} frame(s), {samples} sample(s)) need {expected}: the header "
            "does not describe the pixel data")


#: Largest distance from the scanner's origin (mm) an ImagePositionPatient coordinate may have (10 m).
MAX_POSITION_MM = 1e4
#: Plausible pixel sizes (mm): PixelSpacing outside this range is refused (1 um to 1 m).
PIXEL_SPACING_RANGE_MM = (1e-3, 1e3)
#: Modalities whose volumes are measured (lung volumes, lesion sizes): read_series refuses them without a pixel size.
CROSS_SECTIONAL_MODALITIES = ("CT", "MR", "PT", "NM")
#: Largest magnitude a Modality LUT (rescale) may produce; beyond it the values are not a measurement.
MAX_RESCALED_VALUE = 1e12


def _header_defect(path: Path, ds: pydicom.Dataset) -> str | None:
    """Why the Modality LUT of ``ds`` cannot be applied (a sentence naming the file and tag), or None."""
    try:
        _modality_lut(ds)
    except DicomError as exc:
        return f"{path}: {exc}"
    return None


def _header_or_reason(path: Path) -> DicomSlice | tuple[Path, str, bool]:
    try:
        return _read_header(path)
    except _Skipped as exc:
        return (path, str(exc), False)
    except (_Corrupt, _Unreadable) as exc:
        return (path, str(exc), True)


def _list_files(root: Path, unreadable: list[tuple[Path, str]] | None = None) -> list[Path]:
    """The regular files under ``root`` (or ``root`` itself), hidden names skipped, in sorted order.

    Iterative (any depth, no RecursionError); symbolic links to folders are not followed; named pipes, sockets and
    devices are never listed (opening a pipe would block forever). Folders that cannot be listed and entries
    that are not regular files are appended to ``unreadable`` as (path, reason).
    """
    note = unreadable.append if unreadable is not None else (lambda item: None)
    if not root.is_dir():
        if root.is_file():
            return [root]
        note((root, "not a regular file (named pipe, socket or device): not read"))
        return []
    files: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            note((folder, f"folder cannot be read ({exc.strerror or exc})"))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(Path(entry.path))
                elif entry.is_file():  # a regular file (or a link to one)
                    files.append(Path(entry.path))
                elif entry.is_symlink() and (not os.path.exists(entry.path) or os.path.isdir(entry.path)):
                    continue  # a dangling link, or a link to a folder (not followed, as os.walk)
                else:
                    note((Path(entry.path), "not a regular file (named pipe, socket or device): not read"))
            except OSError as exc:
                note((Path(entry.path), f"cannot be read ({exc.strerror or exc})"))
        stack.extend(reversed(subfolders))  # depth first, in name order
    return files


# --------------------------------------------------------------------------------------------- grouping
def _cluster(values: Sequence[Any], tolerance: float) -> list[int]:
    """Cluster labels for numbers/vectors (None is its own value), equal within ``tolerance``."""
    reps: list[Any] = []
    labels = []
    for v in values:
        for idx, rep in enumerate(reps):
            if (v is None and rep is None) or (
                v is not None and rep is not None and np.max(np.abs(np.asarray(v) - np.asarray(rep))) <= tolerance
            ):
                labels.append(idx)
                break
        else:
            reps.append(v)
            labels.append(len(reps) - 1)
    return labels


def _display(value: Any) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


#: Keys that always split a SeriesInstanceUID: (label, what to compare, tolerance or None for exact).
_ALWAYS_SPLIT: tuple[tuple[str, Callable[[DicomSlice], Any], float | None], ...] = (
    ("series", lambda s: s.header.get("SeriesNumber"), None),
    ("frames", lambda s: s.path.name if s.frames > 1 else None, None),
    ("orientation", lambda s: s.orientation, ORIENTATION_TOLERANCE),
    ("size", lambda s: f"{s.header.get('Columns')}x{s.header.get('Rows')}", None),
    ("pixel_spacing", lambda s: _floats(s.header, "PixelSpacing", 2), ORIENTATION_TOLERANCE),
    ("photometric", lambda s: (s.header.get("PhotometricInterpretation"), s.header.get("SamplesPerPixel")), None),
    ("echo", lambda s: s.header.get("EchoNumbers"), None),
    ("echo_time", lambda s: _float(s.header, "EchoTime"), ORIENTATION_TOLERANCE),
)

#: Keys that split a group only where slices repeat a position.
_DUPLICATE_SPLIT: tuple[tuple[str, str], ...] = (
    ("acquisition", "AcquisitionNumber"),
    ("temporal_position", "TemporalPositionIdentifier"),
    ("trigger_time", "TriggerTime"),
    ("image_type", "ImageType"),
)

_LABEL_TAGS = {"series": "SeriesNumber", "orientation": "ImageOrientationPatient", "size": "Columns x Rows",
               "pixel_spacing": "PixelSpacing", "photometric": "PhotometricInterpretation",
               "echo": "EchoNumbers", "echo_time": "EchoTime", "frames": "NumberOfFrames",
               "acquisition": "AcquisitionNumber", "temporal_position": "TemporalPositionIdentifier",
               "trigger_time": "TriggerTime", "image_type": "ImageType", "copy": "repeated positions"}


def _split_by(group: list[DicomSlice], key: Callable[[DicomSlice], Any], tolerance: float | None,
              ) -> list[tuple[str, list[DicomSlice]]]:
    values = [key(s) for s in group]
    if tolerance is None:
        labels_idx = [_display(v) for v in values]
        order = list(dict.fromkeys(labels_idx))
        names = {lab: lab for lab in order}
    else:
        idx = _cluster(values, tolerance)
        order = list(dict.fromkeys(idx))
        labels_idx = idx
        first_value = {i: values[idx.index(i)] for i in order}
        names = {i: (_display(np.round(first_value[i], 4).tolist()) if first_value[i] is not None else "none")
                 for i in order}
        if any(isinstance(first_value[i], np.ndarray) and first_value[i].size > 1 for i in order):
            names = {i: str(n + 1) for n, i in enumerate(order)}  # vectors: number them
    buckets: dict[Any, list[DicomSlice]] = defaultdict(list)
    for s, lab in zip(group, labels_idx):
        buckets[lab].append(s)
    return [(str(names[lab]), buckets[lab]) for lab in order]


def _slice_key(s: DicomSlice, normal: np.ndarray | None) -> float | None:
    """Position along the normal (or SliceLocation) used to spot repeated positions."""
    pos = s.position
    if pos is not None and normal is not None:
        if np.max(np.abs(pos)) > MAX_POSITION_MM:  # no position (set aside by _layout): repeats nothing
            return None
        return float(np.dot(pos, normal))
    return _float(s.header, "SliceLocation")


def _has_duplicates(group: list[DicomSlice]) -> bool:
    normal = _normal(group[0])
    keys = [_slice_key(s, normal) for s in group]
    if any(k is None for k in keys) or len(keys) < 2:
        return False
    ordered = np.sort(np.asarray(keys))
    return bool(np.any(np.diff(ordered) < SAME_POSITION_MM))


def _normal(s: DicomSlice) -> np.ndarray | None:
    iop = s.orientation
    if iop is None:
        return None
    n = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


def _split_series(group: list[DicomSlice]) -> list[tuple[list[str], list[DicomSlice]]]:
    """Split one SeriesInstanceUID's slices into volumes; returns (labels, slices) per volume."""
    parts: list[tuple[list[str], list[DicomSlice]]] = [([], group)]
    for label, key, tol in _ALWAYS_SPLIT:
        new_parts = []
        for labels, part in parts:
            pieces = _split_by(part, key, tol)
            if len(pieces) == 1:
                new_parts.append((labels, part))
            else:
                new_parts.extend((labels + [f"{label}={name}"], piece) for name, piece in pieces)
        parts = new_parts
    result: list[tuple[list[str], list[DicomSlice]]] = []
    pending = parts
    for label, keyword in _DUPLICATE_SPLIT:
        next_pending = []
        for labels, part in pending:
            if not _has_duplicates(part):
                result.append((labels, part))
                continue
            pieces = _split_by(part, lambda s, kw=keyword: s.header.get(kw), None)
            if len(pieces) == 1:
                next_pending.append((labels, part))
            else:
                next_pending.extend((labels + [f"{label}={name}"], piece) for name, piece in pieces)
        pending = next_pending
    for labels, part in pending:
        if not _has_duplicates(part):
            result.append((labels, part))
            continue
        # nothing tells the repeated slices apart: the n-th file at each position goes to volume n
        normal = _normal(part[0])
        seen: Counter = Counter()
        copies: dict[int, list[DicomSlice]] = defaultdict(list)
        for s in sorted(part, key=lambda s: (s.instance_number, str(s.path))):
            key = round((_slice_key(s, normal) or 0.0) / SAME_POSITION_MM)
            copies[seen[key]].append(s)
            seen[key] += 1
        result.extend((labels + [f"copy={n + 1}"], copies[n]) for n in sorted(copies))
    return result


# --------------------------------------------------------------------------------------------- layout
def _spacing_defect(first: pydicom.Dataset) -> str | None:
    """Why the PixelSpacing / ImagerPixelSpacing present in ``first`` are no pixel size (two numbers within
    :data:`PIXEL_SPACING_RANGE_MM`), or None (one of them valid, or both absent)."""
    low, high = PIXEL_SPACING_RANGE_MM
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):  # a valid one is used (see _pixel_spacing)
        values = _floats(first, keyword, 2)
        if values is not None and np.all(values >= low) and np.all(values <= high):
            return None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if first.get(keyword) in (None, ""):
            continue
        raw = first.get(keyword)
        try:
            values = [float(v) for v in (raw if isinstance(raw, Iterable) and not isinstance(raw, str) else [raw])]
        except (TypeError, ValueError):
            values = []
        if values and all(v == 0 for v in values):
            continue  # 0\\0: the placeholder of files whose pixel size is unknown (treated as absent)
        if len(values) != 2 or not all(math.isfinite(v) and low <= v <= high for v in values):
            return (f"{_tag_name(keyword)} is '{_display(raw)}': expected two pixel sizes between {low:g} and "
                    f"{high:g} mm; the size of the image in the patient is unknown")
    return None


def _pixel_spacing(first: pydicom.Dataset, warnings: list[str]) -> tuple[float, float]:
    """(i, j) pixel size in mm from PixelSpacing (row spacing, column spacing), with fallbacks."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _floats(first, keyword, 2)
        if values is not None and np.all(values >= PIXEL_SPACING_RANGE_MM[0]) and np.all(
                values <= PIXEL_SPACING_RANGE_MM[1]):
            if keyword != "PixelSpacing":
                warnings.append(f"pixel size {values[1]:g} x {values[0]:g} mm from {_tag_name(keyword)} "
                                "(no valid PixelSpacing (0028,0030)): size at the detector, not in the patient")
            return float(values[1]), float(values[0])
    warnings.append("no valid PixelSpacing (0028,0030) or ImagerPixelSpacing (0018,1164): pixels taken as 1 mm")
    return 1.0, 1.0


def _single_slice_spacing(first: pydicom.Dataset, warnings: list[str]) -> tuple[float, str]:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _float(first, keyword)
        if value is not None and value > 0:
            warnings.append(f"one slice: slice spacing {value:g} mm taken from {_tag_name(keyword)}")
            return value, keyword
    warnings.append("one slice and no SpacingBetweenSlices (0018,0088) or SliceThickness (0018,0050): "
                    "slice spacing taken as 1 mm")
    return 1.0, "default"


def _regular_step(offsets: np.ndarray) -> float:
    """Slice step of the regular grid an uneven stack is resampled onto: the most common gap (0.01 mm
    bins); when no gap repeats, the smallest."""
    gaps = np.diff(offsets)
    counts = Counter(np.round(gaps, 2).tolist())
    value, count = counts.most_common(1)[0]
    step = float(value) if count > 1 else float(gaps.min())
    n = max(2, int(round((offsets[-1] - offsets[0]) / step)) + 1)
    return float((offsets[-1] - offsets[0]) / (n - 1))


def _orientation_defect(s: DicomSlice) -> str | None:
    """Why the ImageOrientationPatient of ``s`` is no orientation (a sentence naming the file), or None: its row
    and column direction cosines must be unit vectors and orthogonal, within :data:`ORIENTATION_TOLERANCE`."""
    iop = s.orientation
    if iop is None:
        return None
    lengths = np.linalg.norm(iop[:3]), np.linalg.norm(iop[3:])
    dot = float(np.dot(iop[:3], iop[3:]))
    if max(abs(v - 1.0) for v in lengths) <= ORIENTATION_TOLERANCE and abs(dot) <= ORIENTATION_TOLERANCE:
        return None
    return (f"{s.path}: {_tag_name('ImageOrientationPatient')} = {_display(s.header.get('ImageOrientationPatient'))} "
            f"is not an orientation: the row and column direction cosines must be unit length and orthogonal "
            f"(within {ORIENTATION_TOLERANCE:g}), they have lengths {lengths[0]:.4g} and {lengths[1]:.4g} and dot "
            f"product {dot:.4g}; the slice geometry is unknown")


def _layout(slices: list[DicomSlice], problems: list[str], warnings: list[str]) -> tuple[list[DicomSlice], StackLayout]:
    """Sort ``slices`` along the normal and describe where they are; appends problems/warnings.

    Before that, checks what makes a geometry untrustworthy (a PixelSpacing that is no pixel size, positions
    light years away) and sets aside slices whose ImagePositionPatient lies far off the others (see
    :func:`_drop_position_outliers`); the returned slices are those stacked.
    """
    first = slices[0].header
    spacing_known = any(_floats(first, k, 2) is not None and np.all(_floats(first, k, 2) > 0)
                        for k in ("PixelSpacing", "ImagerPixelSpacing"))
    spacing_defect = _spacing_defect(first)
    if spacing_defect:
        problems.append(f"{slices[0].path}: {spacing_defect}")
    elif not spacing_known:
        problems.append("no PixelSpacing (0028,0030) nor ImagerPixelSpacing (0018,1164): the pixel size is unknown "
                        "(1 mm assumed when converting; volumes and distances measured on it are wrong)")
    kept, dropped = _drop_position_outliers(slices)
    for path, text in dropped:
        problems.append(f"{path}: {text}: set aside, not stacked")
        warnings.append(f"{path}: {text}: set aside, not stacked")
    position_defect = None
    if not kept:
        position_defect = (f"{_tag_name('ImagePositionPatient')} of every file lies more than {MAX_POSITION_MM:g} "
                           "mm from the scanner's origin: the slice geometry is unknown")
        problems.append(position_defect)
        kept = slices[:1]
    ordered, layout = _layout_stack(kept, problems, warnings)
    layout.pixel_spacing_known = spacing_known
    if spacing_defect:
        layout.geometry_defect = f"{slices[0].path}: {spacing_defect}"
    elif position_defect:
        layout.geometry_defect = position_defect
    return ordered, layout


def _drop_position_outliers(slices: list[DicomSlice]) -> tuple[list[DicomSlice], list[tuple[Path, str]]]:
    """The slices to stack, and (path, reason) of those set aside: an ImagePositionPatient coordinate beyond
    :data:`MAX_POSITION_MM`, or (3 slices or more) an end slice whose gap to its neighbour along the normal is
    more than 10 times the span of all the others and over 100 mm (one damaged position would otherwise stretch
    the volume to kilometres of interpolated slices)."""
    dropped: list[tuple[Path, str]] = []
    kept = []
    for s in slices:
        pos = s.position
        if pos is not None and np.max(np.abs(pos)) > MAX_POSITION_MM:
            value = _display(s.header.get("ImagePositionPatient"))
            dropped.append((s.path, f"{_tag_name('ImagePositionPatient')} {value} lies more than "
                                    f"{MAX_POSITION_MM:g} mm from the scanner's origin"))
        else:
            kept.append(s)
    if not kept:
        return [], dropped
    normal = _normal(kept[0])
    if normal is None or len(kept) < 3 or any(s.position is None for s in kept):
        return kept, dropped
    while len(kept) >= 3:
        dist = np.array([float(s.position @ normal) for s in kept])
        order = np.argsort(dist, kind="stable")
        d = dist[order]
        candidates = [(d[1] - d[0], order[0], d[-1] - d[1]), (d[-1] - d[-2], order[-1], d[-2] - d[0])]
        gap, index, rest = max(candidates, key=lambda c: c[0])
        if gap > max(100.0, 10.0 * rest):
            s = kept.pop(int(index))
            dropped.append((s.path, f"{_tag_name('ImagePositionPatient')} puts this slice {gap:.4g} mm from the "
                                    f"others (which span {rest:.4g} mm)"))
        else:
            break
    return kept, dropped


def _layout_stack(slices: list[DicomSlice], problems: list[str], warnings: list[str]
                  ) -> tuple[list[DicomSlice], StackLayout]:
    """Sort ``slices`` along the normal and describe where they are (see :func:`_layout`)."""
    first = slices[0].header
    iop = slices[0].orientation
    defect = _orientation_defect(slices[0])
    if iop is None:
        warnings.append("no ImageOrientationPatient (0020,0037): rows taken along L (x), columns along P (y)")
    if iop is None or defect:
        iop = np.array([1.0, 0, 0, 0, 1.0, 0])
    r = iop[:3] / np.linalg.norm(iop[:3])
    c = iop[3:] / np.linalg.norm(iop[3:])
    n = np.cross(r, c)
    n /= np.linalg.norm(n)
    sx, sy = _pixel_spacing(first, warnings)
    positions = [s.position for s in slices]
    nslices = len(slices)
    if defect:  # no normal to sort along, no direction for the geometry
        problems.append(defect)
        dummy = np.zeros((nslices, 3))
        return slices, StackLayout(r, c, n, (sx, sy), dummy, np.zeros(nslices), np.zeros((nslices, 2)), 1.0,
                                   "default", order_known=False)
    if nslices == 1:
        pos = positions[0]
        if pos is None:
            warnings.append("no ImagePositionPatient (0020,0032): origin taken as (0, 0, 0)")
            pos = np.zeros(3)
        spacing, source = _single_slice_spacing(first, warnings)
        return slices, StackLayout(r, c, n, (sx, sy), pos[None, :], np.zeros(1), np.zeros((1, 2)), spacing, source)

    if any(p is None for p in positions):
        locations = [_float(s.header, "SliceLocation") for s in slices]
        missing = sum(p is None for p in positions)
        if any(v is None for v in locations):
            problems.append(
                f"no ImagePositionPatient (0020,0032) in {missing} of {nslices} files (e.g. "
                f"{slices[positions.index(None)].path.name}) and no SliceLocation (0020,1041) to fall back on: "
                "the slice order is unknown"
            )
            dummy = np.zeros((nslices, 3))
            return slices, StackLayout(r, c, n, (sx, sy), dummy, np.zeros(nslices), np.zeros((nslices, 2)),
                                       1.0, "default", order_known=False)
        warnings.append(
            f"no ImagePositionPatient (0020,0032) in {missing} of {nslices} files: slices ordered and spaced by "
            "SliceLocation (0020,1041); the volume's position in the patient is unknown"
        )
        problems.append(f"ImagePositionPatient (0020,0032) missing in {missing} of {nslices} files")
        pos_array = np.asarray(locations, dtype=float)[:, None] * n
        source = "SliceLocation"
    else:
        pos_array = np.asarray(positions, dtype=float)
        source = "ImagePositionPatient"

    dist = pos_array @ n
    order = np.argsort(dist, kind="stable")
    slices = [slices[i] for i in order]
    pos_array = pos_array[order]
    offsets = dist[order] - dist[order][0]
    rel = pos_array - pos_array[0]
    inplane = np.stack([rel @ r, rel @ c], axis=1)
    span = offsets[-1]
    spacing = float(span / (nslices - 1)) if span > 0 else 0.0
    layout = StackLayout(r, c, n, (sx, sy), pos_array, offsets, inplane, spacing, source)
    if spacing <= 0:
        problems.append("all slices are at the same position")
        layout.order_known = False
        return slices, layout

    # Gantry tilt: slices shifted in-plane as they go (a sheared stack).
    inplane_tol = max(INPLANE_TOLERANCE_MM, 0.01 * min(sx, sy))
    shift = np.linalg.norm(inplane, axis=1)
    if shift.max() > inplane_tol:
        layout.tilted = True
        slope = (inplane.T @ offsets) / float(offsets @ offsets)  # in-plane mm per mm along the normal
        residual = np.linalg.norm(inplane - offsets[:, None] * slope[None, :], axis=1).max()
        layout.tilt_deg = float(np.degrees(np.arctan(np.linalg.norm(slope))))
        tag = _float(first, "GantryDetectorTilt")
        tag_text = f"; GantryDetectorTilt (0018,1120) says {tag:g} deg" if tag is not None else ""
        if residual <= inplane_tol:
            problems.append(
                f"gantry tilt: the slices are sheared by {layout.tilt_deg:.2f} deg (each slice shifted "
                f"in-plane along the stack, {shift.max():.2f} mm in all{tag_text}); not a rectangular grid"
            )
        else:
            problems.append(
                f"slice positions are not on a line: slices are shifted in-plane by up to {shift.max():.2f} mm "
                f"in no regular pattern{tag_text}"
            )
    else:
        tag = _float(first, "GantryDetectorTilt")
        if tag is not None and abs(tag) > 0.01:
            warnings.append(f"GantryDetectorTilt (0018,1120) is {tag:g} deg but the slices are not sheared: the "
                            "geometry of ImageOrientationPatient/ImagePositionPatient is used as it is")
    # Uneven gaps: slices off the regular grid.
    gap_tol = max(GAP_TOLERANCE_MM, 0.01 * spacing)
    regular = np.arange(nslices) * spacing
    if np.abs(offsets - regular).max() > gap_tol:
        layout.uneven = True
        gaps = np.diff(offsets)
        step = _regular_step(offsets)
        text = f"uneven slice gaps: {gaps.min():.3f} to {gaps.max():.3f} mm along the slice normal"
        big = np.flatnonzero(gaps > 1.5 * step)
        if len(big):
            text += (f"; a gap of {gaps[big[0]]:.3f} mm after slice {big[0] + 1} of {nslices} where "
                     f"{step:.3f} mm is usual (missing slices?)")
        problems.append(text)
    return slices, layout


# --------------------------------------------------------------------------------------------- series
def _series_metadata(series_uid: str, slices: list[DicomSlice]) -> dict[str, Any]:
    first = slices[0].header
    return {
        "modality": str(first.get("Modality") or ""),
        "series_description": str(first.get("SeriesDescription") or ""),
        "series_number": _int(first, "SeriesNumber"),  # None when absent or malformed
        "window_center": _float_list(first, "WindowCenter"),
        "window_width": _float_list(first, "WindowWidth"),
        "patient_id": str(first.get("PatientID") or ""),
        "study_uid": str(first.get("StudyInstanceUID") or ""),
        "series_uid": series_uid,
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID") or ""),
        "files": [str(s.path) for s in slices],
        "instance_uids": [str(s.header.get("SOPInstanceUID") or "") for s in slices],
    }


def _drop_copies(slices: list[DicomSlice]) -> tuple[list[DicomSlice], dict[Path, list[Path]]]:
    """Drop the files that repeat an earlier file's SOPInstanceUID with the same header (copies of one image).

    Returns:
        (the slices kept, in their order; the copies dropped, by the path of the file kept).
    """
    kept: list[DicomSlice] = []
    first: dict[str, DicomSlice] = {}
    copies: dict[Path, list[Path]] = defaultdict(list)
    for s in slices:
        uid = str(s.header.get("SOPInstanceUID") or "")
        original = first.get(uid) if uid else None
        if original is not None and original.header == s.header:
            copies[original.path].append(s.path)
            continue
        first.setdefault(uid, s)
        kept.append(s)
    return kept, copies


def _make_series(series_uid: str, labels: list[str], slices: list[DicomSlice], n_parts: int,
                 copies: dict[Path, list[Path]] | None = None) -> DicomSeries:
    problems: list[str] = []
    warnings: list[str] = []
    dropped = [(copy, s.path) for s in slices for copy in (copies or {}).get(s.path, ())]
    warnings.extend(f"{copy} is a copy of {original} (same SOPInstanceUID (0008,0018) and header): dropped"
                    for copy, original in dropped[:3])
    if len(dropped) > 3:
        warnings.append(f"... and {len(dropped) - 3} more copies of files of this series dropped")
    if not series_uid:
        problems.append("no SeriesInstanceUID (0020,000E): files grouped by their other tags only")
    if n_parts > 1:
        keys = sorted({lab.split("=")[0] for lab in labels})
        what = ", ".join(_LABEL_TAGS.get(k, k) for k in keys)
        problems.append(
            f"SeriesInstanceUID {series_uid} holds {n_parts} volumes that differ in {what}; "
            f"this one is {', '.join(labels)} (read separately, never stacked)"
        )
        if "copy" in keys:
            problems.append("repeated slice positions that no tag tells apart: split by order of InstanceNumber")
    defects = [s.defect for s in slices if s.defect]
    problems.extend(defects[:3])
    if len(defects) > 3:
        problems.append(f"... and {len(defects) - 3} more files with unreadable pixel data")
    frames = slices[0].frames
    if frames > 1:
        problems.append(f"{slices[0].path}: multi-frame image (NumberOfFrames (0028,0008) = {frames}); "
                        "MedDL reads single-frame series only")
    samples = int(slices[0].header.get("SamplesPerPixel") or 1)
    if samples != 1:
        problems.append(f"{slices[0].path}: colour image (SamplesPerPixel (0028,0002) = {samples}); "
                        "MedDL reads greyscale series only")
    if _malformed(slices[0].header, "SeriesNumber", _int(slices[0].header, "SeriesNumber")):
        warnings.append(f"{slices[0].path}: {_tag_name('SeriesNumber')} is "
                        f"'{_display(slices[0].header.get('SeriesNumber'))}', not a whole number: ignored")
    if "MOSAIC" in [str(v).upper() for v in (slices[0].header.get("ImageType") or [])]:
        warnings.append("Siemens mosaic (ImageType MOSAIC): each file holds many slices as tiles of one image; "
                        "it is read as that 2D tile image, not split into slices")
    sorted_slices, layout = _layout(slices, problems, warnings)
    uid = series_uid + ("#" + ",".join(labels) if labels and n_parts > 1 else "")
    return DicomSeries(
        uid=uid,
        series_uid=series_uid,
        files=[s.path for s in sorted_slices],
        metadata=_series_metadata(series_uid, sorted_slices),
        problems=problems,
        warnings=warnings,
        slices=sorted_slices,
        layout=layout,
    )


def find_series(root: str | os.PathLike, workers: int | None = None) -> SeriesList:
    """Find every DICOM image series under ``root`` (a folder tree, or one file).

    Args:
        root: folder searched recursively (hidden files skipped), or a single file.
        workers: processes parsing headers (None: automatic, see :data:`PARALLEL_MIN_HEADER_FILES`).

    Returns:
        a :class:`SeriesList` of :class:`DicomSeries` (one per volume, sorted by patient, study, series
        number, uid) with ``.skipped`` (path, reason) for files that are not DICOM images.

    Raises:
        DicomError: ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise DicomError(f"{root}: no such file or folder")
    not_listed: list[tuple[Path, str]] = []
    paths = _list_files(root, not_listed)
    results: list[Any] = [(path, reason, reason.startswith(("folder cannot", "cannot be read")))
                          for path, reason in not_listed]
    results += list(_parallel_map(_header_or_reason, paths, workers, PARALLEL_MIN_HEADER_FILES))
    slices, copies = _drop_copies([r for r in results if isinstance(r, DicomSlice)])
    skipped = [(r[0], r[1]) for r in results if not isinstance(r, DicomSlice)]
    corrupt = [(r[0], r[1]) for r in results if not isinstance(r, DicomSlice) and r[2]]
    groups: dict[str, list[DicomSlice]] = defaultdict(list)
    for s in slices:
        groups[str(s.header.get("SeriesInstanceUID") or "")].append(s)
    series = []
    for series_uid, members in groups.items():
        parts = _split_series(members)
        series.extend(_make_series(series_uid, labels, part, len(parts), copies) for labels, part in parts)
    series.sort(key=lambda s: (s.metadata["patient_id"], s.metadata["study_uid"],
                               s.metadata["series_number"] if s.metadata["series_number"] is not None else -1,
                               s.uid))
    return SeriesList(series, root=root, skipped=skipped, corrupt=corrupt)


# --------------------------------------------------------------------------------------------- pixels
def _decode(s: DicomSlice) -> np.ndarray:
    """Stored pixel values of one file as a native-endian 2D array (BitsStored masking and sign done)."""
    if s.defect:
        raise DicomError(s.defect)
    ts = s.transfer_syntax
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DicomError(f"{s.path}: transfer syntax {ts.name} ({ts}) of Pixel Data (7FE0,0010) is not supported "
                         "by pydicom") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a pydicom decoding plugin"
        raise DicomError(f"{s.path}: Pixel Data (7FE0,0010) is compressed as {ts.name} ({ts}) and no decoder "
                         f"for it is installed (install {missing})")
    options = as_pixel_options(s.header, transfer_syntax_uid=ts, pixel_keyword=s.pixel_keyword)
    if s.pixel_vr:
        options["pixel_vr"] = s.pixel_vr
    try:
        if ts == DeflatedExplicitVRLittleEndian:  # the offset is in the inflated data set: let pydicom inflate it
            array, _ = decoder.as_array(pydicom.dcmread(s.path)[s.pixel_keyword].value, **options)
        else:
            with open(s.path, "rb") as f:
                f.seek(s.pixel_offset or 0)
                array, _ = decoder.as_array(f, **options)
    except DicomError:
        raise
    except Exception as exc:
        raise DicomError(f"{s.path}: cannot decode {s.pixel_keyword or 'Pixel Data'} (7FE0,0010) "
                         f"({ts.name}): {exc}") from None
    if array.ndim != 2:
        raise DicomError(f"{s.path}: expected one greyscale frame, got pixel array of shape {array.shape}")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    return array


@dataclasses.dataclass(frozen=True)
class _ModalityLut:
    """How one file's stored values become output values (and their possible range)."""

    kind: str  # "none", "rescale" or "lut"
    slope: float = 1.0
    intercept: float = 0.0
    low: float = 0.0  # range of possible output values
    high: float = 0.0
    integer: bool = True
    stored_low: int = 0  # range of possible stored values
    stored_high: int = 0


def _stored_range(ds: pydicom.Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0):
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _modality_lut(ds: pydicom.Dataset, warnings: list[str] | None = None) -> _ModalityLut:
    lo, hi = _stored_range(ds)
    if "ModalityLUTSequence" in ds:
        depth = _lut_sequence_depth(ds)
        return _ModalityLut("lut", low=0, high=2**depth - 1, stored_low=lo, stored_high=hi)
    slope = _float(ds, "RescaleSlope")
    intercept = _float(ds, "RescaleIntercept")
    said: list[str] = []
    for keyword, value, default in (("RescaleSlope", slope, "slope taken as 1"),
                                    ("RescaleIntercept", intercept, "intercept taken as 0")):
        if _malformed(ds, keyword, value):
            said.append(f"{_tag_name(keyword)} is '{_display(ds.get(keyword))}', not a number: {default}")
    if slope is None and intercept is None:
        if warnings is not None:
            warnings.extend(said)
        return _ModalityLut("none", low=lo, high=hi, stored_low=lo, stored_high=hi)
    if slope is None:
        said = said or ["RescaleIntercept (0028,1052) without RescaleSlope (0028,1053): slope taken as 1"]
        slope = 1.0
    if intercept is None:
        said = said or ["RescaleSlope (0028,1053) without RescaleIntercept (0028,1052): intercept taken as 0"]
        intercept = 0.0
    if warnings is not None:
        warnings.extend(said)
    if slope == 0:
        raise DicomError("RescaleSlope (0028,1053) is 0")
    ends = sorted((lo * slope + intercept, hi * slope + intercept))
    if max(abs(ends[0]), abs(ends[1])) > MAX_RESCALED_VALUE:
        raise DicomError(
            f"RescaleSlope (0028,1053) {slope:g} and RescaleIntercept (0028,1052) {intercept:g} map the stored values "
            f"{lo}..{hi} to {ends[0]:.3g}..{ends[1]:.3g}, beyond +-{MAX_RESCALED_VALUE:g}: not a measurement "
            "(damaged header?)")
    integer = float(slope).is_integer() and float(intercept).is_integer()
    return _ModalityLut("rescale", slope, intercept, ends[0], ends[1], integer, lo, hi)


def _lut_sequence_depth(ds: pydicom.Dataset) -> int:
    """Bits of the output of the Modality LUT Sequence (0028,3000) of ``ds``, after checking the sequence can be
    applied: one item with a LUTDescriptor (0028,3002) of 3 numbers and LUTData (0028,3006) of the length it says.

    Raises:
        DicomError: naming the element that is missing or inconsistent.
    """
    seq = ds.get("ModalityLUTSequence")
    what = "ModalityLUTSequence (0028,3000)"
    if not seq:
        raise DicomError(f"{what} is empty: no Modality LUT to turn stored values into output values")
    item = seq[0]
    descriptor = item.get("LUTDescriptor")
    try:
        entries, first, depth = (int(v) for v in descriptor)
    except (TypeError, ValueError):
        raise DicomError(f"{what}: LUTDescriptor (0028,3002) is '{_display(descriptor)}', not 3 numbers") from None
    entries = entries or 65536
    if not 1 <= depth <= 16:
        raise DicomError(f"{what}: LUTDescriptor (0028,3002) gives {depth} bits per entry (1..16 allowed)")
    data = item.get("LUTData")
    if data is None or data == b"" or data == []:
        raise DicomError(f"{what}: no LUTData (0028,3006)")
    count = len(data) // 2 if isinstance(data, bytes) else (len(data) if isinstance(data, Sequence) or hasattr(
        data, "__len__") else 1)
    if count != entries:
        raise DicomError(f"{what}: LUTData (0028,3006) holds {count} entries where LUTDescriptor (0028,3002) "
                         f"says {entries}")
    return depth


def has_bad_intercept(ds: pydicom.Dataset) -> bool:
    """True for the RSNA 2019 head CT files whose 12-bit unsigned data carry a wrong RescaleIntercept.

    Condition (as used by the competition's top solutions): CT, BitsStored 12, PixelRepresentation 0 and
    RescaleIntercept > -100 HU (air would read as a positive HU value).
    """
    try:
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        bits, signed = int(ds.get("BitsStored") or 0), int(ds.get("PixelRepresentation") or 0)
    except (TypeError, ValueError):
        return False
    return str(ds.get("Modality") or "CT") == "CT" and bits == 12 and signed == 0 and intercept > -100


def fix_bad_intercept(stored: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, float]:
    """Stored values and intercept after the RSNA bad-intercept fix (unchanged when :func:`has_bad_intercept` is False).

    The fix: add 1000 to the stored values, wrap values >= 4096 (subtract 4096), use intercept -1000 HU.

    Args:
        stored: raw stored pixel values of one file (any integer shape).
        ds: its header.
    Returns:
        ``(stored_values, intercept)`` with ``HU = stored_values * RescaleSlope + intercept``.
    """
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if not has_bad_intercept(ds):
        return stored, intercept
    fixed = np.asarray(stored, dtype=np.int32) + 1000
    fixed[fixed >= 4096] -= 4096
    return fixed, -1000.0


_fix_bad_intercept = fix_bad_intercept  # read_series' argument of the same name hides the function


def _fixed_lut(ds: pydicom.Dataset) -> _ModalityLut:
    """The Modality LUT of a bad-intercept file after :func:`fix_bad_intercept` (stored 0..4095, intercept -1000)."""
    slope = _float(ds, "RescaleSlope") or 1.0
    ends = sorted((-1000.0, 4095 * slope - 1000.0))
    return _ModalityLut("rescale", slope, -1000.0, ends[0], ends[1], float(slope).is_integer(), 0, 4095)


def _output_dtype(luts: Sequence[_ModalityLut], raw_dtype: np.dtype) -> np.dtype:
    """The output type of a series: one that holds every value the Modality LUT of every file can produce (files
    may differ in BitsAllocated, BitsStored, PixelRepresentation and rescale). ``raw_dtype``: the first file's
    decoded type, kept for series without Modality LUT when it holds them all."""
    if not all(m.integer for m in luts):
        return np.dtype(np.float32)
    lo = min(m.low for m in luts)
    hi = max(m.high for m in luts)
    if all(m.kind == "none" for m in luts):
        if not np.issubdtype(raw_dtype, np.integer) or _fits(np.dtype(raw_dtype), lo, hi, 1):
            return np.dtype(raw_dtype)  # float pixel data, or the stored type when every file's values fit it
    for dtype in (np.uint8, np.uint16) if lo >= 0 else (np.int16,):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int32 if np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max else np.float64)


def _physical_units(ds: pydicom.Dataset) -> bool:
    """True when the Modality LUT output has physical units (CT HU, PET), which are never inverted."""
    rescale_type = str(ds.get("RescaleType") or "").strip().upper()
    return str(ds.get("Modality") or "") in ("CT", "PT") or rescale_type not in ("", "US")


def _inversion_total(ds: pydicom.Dataset) -> float | None:
    """``v_min + v_max`` when read_series inverts this MONOCHROME1 file (``v' = total - v``), else None."""
    if str(ds.get("PhotometricInterpretation") or "") != "MONOCHROME1" or _physical_units(ds):
        return None
    lut = _modality_lut(ds)
    return lut.low + lut.high


def _to_output(raw: np.ndarray, s: DicomSlice, lut: _ModalityLut, out: np.ndarray) -> None:
    """Write ``raw`` (stored values) of slice ``s`` through its Modality LUT (and inversion) into ``out``.

    Never casts unsafely: a value that does not fit ``out``'s type raises :class:`DicomError` naming the file.
    """
    if lut.kind == "lut":
        values = apply_modality_lut(raw, s.header)
    elif lut.kind == "rescale":
        if (lut.integer and _fits(out.dtype, lut.stored_low, lut.stored_high, lut.slope)
                and _within(raw, lut.stored_low, lut.stored_high)):
            out[...] = raw  # in place in the output type: every intermediate value fits it
            if lut.slope != 1:
                out *= int(lut.slope)
            if lut.intercept != 0:
                out += int(lut.intercept)
            values = None
        elif lut.integer:
            values = raw.astype(np.int64) * int(lut.slope) + int(lut.intercept)
        else:
            values = raw.astype(np.float64) * lut.slope + lut.intercept
    else:
        values = raw
    total = _inversion_total(s.header)
    if values is None:
        values = out
    if total is not None:
        values = (int(total) if float(total).is_integer() else total) - values.astype(
            np.int64 if np.issubdtype(values.dtype, np.integer) else np.float64)
    if values is not out:
        if np.issubdtype(out.dtype, np.integer) and not np.can_cast(values.dtype, out.dtype):
            info = np.iinfo(out.dtype)
            if not _within(values, info.min, info.max):
                raise DicomError(
                    f"{s.path}: values {values.min()}..{values.max()} do not fit {out.dtype}, the output type of "
                    "the series (chosen from every file's BitsStored (0028,0101), PixelRepresentation (0028,0103) "
                    "and Modality LUT): the pixel data holds values its header does not allow"
                )
        out[...] = values


def _within(values: np.ndarray, low: float, high: float) -> bool:
    """True when every value lies in low..high (looked at only where the array's type allows other values)."""
    if np.issubdtype(values.dtype, np.integer):
        info = np.iinfo(values.dtype)
        if low <= info.min and info.max <= high:
            return True
    return values.size == 0 or bool(low <= values.min() and values.max() <= high)


def _fits(dtype: np.dtype, low: int, high: int, slope: float) -> bool:
    """True when stored values low..high, and those times ``slope``, fit the integer ``dtype``."""
    if not np.issubdtype(dtype, np.integer):
        return False
    info = np.iinfo(dtype)
    ends = (low, high, low * slope, high * slope)
    return info.min <= min(ends) and max(ends) <= info.max


# --------------------------------------------------------------------------------------------- resampling
def _resampled_slices(layout: StackLayout) -> int:
    """How many slices :func:`_resample_regular` makes of ``layout``."""
    offsets = layout.offsets_mm
    step = _regular_step(offsets) if layout.uneven else float(offsets[-1] / (len(offsets) - 1))
    return int(round(offsets[-1] / step)) + 1


def _resample_regular(stack: np.ndarray, layout: StackLayout, fill: float) -> tuple[np.ndarray, float]:
    """Resample a tilted and/or unevenly spaced stack onto the orthogonal grid (row, column, normal axes)
    through the first slice: linear along the normal, bilinear in-plane shift per slice (SimpleITK). A target
    pixel whose source lies more than half a pixel outside a slice gets ``fill`` (within half a pixel, ITK's
    linear interpolator takes the edge pixel).

    Returns:
        (float32 array [k, j, i], slice spacing in mm).
    """
    import SimpleITK as sitk

    offsets = layout.offsets_mm
    step = _regular_step(offsets) if layout.uneven else float(offsets[-1] / (len(offsets) - 1))
    n_out = int(round(offsets[-1] / step)) + 1
    targets = np.arange(n_out) * step
    sx, sy = layout.pixel_spacing_mm
    # Where the target grid's pixel (i, j) falls in source slice s: (i + di[s], j + dj[s]).
    di = -layout.inplane_mm[:, 0] / sx
    dj = -layout.inplane_mm[:, 1] / sy
    cache: dict[int, np.ndarray] = {}

    def in_plane(s: int) -> np.ndarray:
        if s not in cache:
            src = stack[s].astype(np.float32)
            if abs(di[s]) < 1e-6 and abs(dj[s]) < 1e-6:
                cache[s] = src
            else:  # bilinear: output pixel (i, j) <- input at (i + di, j + dj)
                image = sitk.GetImageFromArray(src)
                shift = sitk.TranslationTransform(2, (float(di[s]), float(dj[s])))
                moved = sitk.Resample(image, image, shift, sitk.sitkLinear, fill, sitk.sitkFloat32)
                cache[s] = sitk.GetArrayFromImage(moved)
        return cache[s]

    out = np.empty((n_out, *stack.shape[1:]), dtype=np.float32)
    upper = np.clip(np.searchsorted(offsets, targets, side="left"), 1, len(offsets) - 1)
    for k, (t, b) in enumerate(zip(targets, upper)):
        a = b - 1
        w = float(np.clip((t - offsets[a]) / (offsets[b] - offsets[a]), 0.0, 1.0))
        if w < 1e-6:
            out[k] = in_plane(a)
        elif w > 1 - 1e-6:
            out[k] = in_plane(b)
        else:
            out[k] = (1.0 - w) * in_plane(a) + w * in_plane(b)
    return out, step


# --------------------------------------------------------------------------------------------- reading
def read_series(series: DicomSeries, *, irregular: str = "resample", workers: int | None = None,
                fix_bad_intercept: bool = False, unknown_spacing: str = "refuse",
                keep_headers: bool = False) -> Volume:
    """Read one :class:`DicomSeries` into a :class:`Volume` (values through the Modality LUT, LPS geometry).

    Args:
        series: from :func:`find_series`.
        irregular: what to do with a tilted or unevenly spaced stack: "resample" onto a regular orthogonal
            grid (float32, reported in ``metadata["warnings"]``) or "refuse" (raise :class:`DicomError`).
        workers: processes decoding pixel data (None: automatic, only for compressed transfer syntaxes, see
            :data:`PARALLEL_MIN_HEADER_FILES`).
        fix_bad_intercept: apply :func:`fix_bad_intercept` to the files :func:`has_bad_intercept` flags (RSNA
            2019 head CT; reported in ``metadata["warnings"]``).
        unknown_spacing: a CT, MR, PT or NM series without PixelSpacing (0028,0030) or ImagerPixelSpacing
            (0018,1164) (or with the placeholder 0\\0): "refuse"
            (DicomError; what inference needs: volumes measured on a guessed pixel size are wrong) or "assume_1mm"
            (1 mm pixels, as SimpleITK does, with a warning; what ``meddl convert`` does). A PixelSpacing that is
            present but no pixel size (0, negative, NaN, 1e-30) is always refused.
        keep_headers: also keep each file's parsed header (the :data:`HEADER_KEYWORDS` elements) as
            ``metadata["headers"]`` (file path -> pydicom Dataset): a DICOM SEG of the volume then references the
            series without reading its files again (:func:`MedDLLib.dicomseg.write_dicom_seg`).

    Returns:
        ``Volume(array[k, j, i], geometry, metadata)`` with the metadata of :class:`DicomSeries` plus
        "warnings", "units" ("HU" for CT with a rescale, else ""), "photometric", "uid" (and "headers").

    Raises:
        DicomError: naming the file and tag: missing or truncated pixel data, no decoder for the transfer
            syntax, unknown slice order, multi-frame or colour images, or an irregular stack with
            ``irregular="refuse"``.
    """
    if irregular not in ("resample", "refuse"):
        raise ValueError(f"irregular must be 'resample' or 'refuse', got {irregular!r}")
    if unknown_spacing not in ("refuse", "assume_1mm"):
        raise ValueError(f"unknown_spacing must be 'refuse' or 'assume_1mm', got {unknown_spacing!r}")
    if not series.slices or series.layout is None:
        raise DicomError(f"series {series.uid}: no image files")
    name = f"series {series.uid}" + (f" ({series.description})" if series.description else "")
    for s in series.slices:
        if s.defect:
            raise DicomError(s.defect)
    first = series.slices[0]
    if first.frames > 1:
        raise DicomError(f"{first.path}: multi-frame image (NumberOfFrames (0028,0008) = {first.frames}); "
                         "MedDL reads single-frame series only")
    if int(first.header.get("SamplesPerPixel") or 1) != 1:
        raise DicomError(f"{first.path}: colour image (SamplesPerPixel (0028,0002) = "
                         f"{first.header.get('SamplesPerPixel')}); MedDL reads greyscale series only")
    layout = series.layout
    if layout.geometry_defect:
        raise DicomError(f"{name}: {layout.geometry_defect}")
    if (not layout.pixel_spacing_known and unknown_spacing == "refuse"
            and str(first.header.get("Modality") or "") in CROSS_SECTIONAL_MODALITIES):
        raise DicomError(f"{name}: {first.path}: no PixelSpacing (0028,0030) nor ImagerPixelSpacing (0018,1164): the "
                         "pixel size is unknown, so volumes and distances would be wrong (refused; `meddl convert` "
                         "writes it with 1 mm pixels and a warning)")
    if not layout.order_known:
        reason = next((p for p in series.problems if "slice order" in p or "same position" in p
                       or "slice geometry is unknown" in p), "")
        raise DicomError(f"{name}: {reason or 'the slice order is unknown'}")
    if not layout.regular and irregular == "refuse":
        reasons = [p for p in series.problems if p.startswith(("gantry tilt", "uneven", "slice positions"))]
        raise DicomError(f"{name} is not one regular volume: {'; '.join(reasons)} "
                         "(refused; read with irregular='resample' to interpolate it onto a regular grid)")

    warnings = list(series.warnings)
    luts, fixed = [], []
    lut_notes: dict[str, list[Path]] = defaultdict(list)  # what each file's Modality LUT said -> those files
    for s in series.slices:
        fixed.append(fix_bad_intercept and has_bad_intercept(s.header))
        said: list[str] = []
        try:
            luts.append(_fixed_lut(s.header) if fixed[-1] else _modality_lut(s.header, said))
        except DicomError as exc:
            raise DicomError(f"{s.path}: {exc}") from None
        for text in said:
            lut_notes[text].append(s.path)
    for text, paths in lut_notes.items():
        warnings.append(f"{paths[0]}: {text}" if len(paths) == 1
                        else f"{text} ({len(paths)} of {len(series.slices)} files, e.g. {paths[0]})")
    if any(fixed):
        warnings.append(f"RSNA bad-intercept fix applied to {sum(fixed)} of {len(fixed)} files (BitsStored 12, "
                        "unsigned, RescaleIntercept > -100: stored + 1000, wrapped at 4096, intercept -1000)")
    # Native pixel data decodes at memory speed: serial unless asked (see PARALLEL_MIN_HEADER_FILES).
    auto_min = PARALLEL_MIN_COMPRESSED_FILES if first.transfer_syntax.is_compressed else sys.maxsize
    array = None
    for k, (raw, s, lut) in enumerate(zip(_parallel_map(_decode, series.slices, workers, auto_min),
                                          series.slices, luts)):
        if fixed[k]:
            raw = _fix_bad_intercept(raw, s.header)[0]
        if array is None:  # the output type may depend on the stored type
            array = np.empty((len(series.slices), *raw.shape), dtype=_output_dtype(luts, raw.dtype))
        if raw.shape != array.shape[1:]:
            raise DicomError(f"{s.path}: image size {raw.shape[1]}x{raw.shape[0]} differs from the series' "
                             f"{array.shape[2]}x{array.shape[1]}")
        _to_output(raw, s, lut, array[k])
    assert array is not None

    header = first.header
    metadata = dict(series.metadata)
    photometric = str(header.get("PhotometricInterpretation") or "")
    total = _inversion_total(header)
    if total is not None:
        warnings.append(f"MONOCHROME1: values inverted to the MONOCHROME2 sense (v' = {total:g} - v); window "
                        "centres mirrored the same way")
        metadata["window_center"] = [total - c for c in metadata["window_center"]]
    elif photometric == "MONOCHROME1":
        warnings.append("MONOCHROME1 with physical units: values kept as they are (not inverted); the file "
                        "asks for display with low values bright")
    if luts[0].kind == "lut":
        warnings.append("Modality LUT Sequence (0028,3000) applied")

    lay = layout
    direction = np.stack([lay.row_axis, lay.column_axis, lay.normal], axis=1)
    spacing = lay.slice_spacing_mm
    if not lay.regular:
        n_out = _resampled_slices(lay)
        if n_out > 4 * len(series.slices) + 16:
            raise DicomError(f"{name}: resampling its {len(series.slices)} unevenly spaced slices onto a regular grid "
                             f"would make {n_out} slices (a gap of {lay.gaps_mm.max():.4g} mm): refused; check the "
                             "ImagePositionPatient (0020,0032) of the files")
        fill = float(array.min())
        before = array.shape[0]
        array, spacing = _resample_regular(array, lay, fill)
        what = lay.irregularity
        filled = f"; pixels shifted in from outside the images are {fill:g}" if lay.tilted else ""
        warnings.append(
            f"{what}: resampled onto a regular orthogonal grid ({before} slices -> {array.shape[0]} slices "
            f"at {spacing:.4g} mm, linear interpolation{filled})"
        )
    geometry = Geometry(
        spacing_mm=(lay.pixel_spacing_mm[0], lay.pixel_spacing_mm[1], spacing),
        origin_lps_mm=tuple(lay.positions_lps_mm[0]),
        direction_lps=tuple(map(tuple, direction)),
    )
    units = "HU" if metadata["modality"] == "CT" and luts[0].kind == "rescale" else ""
    metadata.update(uid=series.uid, warnings=warnings, units=units, photometric=photometric)
    if keep_headers:
        metadata["headers"] = {str(s.path): s.header for s in series.slices}
    return Volume(array, geometry, metadata)


def select_series(found: SeriesList, series_uid: str | None = None) -> DicomSeries:
    """The one volume in ``found`` (or the one named by ``series_uid``); DicomError listing them otherwise."""
    where = found.root or "the folder"
    if found.corrupt:
        path, reason = found.corrupt[0]
        more = f" (and {len(found.corrupt) - 1} more corrupt files)" if len(found.corrupt) > 1 else ""
        raise DicomError(f"{path}: {reason}{more}")
    if series_uid is None and len(found) > 1:
        stackable = [s for s in found if _stackable(s)]
        if len(stackable) == 1:
            chosen, aside = stackable[0], [s for s in found if s is not stackable[0]]
            names = [f"{s.uid} ({s.description or 'no description'}, {len(s.files)} files)" for s in aside[:4]]
            chosen.warnings.append(
                f"{where} holds {len(found)} volumes; the one image stack was read and {len(aside)} set aside "
                f"(screen captures, colour, localisers, single images: {'; '.join(names)}"
                f"{'; ...' if len(aside) > 4 else ''})")
            return chosen
    if not found:
        detail = ""
        if found.skipped:
            path, reason = found.skipped[0]
            detail = f"; {len(found.skipped)} files skipped, e.g. {path.name}: {reason}"
        raise DicomError(f"{where}: no DICOM image series found{detail}")

    def listing(items: Sequence[DicomSeries]) -> str:
        return "; ".join(f"{s.uid} ({s.description or 'no description'}, {len(s.files)} slices)" for s in items)

    if series_uid:
        chosen = [s for s in found if s.uid == series_uid] or [s for s in found if s.series_uid == series_uid]
        if not chosen:
            raise DicomError(f"{where}: no series {series_uid}; found: {listing(found)}")
        if len(chosen) > 1:
            raise DicomError(f"{where}: series {series_uid} holds {len(chosen)} volumes, choose one: {listing(chosen)}")
        return chosen[0]
    if len(found) > 1:
        raise DicomError(f"{where} holds {len(found)} volumes, choose one with its uid (--series): {listing(found)}")
    return found[0]


def _stackable(series: DicomSeries) -> bool:
    """True for a series that is an image stack a task can read: greyscale, single-frame, at least 3 slices placed
    by ImagePositionPatient with a known orientation and pixel size, not one of several copies at the same
    positions (what is left of a scanner export once screen captures, colour images and localisers are aside)."""
    lay = series.layout
    first = series.slices[0].header if series.slices else None
    return (lay is not None and first is not None and len(series.slices) >= 3 and lay.order_known
            and lay.spacing_source == "ImagePositionPatient" and lay.pixel_spacing_known
            and lay.geometry_defect is None and int(first.get("SamplesPerPixel") or 1) == 1
            and series.slices[0].frames == 1 and "copy=" not in series.uid
            and series.slices[0].orientation is not None and not any(s.defect for s in series.slices))


def read_dicom_folder(folder: str | os.PathLike, series_uid: str | None = None, *, irregular: str = "resample",
                      workers: int | None = None, fix_bad_intercept: bool = False,
                      unknown_spacing: str = "refuse", keep_headers: bool = False) -> Volume:
    """Read the one volume under ``folder`` (or the one with ``series_uid``: a volume uid or SeriesInstanceUID);
    the keywords as :func:`read_series` takes them.

    Raises:
        DicomError: no DICOM found, a corrupt file, several volumes and no ``series_uid`` (the message lists
            uid, description and slice count of each), or any :func:`read_series` error.
    """
    found = find_series(folder, workers=workers)
    return read_series(select_series(found, series_uid), irregular=irregular, workers=workers,
                       fix_bad_intercept=fix_bad_intercept, unknown_spacing=unknown_spacing,
                       keep_headers=keep_headers)


def inspect_folder(root: str | os.PathLike, workers: int | None = None) -> list[dict[str, Any]]:
    """JSON-ready summaries of every series under ``root`` (see :meth:`DicomSeries.summary`), then one entry
    ``{"skipped": [{"path", "reason"}, ...], "problems": [...]}`` when files were skipped."""
    found = find_series(root, workers=workers)
    out = [s.summary() for s in found]
    if found.skipped:
        corrupt = {p for p, _ in found.corrupt}
        out.append({
            "skipped": [{"path": str(p), "reason": reason} for p, reason in found.skipped],
            "problems": [f"{p}: {reason}" for p, reason in found.corrupt]
            + ([f"{len(found.skipped) - len(corrupt)} files are not DICOM images and were skipped"]
               if len(found.skipped) > len(corrupt) else []),
        })
    return out


# --------------------------------------------------------------------------------------------- VOI
def _voi_header(source: pydicom.Dataset | DicomSeries | str | os.PathLike) -> pydicom.Dataset:
    if isinstance(source, pydicom.Dataset):
        return source
    if isinstance(source, DicomSeries):
        return source.slices[0].header
    try:
        return _read_header(source).header
    except (_Skipped, _Corrupt) as exc:
        raise DicomError(f"{source}: {exc}") from None


def apply_voi(array: np.ndarray, source: pydicom.Dataset | DicomSeries | str | os.PathLike, index: int = 0,
              *, prefer_lut: bool = True, dtype: type | np.dtype | None = None) -> np.ndarray:
    """Apply the VOI LUT (VOI LUT Sequence, else window ``index``) of ``source`` to values read by MedDL.

    ``array`` holds Modality LUT output as :func:`read_series` returns it; the result is what the file says
    to display, in the MONOCHROME2 sense (higher = brighter): the VOI LUT's output range (0..2**n-1 for a
    VOI LUT Sequence, the Modality LUT output range for a window). For an inverted MONOCHROME1 series the
    inversion is undone before the VOI and redone after it. Uses :func:`pydicom.pixels.apply_voi_lut`.

    An 8- or 16-bit integer array with more voxels than its type has values goes through a table: the VOI of
    every value of the type, then one lookup per voxel (the same numbers as the VOI of each voxel, without the
    float64 arithmetic over the whole array).

    Args:
        array: values (any shape) in the series' output units.
        source: a pydicom Dataset, a :class:`DicomSeries` (its first file) or a file path.
        index: which window when there are several.
        prefer_lut: use the VOI LUT Sequence when both it and a window are present.
        dtype: type of the result (e.g. ``np.float32``, each value cast from the VOI's output); None keeps the
            VOI's own (float64 for a window, the LUT's unsigned type for a VOI LUT Sequence, ``array``'s when
            the header has no VOI).
    """
    ds = _voi_header(source)
    values = np.asarray(array)
    kind = values.dtype
    if kind.kind in "iu" and kind.itemsize <= 2 and kind.isnative and values.size > 2 ** (8 * kind.itemsize):
        unsigned = np.dtype(f"u{kind.itemsize}")
        every = np.arange(2 ** (8 * kind.itemsize), dtype=unsigned).view(kind)  # every value of the type
        table = _voi_of_values(every, ds, index, prefer_lut)
        if table is not every:  # a header without VOI returns its input: nothing to look up
            return np.asarray(table, dtype=dtype)[values.view(unsigned)]
    shown = _voi_of_values(values, ds, index, prefer_lut)
    return shown if dtype is None else shown.astype(dtype, copy=False)


def _voi_of_values(values: np.ndarray, ds: pydicom.Dataset, index: int, prefer_lut: bool) -> np.ndarray:
    """:func:`apply_voi` of the header ``ds`` applied to each of ``values`` (elementwise)."""
    total = _inversion_total(ds)
    if total is None:
        return apply_voi_lut(values, ds, index=index, prefer_lut=prefer_lut)
    # integers widened first: a total past the type's range (e.g. uint8 values of a 12-bit series) cannot overflow
    restored = total - (values.astype(np.int64) if np.issubdtype(values.dtype, np.integer) else values)
    shown = apply_voi_lut(restored, ds, index=index, prefer_lut=prefer_lut)
    if ds.get("VOILUTSequence") and (prefer_lut or "WindowCenter" not in ds):
        depth = int(ds.VOILUTSequence[index].LUTDescriptor[2])
        low, high = 0.0, 2.0**depth - 1
    else:
        lut = _modality_lut(ds)
        low, high = lut.low, lut.high
    return (low + high) - shown
