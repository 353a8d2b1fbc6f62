"""Output files written from arrays, without MRML: volumes, labelmaps, segmentations (``.seg.nrrd``), tables.

What ``meddl infer`` writes runs in a child process that may have no Slicer module logic at all (Slicer's
``PythonSlicer`` loads only MRML core; plain Python may have no ``slicer`` at all), so every writer here works
on :class:`~MedDLLib.geometry.Volume` / numpy arrays and SimpleITK only:

* :func:`write_volume`: a scalar volume (heatmap, labelmap) as NRRD (gzip), geometry from the :class:`Geometry`
  (the same IJK-to-RAS Slicer would write);
* :func:`write_segmentation`: a label array as a ``.seg.nrrd`` Slicer reads as a segmentation: one 3D
  ``unsigned char`` labelmap on the full reference grid (one layer) plus the ``Segment<N>_*`` and
  ``Segmentation_*`` header fields of Slicer's segmentation storage node (name, colour, label value, extent,
  reference image geometry), so Slicer (and slicer-core's ``vtkMRMLSegmentationStorageNode``) reads back the
  segments with their names, colours and terminology (:func:`MedDLLib.terminology.segment_tags`), on the input's
  grid;
* :func:`write_table`: columns as CSV (what Slicer's table storage node reads).

Every file appears under its final name only once complete (:func:`MedDLLib.io.atomic_path`).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .geometry import Geometry, Volume

#: label value -> (segment name, (r, g, b) in 0..1); the same mapping as :data:`MedDLLib.nodes.SegmentSpec`.
SegmentSpec = Mapping[int, tuple[str, tuple[float, float, float]]]
#: ``--output-format`` of ``meddl infer``/``batch`` -> file suffix of the volume outputs (:data:`VOLUME_KINDS`).
#: Both keep the LPS geometry, which Slicer, SimpleITK and nibabel read as the same IJK-to-RAS (NIfTI: qform and
#: sform, code 1, in RAS as NIfTI defines it; ITK flips LPS to RAS on writing). Segmentations stay ``.seg.nrrd``.
OUTPUT_FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz"}
#: Output kinds written with :func:`write_volume`, whose format ``--output-format`` chooses.
VOLUME_KINDS = ("labelmap", "heatmap", "volume")


def volume_file_name(name: str, output_format: str) -> str:
    """``name`` (a declared ``.nrrd``/``.nii.gz`` output) with the suffix of ``output_format``:
    ``heatmap.nrrd`` -> ``heatmap.nii.gz`` for "nifti".

    Raises:
        InputError: an unknown format.
    """
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"output format {output_format!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    for suffix in OUTPUT_FORMATS.values():
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] + OUTPUT_FORMATS[output_format]
    return name


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for double in (".seg.nrrd", ".nii.gz"):
        if name.endswith(double):
            return path.name[-len(double):]
    return path.suffix


def _write_image(image: Any, path: Path) -> Path:
    import SimpleITK as sitk

    from .io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, _suffix(path)) as tmp:
        # gzip-compressed (lossless), as Slicer's storage nodes write; level 1: a 40 x 512 x 512 float32 heatmap
        # in 0.60 s against 0.88 s at the default level, for a file 16 % larger (same values read back)
        sitk.WriteImage(image, str(tmp), True, 1)
    return path


def write_volume(path: str | os.PathLike, volume: Volume) -> Path:
    """Write ``volume`` (``array[k, j, i]``, any numeric type) to ``path`` (``.nrrd`` or ``.nii.gz``), atomically.

    The voxel type is kept (a heatmap stays float32, a labelmap uint8); origin, spacing and directions come from
    ``volume.geometry`` (LPS, as NRRD/NIfTI store them).
    """
    from .resample import to_sitk

    array = np.asarray(volume.array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if _suffix(Path(path)).lower() == ".nrrd" and _nrrd_writable(array, volume.geometry):
        return _write_nrrd(Path(path), array, volume.geometry)
    return _write_image(to_sitk(Volume(np.ascontiguousarray(array), volume.geometry, {})), Path(path))


#: numpy voxel type -> NRRD ``type`` (teem's names, as SimpleITK's NRRD writer puts them).
_NRRD_TYPES = {np.dtype(t): name for t, name in (
    (np.int8, "signed char"), (np.uint8, "unsigned char"), (np.int16, "short"), (np.uint16, "unsigned short"),
    (np.int32, "int"), (np.uint32, "unsigned int"), (np.int64, "long long int"),
    (np.uint64, "unsigned long long int"), (np.float32, "float"), (np.float64, "double"))}


def _nrrd_writable(array: np.ndarray, geometry: Geometry) -> bool:
    """Whether :func:`_write_nrrd` takes ``array`` on ``geometry``: a 3D array of an NRRD voxel type on a finite
    geometry (anything else goes through SimpleITK as before)."""
    finite = np.isfinite(np.r_[geometry.spacing_mm, geometry.origin_lps_mm, np.ravel(geometry.direction)]).all()
    return array.ndim == 3 and array.dtype in _NRRD_TYPES and bool(finite)


def nrrd_header(array: np.ndarray, geometry: Geometry, fields: Mapping[str, str] | None = None) -> bytes:
    """The header SimpleITK's NRRD writer puts before gzip data of ``array[k, j, i]`` on ``geometry``: the same
    fields in the same order, numbers as teem prints them (``%.17g``, -0 as 0; a space direction is the axis'
    spacing times its direction column, the product ITK forms), then the ``key:=value`` fields of ``fields`` in
    key order (ITK's metadata dictionary)."""
    def number(value: float) -> str:
        return "%.17g" % (float(value) + 0.0)  # + 0.0: a negative zero prints as 0

    spacing = [float(v) for v in geometry.spacing_mm]
    direction = np.asarray(geometry.direction, dtype=float)
    vectors = " ".join("(" + ",".join(number(spacing[axis] * float(direction[row, axis])) for row in range(3))
                       + ")" for axis in range(3))
    origin = ",".join(number(v) for v in geometry.origin_lps_mm)
    lines = ["NRRD0004", "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html", f"type: {_NRRD_TYPES[array.dtype]}", "dimension: 3",
             "space: left-posterior-superior", "sizes: " + " ".join(str(n) for n in array.shape[::-1]),
             f"space directions: {vectors}", "kinds: domain domain domain"]
    lines += ["endian: little"] if array.dtype.itemsize > 1 else []
    lines += ["encoding: gzip", f"space origin: ({origin})"]
    lines += [f"{key}:={value}" for key, value in sorted((fields or {}).items())]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _write_nrrd(path: Path, array: np.ndarray, geometry: Geometry, fields: Mapping[str, str] | None = None) -> Path:
    """Write a 3D scalar volume as gzip NRRD (:func:`nrrd_header`, then the voxels, i fastest), atomically,
    compressed one k slice at a time: no copy of the volume (SimpleITK's writer needs one in its own image, 315 MB
    for a 300 x 512 x 512 float32 heatmap), and an all-zero slice (most of a heatmap that covers the network's
    crop) is a deflate segment made once per file. Each slice's segment ends on a full flush, so the segments are
    independent; the same values read back as from SimpleITK's file (zlib level 1; the compressed bytes differ)."""
    import zlib

    from .io import atomic_path

    little = array.dtype.newbyteorder("<")
    zero_segment: bytes | None = None
    crc, size = 0, 0
    with atomic_path(path, ".nrrd") as tmp, open(tmp, "wb") as f:
        f.write(nrrd_header(array, geometry, fields))
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03")  # gzip member header (deflate, no name/time)
        for slab in array:
            data = memoryview(np.ascontiguousarray(slab, dtype=little)).cast("B")
            crc, size = zlib.crc32(data, crc), size + data.nbytes
            if data.nbytes and np.frombuffer(data, dtype=np.uint8).any():  # bits, not values: -0.0 is kept
                deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
                f.write(deflate.compress(data) + deflate.flush(zlib.Z_FULL_FLUSH))
            else:
                if zero_segment is None:
                    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
                    zero_segment = deflate.compress(data) + deflate.flush(zlib.Z_FULL_FLUSH)
                f.write(zero_segment)
        f.write(zlib.compressobj(1, zlib.DEFLATED, -15).flush(zlib.Z_FINISH))  # the final (empty) block
        f.write((crc & 0xFFFFFFFF).to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little"))
    return path


def _within_known_range(labels: np.ndarray, segments: SegmentSpec) -> bool:
    """Whether every integer from ``labels``' minimum to its maximum is 0 or a segment value: then no value of
    ``labels`` lacks a segment, found from two reductions instead of :func:`numpy.unique` (which sorts or hashes a
    copy: 0.4-0.7 s for 300 x 512 x 512 uint8 labels, against 0.01 s for the maximum)."""
    if labels.size == 0:
        return True
    high = int(labels.max())
    low = int(labels.min()) if np.issubdtype(labels.dtype, np.signedinteger) else 0
    if high - low > 4096:
        return False
    known = {0} | {int(v) for v in segments}
    return all(v in known for v in range(low, high + 1))


def check_labels(labels: np.ndarray, segments: SegmentSpec, what: str) -> np.ndarray:
    """``labels`` as uint8 (uint16 above 255 segments), refusing values without a segment name/colour.

    Raises:
        InputError: not an integer/bool array, or label values not in ``segments``.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{what}: label array must be integer or bool, got {labels.dtype}")
    if not _within_known_range(labels, segments):  # else every value is 0 or a segment: no scan of the values
        unknown = sorted(set(np.unique(labels).tolist()) - {0} - set(segments))
        if unknown:
            raise InputError(f"{what}: label values {unknown} have no segment name/colour")
    for value, (name, _) in segments.items():
        if int(value) <= 0:
            raise InputError(f"{what}: segment label values must be >= 1, got {value} for {name!r}")
    # the labels themselves when of that type already (every caller only reads them; a node copies its voxels)
    return labels.astype(np.uint8 if max(segments, default=0) < 256 else np.uint16, copy=False)


def _numbers(values: Sequence[float]) -> str:
    return " ".join(f"{float(v):.17g}" for v in values)


def reference_geometry_string(geometry: Geometry, shape_kji: Sequence[int]) -> str:
    """Slicer's "Reference image geometry" text: the 16 IJK-to-RAS values (row major) and the extent
    ``0 I-1 0 J-1 0 K-1``, ``;``-separated (what ``vtkSegmentationConverter`` serialises)."""
    matrix = geometry.ijk_to_ras().ravel()
    k, j, i = (int(n) for n in shape_kji)
    extent = (0, i - 1, 0, j - 1, 0, k - 1)
    return "".join(f"{float(v):.17g};" for v in matrix) + "".join(f"{e};" for e in extent)


def write_segmentation(path: str | os.PathLike, labels: np.ndarray, geometry: Geometry,
                       segments: SegmentSpec) -> Path:
    """Write ``labels[k, j, i]`` on ``geometry`` as a Slicer segmentation file (``.seg.nrrd``), atomically.

    Value v becomes the segment ``segments[v][0]`` with colour ``segments[v][1]``; every segment is listed, even
    when empty. The labelmap covers the whole grid (extent = the reference grid), so the segmentation reads back
    on the input's voxel grid.

    Raises:
        InputError: not a ``.seg.nrrd`` name, or labels without a segment (see :func:`check_labels`).
    """
    from .resample import to_sitk

    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise InputError(f"{path}: a segmentation is saved as .seg.nrrd")
    labels = check_labels(labels, segments, path.name)
    if labels.ndim != 3:
        raise InputError(f"{path.name}: expected a 3D label array [k, j, i], got shape {labels.shape}")
    from .terminology import segment_tags

    k, j, i = labels.shape
    extent = f"0 {i - 1} 0 {j - 1} 0 {k - 1}"
    fields = {}
    for n, (value, (name, rgb)) in enumerate(sorted(segments.items())):
        for key, text in (("ID", name), ("Name", name), ("NameAutoGenerated", "0"),
                          ("Color", _numbers(rgb)), ("ColorAutoGenerated", "0"), ("LabelValue", str(int(value))),
                          ("Layer", "0"), ("Extent", extent), ("Tags", segment_tags(name))):
            fields[f"Segment{n}_{key}"] = text
    fields["Segmentation_MasterRepresentation"] = "Binary labelmap"
    fields["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    fields["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    fields["Segmentation_ConversionParameters"] = (
        f"Reference image geometry|{reference_geometry_string(geometry, labels.shape)}|"
        "Image geometry description string determining the geometry of the labelmap.&")
    if _nrrd_writable(labels, geometry):  # no copy of the labels (SimpleITK's image would be one)
        return _write_nrrd(path, labels, geometry, fields)
    image = to_sitk(Volume(np.ascontiguousarray(labels), geometry, {}))
    for key, text in fields.items():
        image.SetMetaData(key, text)
    return _write_image(image, path)


def read_segmentation_labels(path: str | os.PathLike) -> tuple[Volume, dict[int, tuple[str, tuple[float, ...]]]]:
    """A ``.seg.nrrd`` of :func:`write_segmentation` (one layer) as ``(labels Volume, {value: (name, rgb)})``.

    Raises:
        InputError: the file cannot be read or holds several layers (not written by MedDL).
    """
    import SimpleITK as sitk

    from .resample import from_sitk

    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the segmentation ({' '.join(str(exc).split())[:200]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: a segmentation of several layers; MedDL writes one labelmap layer")
    segments: dict[int, tuple[str, tuple[float, ...]]] = {}
    n = 0
    while image.HasMetaDataKey(f"Segment{n}_LabelValue"):
        value = int(image.GetMetaData(f"Segment{n}_LabelValue"))
        name = image.GetMetaData(f"Segment{n}_Name") if image.HasMetaDataKey(f"Segment{n}_Name") else str(value)
        color = tuple(float(c) for c in image.GetMetaData(f"Segment{n}_Color").split()) \
            if image.HasMetaDataKey(f"Segment{n}_Color") else (0.5, 0.5, 0.5)
        segments[value] = (name, color)
        n += 1
    return from_sitk(image, {}), segments


def write_table(path: str | os.PathLike, columns: Mapping[str, Sequence[Any]]) -> Path:
    """Write ``{column: values}`` as CSV with a header row, atomically; floats with up to 17 significant digits
    (NaN as ``nan``), as Slicer's table storage node reads them.

    Raises:
        InputError: columns of different lengths.
    """
    from .io import atomic_write_text

    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise InputError(f"{Path(path).name}: table columns have different lengths {sorted(lengths)}")
    rows = zip(*columns.values()) if columns else iter(())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(columns))

    def cell(value: Any) -> Any:
        if isinstance(value, (bool, np.bool_)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            return "nan" if math.isnan(value) else repr(float(value))
        if isinstance(value, np.integer):
            return int(value)
        return value

    for row in rows:
        writer.writerow([cell(v) for v in row])
    return atomic_write_text(Path(path), buffer.getvalue())
