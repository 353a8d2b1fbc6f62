"""DICOM Segmentation (SEG) output: a MedDL labelmap as a SEG object that references its source series.

What :func:`write_dicom_seg` writes (highdicom, Segmentation IOD, PS3.3 A.51):

* a BINARY segmentation, one segment per label value (segment numbers 1..N in label-value order), each with
  its SNOMED CT category/type (+ laterality modifier, + anatomic region) from :mod:`MedDLLib.terminology`,
  the segment's display colour, and the algorithm that made it (AUTOMATIC; AlgorithmIdentificationSequence:
  the model's name and version, family "Artificial Intelligence", source "MedDL <version>");
* patient, study and frame of reference of the source series, every source instance in the
  ReferencedSeriesSequence;
* frames on the label grid. When every label slice ``k`` lies on one source image (same position, orientation,
  pixel spacing and size: the volume is the series as read, in either slice order), frame ``k`` references
  that instance (DerivationImageSequence), so viewers that need aligned frames (OHIF) overlay it directly.
  Otherwise (a series resampled onto a regular grid because of gantry tilt or uneven gaps, see
  :func:`MedDLLib.dicom.read_series`) the frames carry their own positions on the resampled grid in the same
  frame of reference, without per-frame source references: geometrically exact, shown by Slicer and highdicom;
  viewers that only overlay SEG frames on source images cannot show it. ``aligned_only=True`` refuses that
  case instead (:class:`~MedDLLib.errors.InputError` with the reason).
* empty frames are omitted, except when a segment is empty everywhere: then every frame is written, so the
  segment stays in the object ("nothing found" is a result) and highdicom does not drop it.

Speed (a cold ``meddl infer`` writes one SEG per process): 8-bit labels with values 1..N go to highdicom as
they are (:func:`segment_numbers`), and the whole write runs with the garbage collector paused
(:func:`without_gc`); in cold infers the SEG took 1.3-1.8 s (ICH, LGG) and 3.8-4.1 s (lung) before, 0.3-0.6 s
and 1.2-2.2 s after (same file written). What is left is mostly highdicom's fixed cost (import 0.2 s, its
module table 0.2 s) and pydicom encoding the per-frame functional groups.

Why the probability heatmaps do not go out as DICOM Parametric Maps: a MedDL heatmap is a Grad-CAM relevance
map (relative, per-study normalised 0-1, not a calibrated probability or a physical quantity), and a Parametric
Map needs coded real-world value units and a quantity definition (PS3.3 C.7.6.16.2.11) that would give it a
meaning it does not have; OHIF and most PACS viewers show Parametric Maps poorly or not at all. They stay NRRD
(or NIfTI with ``--output-format nifti``), which Slicer overlays with its colour table.

:func:`read_dicom_seg` reads a SEG back onto a given grid (tests, and users checking a result).
"""

from __future__ import annotations

import functools
import gc
import logging
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np

from .errors import InputError
from .geometry import Geometry
from .terminology import TISSUE, SegmentTerm, term_for

log = logging.getLogger(__name__)

#: Type 2 patient/study attributes highdicom copies from the source images; a source without them (phantoms,
#: anonymised exports) gets them empty in the copy used for writing (the input files are never changed).
_COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")
#: Tolerances of the source-image match: positions in voxels, direction cosines, relative pixel spacing.
POSITION_TOLERANCE_VOXELS = 0.01
DIRECTION_TOLERANCE = 1e-4
SPACING_TOLERANCE = 1e-4

SegmentSpec = Mapping[int, tuple[str, tuple[float, float, float]]]
F = TypeVar("F", bound=Callable)


def without_gc(func: F) -> F:
    """Run ``func`` with Python's cyclic garbage collector paused (re-enabled after, if it was on).

    Writing a SEG allocates a few hundred thousand small objects that form no garbage cycles: highdicom parses
    its 22 MB table of the standard's modules on first use, and every frame gets its functional-group datasets.
    Each allocation burst makes the collector walk the whole heap again (a torch/MONAI process holds millions of
    objects); paused, a cold 40-slice ICH SEG takes 0.2-0.6 s instead of 0.9-1.1 s. Nothing is leaked: what
    the call leaves unreachable is collected by the next collection after it.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return func(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper  # type: ignore[return-value]


def series_files(path: str | Path) -> list[Path]:
    """The slice-ordered files of the DICOM series that ``path`` belongs to: ``path`` is one of its files (its
    folder is searched, e.g. Slicer's DICOM database keeps a series per folder) or a folder holding one series.

    What ``meddl infer --dicom-source`` takes, so a run on an NRRD saved from a DICOM-loaded node (the widget's
    child) still writes a DICOM SEG referencing the original series.

    Raises:
        InputError: no such file/folder, not a DICOM image, or a folder holding several series.
    """
    from .dicom import find_series, select_series

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such DICOM file or folder (--dicom-source)")
    if path.is_dir():
        return list(select_series(find_series(path)).files)
    found = find_series(path.parent)
    target = path.resolve()
    for series in found:
        if any(Path(f).resolve() == target for f in series.files):
            return list(series.files)
    raise InputError(f"{path}: not a DICOM image of a series in {path.parent} (--dicom-source)")


def _read_source(path: Path):
    """The whole header of one source file (no pixel data), its empty type 2 patient/study attributes added."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the input's fault
        raise InputError(f"{path}: cannot be read as DICOM ({exc})") from None
    for keyword in _COPIED_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


def _read_sources(source_files: Sequence[Path], headers: Mapping[str, object] | None = None) -> list:
    """The source datasets, in ``source_files`` order: the reader's header where ``headers`` has the file (see
    :func:`write_dicom_seg`), else the file's whole header (:func:`_read_source`).

    Raises:
        InputError: no files, an unreadable file, a file without the UIDs a SEG references, or files of several
            series / frames of reference.
    """
    if not source_files:
        raise InputError("DICOM SEG: no source files given (the series the segmentation was made from)")
    known = headers or {}
    sources = []
    for path in source_files:
        ds = known.get(str(path))
        if ds is None:
            ds = _read_source(path)
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
            if not ds.get(keyword):
                raise InputError(f"{path}: no {keyword}; a DICOM SEG must reference it")
        sources.append(ds)
    for key in ("SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds[key].value) for ds in sources}
        if len(values) > 1:
            raise InputError(f"{source_files[0].parent}: the source files belong to {len(values)} different {key}s; "
                             "give the files of the one series the labels were made from")
    return sources


def _source_k(ds, geometry: Geometry, shape_kji: tuple[int, int, int], path: str | Path | None = None
              ) -> tuple[int | None, str]:
    """Label slice index ``k`` that source image ``ds`` (the file ``path``) is, or (None, why not)."""
    name = Path(str(path or getattr(ds, "filename", "") or ds.SOPInstanceUID)).name
    nk, nj, ni = shape_kji
    if int(ds.get("Rows") or 0) != nj or int(ds.get("Columns") or 0) != ni:
        return None, f"{name}: image size {ds.get('Columns')}x{ds.get('Rows')} differs from the labels' {ni}x{nj}"
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None, f"{name}: no usable ImageOrientationPatient / ImagePositionPatient / PixelSpacing"
    direction = geometry.direction
    if not (np.allclose(iop[:3], direction[:, 0], atol=DIRECTION_TOLERANCE)
            and np.allclose(iop[3:], direction[:, 1], atol=DIRECTION_TOLERANCE)):
        return None, f"{name}: ImageOrientationPatient differs from the label grid's (tilted or resampled series)"
    sx, sy, _ = geometry.spacing_mm
    if abs(column_spacing - sx) > SPACING_TOLERANCE * sx or abs(row_spacing - sy) > SPACING_TOLERANCE * sy:
        return None, f"{name}: PixelSpacing differs from the label grid's"
    ijk = np.linalg.solve(geometry.ijk_to_lps(), np.append(ipp, 1.0))[:3]
    k = int(round(ijk[2]))
    if np.abs(ijk[:2]).max() > POSITION_TOLERANCE_VOXELS or abs(ijk[2] - k) > POSITION_TOLERANCE_VOXELS:
        return None, f"{name}: ImagePositionPatient is not on a slice of the label grid (resampled series)"
    if not 0 <= k < nk:
        return None, f"{name}: lies outside the label grid (slice {k} of {nk})"
    return k, ""


def match_sources(sources: Sequence, geometry: Geometry, shape_kji: tuple[int, int, int],
                  paths: Sequence[str | Path] | None = None) -> tuple[list | None, str]:
    """The source datasets in label-slice order when each label slice ``k`` is exactly one source image.

    ``paths``: the files of ``sources`` (they name them in the reason).

    Returns:
        (``sources`` reordered so item ``k`` is label slice ``k``, "") or (None, the first reason why not).
    """
    by_k: dict[int, object] = {}
    for n, ds in enumerate(sources):
        k, why = _source_k(ds, geometry, shape_kji, paths[n] if paths is not None else None)
        if k is None:
            return None, why
        if k in by_k:
            return None, f"two source images lie on label slice {k} (SOPInstanceUID {ds.SOPInstanceUID})"
        by_k[k] = ds
    if len(by_k) != shape_kji[0]:
        missing = sorted(set(range(shape_kji[0])) - set(by_k))
        return None, f"label slices {missing[:5]} have no source image (resampled or incomplete series)"
    return [by_k[k] for k in range(shape_kji[0])], ""


def _descriptions(values: Sequence[int], segments: SegmentSpec, terms: Mapping[str, SegmentTerm] | None,
                  model_name: str, model_version: str) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from . import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name[:64], family=codes.DCM.ArtificialIntelligence, version=(model_version or "unknown")[:64],
        source=f"MedDL {__version__}",
    )
    out = []
    for number, value in enumerate(values, start=1):
        name, rgb = segments[value]
        term = (terms or {}).get(name) or term_for(name)
        if term is None:
            log.warning("segment %r has no terminology entry: coded as Tissue", name)
            term = TISSUE

        def coded(code):
            return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)

        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=coded(term.category),
            segmented_property_type=coded(term.type), algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
            anatomic_regions=[coded(term.region)] if term.region else None,
            display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * float(c))) for c in rgb)),
        )
        if term.type_modifier is not None:  # PS3.3 C.8.20.2: nested in the type item
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                coded(term.type_modifier)]
        out.append(desc)
    return out


def _values_present(labels: np.ndarray) -> list[int]:
    """The distinct values of an integer or bool label array, without sorting it (np.unique sorts a copy): for
    8-bit labels one pass marking the values seen, no index copy (300 x 512 x 512: 0.25 s against 0.45 s)."""
    if labels.dtype in (np.uint8, np.bool_):
        seen = np.zeros(256, dtype=bool)
        seen[labels.view(np.uint8) if labels.dtype == np.bool_ else labels] = True
        return np.flatnonzero(seen).tolist()
    return np.unique(labels).tolist()


def segment_numbers(labels: np.ndarray, values: Sequence[int]) -> tuple[np.ndarray, list[bool]]:
    """Label values -> segment numbers 1..N (``values[n - 1]`` is segment n), the label-map array highdicom takes.

    Args:
        labels: ``[k, j, i]`` integer or bool labels.
        values: the sorted segment values (each >= 1).

    Returns:
        (``[k, j, i]`` uint8 (uint16 from 256 segments) segment numbers, 0 background; whether each segment has
        a voxel). When the values are 1..N and the labels 8-bit (every MedDL task) the labels are returned as
        they are: one ``max`` (3 ms on 300 x 512 x 512) instead of a value scan and a look-up copy (0.45 s).

    Raises:
        InputError: a label value without a segment.
    """
    values = [int(v) for v in values]
    n = len(values)
    if labels.dtype in (np.uint8, np.bool_) and values == list(range(1, n + 1)):
        numbers = labels.view(np.uint8)
        top = int(numbers.max()) if numbers.size else 0
        if top > n:
            unknown = _values_present(numbers[numbers > n])
            raise InputError(f"DICOM SEG: label values {unknown} have no segment name")
        # one pass, no temporary: a comparison per segment made a full-volume bool array (75 MB for 300 slices of
        # 512 x 512)
        seen = set(_values_present(numbers)) if n > 1 else {top}
        return numbers, [v in seen for v in values]
    unknown = sorted(set(_values_present(labels)) - {0} - set(values))
    if unknown:
        raise InputError(f"DICOM SEG: label values {unknown} have no segment name")
    lut = np.zeros(max(values) + 1, dtype=np.uint8 if n < 256 else np.uint16)
    lut[values] = np.arange(1, n + 1)
    # (indexed by the labels themselves: an int64 copy of a 300-slice CT's labels is 630 MB and 3 s)
    numbers = lut[labels.view(np.uint8) if labels.dtype == bool else labels]
    seen = set(_values_present(numbers))
    return numbers, [number in seen for number in range(1, n + 1)]


@without_gc
def write_dicom_seg(
    labels: np.ndarray,
    geometry: Geometry,
    segments: SegmentSpec,
    source_files: Sequence[str | Path],
    path: str | Path,
    *,
    model_name: str = "MedDL",
    model_version: str = "",
    series_description: str | None = None,
    series_number: int | None = None,
    terms: Mapping[str, SegmentTerm] | None = None,
    aligned_only: bool = False,
    source_headers: Mapping[str, object] | None = None,
) -> Path:
    """Write ``labels`` as a BINARY DICOM SEG referencing the series of ``source_files`` (atomically).

    Args:
        labels: ``[k, j, i]`` integer label array (0 background; value v is segment ``segments[v]``) on
            ``geometry`` (the grid of the volume read from the source series); or ``[k, j, i, n]`` 0/1 masks of
            overlapping regions, channel c being the c-th segment in value order (BraTS regions).
        geometry: the labels' LPS geometry.
        segments: ``{value: (name, (r, g, b) 0-1)}`` (MedDL's segment spec); names are coded through
            :func:`MedDLLib.terminology.term_for` unless ``terms`` names them.
        source_files: the series' files (any order; matched to label slices by position).
        path: output file (``*.seg.dcm``).
        model_name, model_version: the algorithm identification (the model package's name and version).
        series_description: default ``"<model_name> segmentation"``.
        series_number: default source SeriesNumber + 1000 (1000 without one).
        terms: segment name -> term, overriding :func:`~MedDLLib.terminology.term_for`.
        aligned_only: refuse (InputError) when the label slices are not the source images (resampled series).
        source_headers: the headers the DICOM reader parsed (``metadata["headers"]`` of
            :func:`MedDLLib.dicom.read_series` with ``keep_headers``: file path -> the elements it reads): those
            files are not read again, and only the first frame's source is read whole (highdicom copies the
            patient, study and equipment attributes from it alone). The same SEG as without them.

    Returns:
        ``path``.

    Raises:
        InputError: labels and segments disagree, unreadable or mixed source files, or (``aligned_only``) a
            label grid that is not the source images'.
    """
    import highdicom as hd

    from . import __version__
    from .io import atomic_path

    labels = np.asarray(labels)
    values = sorted(int(v) for v in segments)
    if not values or values[0] <= 0:
        raise InputError(f"DICOM SEG: segment values must be >= 1, got {values}")
    if labels.ndim not in (3, 4) or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InputError(f"DICOM SEG: labels must be an integer array [k, j, i] (or stacked masks [k, j, i, n]), "
                         f"got {labels.dtype} {labels.shape}")
    if labels.ndim == 4:  # overlapping regions (e.g. BraTS whole tumour > tumour core > enhancing tumour)
        if labels.shape[3] != len(values) or (labels.size and (labels.min() < 0 or labels.max() > 1)):
            raise InputError(f"DICOM SEG: stacked masks [k, j, i, n] need n = {len(values)} segments of 0/1 "
                             f"values, got shape {labels.shape}")
        numbers = labels.astype(np.uint8)  # to highdicom as they are (channel c = segment c + 1)
        present = [bool(numbers[..., c].any()) for c in range(numbers.shape[3])]
    else:
        numbers, present = segment_numbers(labels, values)
    source_files = [Path(p) for p in source_files]
    sources = _read_sources(source_files, source_headers)
    shape = tuple(int(s) for s in labels.shape[:3])
    ordered, why = match_sources(sources, geometry, shape, source_files)  # type: ignore[arg-type]
    extra: dict = {}
    if ordered is None:
        if aligned_only:
            raise InputError(f"DICOM SEG: the labels are not on the source images ({why}); refused")
        log.warning("DICOM SEG frames carry their own positions, without per-frame source references: %s", why)
        direction, (sx, sy, sz) = geometry.direction, geometry.spacing_mm
        coords = hd.CoordinateSystemNames.PATIENT
        extra = dict(
            pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=(sy, sx), slice_thickness=sz,
                                                    spacing_between_slices=sz),
            plane_orientation=hd.PlaneOrientationSequence(coords, [*direction[:, 0], *direction[:, 1]]),
            plane_positions=[hd.PlanePositionSequence(coords, geometry.ijk_to_lps()[:3] @ [0.0, 0.0, k, 1.0])
                             for k in range(shape[0])],
        )
        ordered = sources
    if source_headers:  # the reader's headers hold what references need; the first source is copied from
        first_path = source_files[next(n for n, ds in enumerate(sources) if ds is ordered[0])]
        if source_headers.get(str(first_path)) is ordered[0]:
            ordered = [_read_source(first_path), *ordered[1:]]
    first = ordered[0]
    number = series_number if series_number is not None else 1000 + int(first.get("SeriesNumber") or 0)
    descriptions = _descriptions(values, segments, terms, model_name, model_version)
    # A segment with no voxel keeps one (empty) frame: omit_empty_frames would drop it and highdicom refuses
    # an object without frames.
    empty_segment = not all(present)
    with warnings.catch_warnings():  # about the source's PatientName, nothing MedDL writes
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(ordered, numbers, descriptions, number, model_name, series_description, empty_segment,
                            extra)
    seg.SeriesDescription = (series_description or f"{model_name} segmentation")[:64]
    path = Path(path)
    with atomic_path(path, ".dcm") as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path


def _segmentation(ordered, numbers, descriptions, number, model_name, series_description, empty_segment, extra):
    import highdicom as hd

    from . import __version__

    return hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=numbers,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MedDL",
        manufacturer_model_name=model_name[:64],
        software_versions=f"MedDL {__version__}",
        device_serial_number="0",
        content_label="MEDDL",
        content_description=(series_description or f"{model_name} segmentation")[:64],
        omit_empty_frames=not empty_segment,
        **extra,
    )


def read_dicom_seg(path: str | Path, geometry: Geometry, shape_kji: tuple[int, int, int], *, stacked: bool = False
                   ) -> tuple[np.ndarray, dict[int, dict[str, str]]]:
    """Read a BINARY SEG (highdicom) onto the grid ``geometry``/``shape_kji``.

    Returns:
        (``labels[k, j, i]`` uint8 with value = segment number (a later segment wins where they overlap), or
        with ``stacked`` ``[k, j, i, n]`` 0/1 masks of segments 1..n; ``{segment number: {"label", "category",
        "type", "modifier", "region"}}`` as ``scheme^value`` codes).

    Raises:
        InputError: not a SEG, or a frame that is not on a slice of the grid (orientation, spacing or position).
    """
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a DICOM Segmentation ({exc})") from None
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.asarray([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    if not (np.allclose(iop[:3], geometry.direction[:, 0], atol=DIRECTION_TOLERANCE)
            and np.allclose(iop[3:], geometry.direction[:, 1], atol=DIRECTION_TOLERANCE)
            and np.allclose(spacing[::-1], geometry.spacing_mm[:2], rtol=SPACING_TOLERANCE)):
        raise InputError(f"{path}: orientation {iop.tolist()} / pixel spacing {spacing} differ from the grid's")
    if (int(seg.Rows), int(seg.Columns)) != tuple(shape_kji[1:]):
        raise InputError(f"{path}: frames of {seg.Columns}x{seg.Rows} differ from the grid's "
                         f"{shape_kji[2]}x{shape_kji[1]}")
    pixels = seg.pixel_array.reshape(-1, shape_kji[1], shape_kji[2])
    count = int(len(seg.SegmentSequence))
    labels = np.zeros((*shape_kji, count) if stacked else shape_kji, dtype=np.uint8)
    to_ijk = np.linalg.inv(geometry.ijk_to_lps())
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = item.PlanePositionSequence if "PlanePositionSequence" in item else shared.PlanePositionSequence
        ipp = [float(v) for v in position[0].ImagePositionPatient]
        ijk = (to_ijk @ [*ipp, 1.0])[:3]
        k = int(round(ijk[2]))
        if np.abs(ijk[:2]).max() > POSITION_TOLERANCE_VOXELS or abs(ijk[2] - k) > POSITION_TOLERANCE_VOXELS \
                or not 0 <= k < shape_kji[0]:
            raise InputError(f"{path}: frame {frame + 1} at LPS {ipp} is not on a slice of the grid")
        ident = item if "SegmentIdentificationSequence" in item else shared  # shared with a single segment
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if stacked:
            labels[k, ..., number - 1] |= (pixels[frame] > 0).astype(np.uint8)
        else:
            labels[k][pixels[frame] > 0] = number
    info: dict[int, dict[str, str]] = {}
    for desc in seg.SegmentSequence:
        category = desc.SegmentedPropertyCategoryCodeSequence[0]
        typ = desc.SegmentedPropertyTypeCodeSequence[0]
        modifier = typ.get("SegmentedPropertyTypeModifierCodeSequence")
        region = desc.get("AnatomicRegionSequence")
        info[int(desc.SegmentNumber)] = {
            "label": str(desc.SegmentLabel),
            "category": f"{category.CodingSchemeDesignator}^{category.CodeValue}",
            "type": f"{typ.CodingSchemeDesignator}^{typ.CodeValue}",
            "modifier": f"{modifier[0].CodingSchemeDesignator}^{modifier[0].CodeValue}" if modifier else "",
            "region": f"{region[0].CodingSchemeDesignator}^{region[0].CodeValue}" if region else "",
        }
    return labels, info
