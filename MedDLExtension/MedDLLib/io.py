"""Loading inputs into a scene and saving nodes with Slicer's own storage nodes.

* :func:`load_volume`: a DICOM folder (through :mod:`MedDLLib.dicom`, the one DICOM reader path) or an
  NRRD/NIfTI/MHA file (through Slicer's ``vtkMRMLVolumeArchetypeStorageNode``) -> a new volume node.
* :func:`save_node`: a volume, labelmap, segmentation (``.seg.nrrd``) or table node -> a file written by the
  node's default storage node, atomically (a temporary name in the same folder, then renamed), so a
  crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError

#: Extensions read as single volume files by Slicer's archetype storage node.
VOLUME_FILE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def is_volume_file(path: str | os.PathLike) -> bool:
    """True when ``path`` names a volume file type that :func:`load_volume` reads without DICOM."""
    return str(path).lower().endswith(VOLUME_FILE_SUFFIXES)


def load_volume(
    scene: Any, path: str | os.PathLike, *, series_uid: str | None = None, name: str | None = None,
    labelmap: bool = False, **dicom_options: Any,
) -> Any:
    """Load a DICOM folder or a volume file into ``scene`` as a new scalar (or labelmap) volume node.

    Args:
        scene: the MRML scene to add the node to.
        path: a folder with one DICOM series (or several plus ``series_uid``), or an NRRD/NIfTI/MHA file.
        series_uid: which series to load when the folder holds several.
        name: node name (default: series description or file stem).
        labelmap: load a file as a ``vtkMRMLLabelMapVolumeNode``.
        dicom_options: passed to :func:`MedDLLib.dicom.read_dicom_folder` (e.g. ``irregular="refuse"``).

    Raises:
        InputError / DicomError: missing path, unknown file type, or DICOM problems (naming file and tag).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        from . import dicom, nodes

        volume = dicom.read_dicom_folder(path, series_uid=series_uid, **dicom_options)
        node_name = name or volume.metadata.get("series_description") or path.name
        return nodes.add_scalar_volume(scene, volume, node_name)
    if not is_volume_file(path):
        raise InputError(f"{path}: not a DICOM folder nor a volume file ({', '.join(VOLUME_FILE_SUFFIXES)})")
    check_volume_file(path)
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name or file_stem(path)))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.SetSingleFile(1)
    # Keep the file's own voxel grid: by default Slicer re-indexes a left-handed grid (e.g. a sagittal series
    # stored with its slices towards patient left) by flipping k, and a node saved then loaded back (the widgets'
    # round trip through files) would no longer share its grid with the outputs computed on it.
    storage.SetForceRightHandedIJKCoordinateSystem(False)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError(f"{path}: Slicer could not read this volume file (corrupt or unsupported)")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    try:
        check_volume_node(node, path)
    except InputError:
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise
    return node


def check_volume_node(node: Any, path: str | os.PathLike) -> None:
    """Refuse a volume read from ``path`` whose geometry or voxels are no image: a voxel size (NIfTI pixdim,
    NRRD space directions) that is zero, negative, not a number or beyond 1 m; an IJK-to-RAS matrix that is
    not finite or singular; voxels that are NaN or infinite (the tasks would compute on them silently).

    Raises:
        InputError: naming the file and what is wrong.
    """
    import numpy as np

    spacing = np.asarray(node.GetSpacing(), dtype=float)
    _refuse_bad_spacing(spacing, path)
    matrix = _ijk_to_ras(node)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise InputError(f"{path}: the voxel-to-patient matrix (NIfTI qform/sform, NRRD space directions and "
                         "origin) is not finite or is singular: the volume's place in the patient is unknown")
    image = node.GetImageData()
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is not None and scalars.GetDataType() in (10, 11):  # VTK_FLOAT, VTK_DOUBLE
        from vtk.util.numpy_support import vtk_to_numpy

        _refuse_nonfinite(vtk_to_numpy(scalars), path)


def check_volume_file(path: str | os.PathLike) -> None:
    """Before a volume file is read: refuse what is not a regular file (a named pipe would block the reader
    forever, a device has no end) and a NIfTI whose header or voxels ITK would silently change (:func:`check_nifti`).

    Raises:
        InputError: naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (named pipe, socket or device): MedDL reads regular files only")
    if str(path).lower().endswith((".nii", ".nii.gz")):
        check_nifti(path)


def check_volume_values(volume: Any, path: str | os.PathLike) -> None:
    """After a volume file is read into a :class:`~MedDLLib.geometry.Volume`: refuse a voxel size that is zero,
    negative, not a number or beyond 1 m, and NaN or infinite voxels (what :func:`check_volume_node` checks on a
    node)."""
    import numpy as np

    spacing = np.asarray(volume.geometry.spacing_mm, dtype=float)
    _refuse_bad_spacing(spacing, path)
    if not np.all(np.isfinite(np.asarray(volume.geometry.origin_lps_mm, dtype=float))):
        raise InputError(f"{path}: the volume's origin is not finite: its place in the patient is unknown")
    _refuse_nonfinite(np.asarray(volume.array), path)


#: NIfTI-1 datatype codes of floating-point voxels (float32, float64).
_NIFTI_FLOAT_TYPES = (16, 64)


def check_nifti(path: str | os.PathLike) -> None:
    """Refuse a NIfTI-1 file whose header is no geometry, or whose float voxels are NaN or infinite, before Slicer
    reads it: ITK's reader silently takes a pixdim of 0 as 1 mm, a negative pixdim flips the axis (left and right
    swapped) and NaN voxels become 0, so the volume would be wrong without a word.

    Checked: pixdim[1..3] (voxel size, mm) finite and > 0 (NIfTI-1: "should be positive"); float voxels finite.

    Raises:
        InputError: naming the file and the header field.
    """
    import gzip
    import struct

    import numpy as np

    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(348)
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read the NIfTI header ({exc})") from None
    if len(header) < 348:
        raise InputError(f"{path}: truncated NIfTI header ({len(header)} of 348 bytes)")
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    if struct.unpack(f"{endian}i", header[:4])[0] != 348:
        return  # NIfTI-2 or not NIfTI: left to Slicer's reader
    dim = struct.unpack(f"{endian}8h", header[40:56])
    datatype = struct.unpack(f"{endian}h", header[70:72])[0]
    pixdim = struct.unpack(f"{endian}8f", header[76:108])
    spatial = [float(v) for v in pixdim[1:1 + min(max(int(dim[0]), 1), 3)]]
    if not all(math.isfinite(v) and v > 0 for v in spatial):
        raise InputError(f"{path}: NIfTI pixdim[1..3] (voxel size) is {tuple(spatial)} mm: expected finite sizes "
                         "> 0 (a zero is read as 1 mm and a negative size flips the axis, e.g. swaps left and right)")
    if datatype in _NIFTI_FLOAT_TYPES:  # read here: ITK's reader turns NaN into 0
        offset = int(struct.unpack(f"{endian}f", header[108:112])[0]) or 352
        count = int(np.prod([max(int(d), 1) for d in dim[1:1 + max(int(dim[0]), 1)]]))
        dtype = np.dtype(f"{endian}f{4 if datatype == 16 else 8}")
        try:
            with opener(path, "rb") as f:
                f.seek(offset)
                values = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
        except (OSError, EOFError, ValueError) as exc:
            raise InputError(f"{path}: cannot read the NIfTI voxels ({exc})") from None
        _refuse_nonfinite(values, path)


def _refuse_bad_spacing(spacing: Any, path: str | os.PathLike) -> None:
    """InputError naming ``path`` unless the three voxel sizes (mm) are finite, > 0 and at most 1 m."""
    import numpy as np

    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0) and np.all(spacing <= 1000)):
        raise InputError(f"{path}: voxel size {tuple(float(v) for v in spacing)} mm (NIfTI pixdim / NRRD space "
                         "directions) is not a size: expected three finite spacings between 0 and 1000 mm")


def _refuse_nonfinite(values: Any, path: str | os.PathLike) -> None:
    """InputError naming ``path`` when float ``values`` hold NaN or infinities."""
    import numpy as np

    if not np.issubdtype(values.dtype, np.floating):
        return
    bad = values.size - int(np.count_nonzero(np.isfinite(values)))
    if bad:
        raise InputError(f"{path}: {bad} of {values.size} voxels are NaN or infinite (not finite): MedDL refuses "
                         "volumes with undefined values; fill them (e.g. with the background value) first")


def _ijk_to_ras(node: Any) -> Any:
    import numpy as np
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def read_volume_file(path: str | os.PathLike, name: str | None = None) -> Any:
    """An NRRD/NIfTI/MHA file as a :class:`~MedDLLib.geometry.Volume` (``metadata["source"]`` = the file,
    ``metadata["name"]`` = ``name`` or the file stem), read without MRML.

    Read with ITK's image IO through SimpleITK, as Slicer's volume archetype storage node reads it with its own
    voxel grid kept (``SetForceRightHandedIJKCoordinateSystem(False)``, what :func:`load_volume` does): the same
    voxels, voxel type and geometry, and it runs where ``slicer`` is missing or has only MRML core (the widget's
    child in ``PythonSlicer``). A 2D image becomes one slice. A volume file has no DICOM header: no modality is set.

    Raises:
        InputError: not a volume file, or one that cannot be read (corrupt, truncated, unsupported) or is not a
            grey-value image (vector/RGB, 4D).
    """
    import numpy as np
    import SimpleITK as sitk

    from .resample import from_sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not is_volume_file(path):
        raise InputError(f"{path}: not a volume file ({', '.join(VOLUME_FILE_SUFFIXES)})")
    check_volume_file(path)
    unreadable = f"{path}: could not read this volume file (corrupt, truncated or unsupported)"
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "Description:" in line), "")
        raise InputError(unreadable + (f": {detail.split('Description:', 1)[1].strip()}" if detail else "")) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{unreadable}: {image.GetNumberOfComponentsPerPixel()} values per voxel (e.g. RGB); "
                         "give a grey-value volume")
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputError(f"{unreadable}: a {image.GetDimension()}D image; give one 3D volume")
    if min(image.GetSize()) < 1:
        raise InputError(f"{path}: the volume has no voxels")
    try:
        volume = from_sitk(image, {"name": name or file_stem(path), "source": str(path)})
    except ValueError as exc:  # e.g. a sheared grid (directions not orthonormal)
        raise InputError(f"{path}: the volume's voxel grid is not usable ({exc})") from None
    check_volume_values(volume, path)
    return volume.with_array(np.ascontiguousarray(volume.array))


def file_stem(path: str | os.PathLike) -> str:
    """The file name without its volume suffix: ``FLAIR.nii.gz`` -> ``FLAIR``, ``tumour.seg.nrrd`` -> ``tumour``."""
    path = Path(path)
    name = path.name
    for suffix in sorted((".seg.nrrd", *VOLUME_FILE_SUFFIXES), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def save_node(node: Any, path: str | os.PathLike) -> Path:
    """Write ``node`` to ``path`` with its default Slicer storage node (format from the extension).

    Segmentation nodes need a ``.seg.nrrd`` name; volumes ``.nrrd``/``.nii.gz``/...; tables ``.csv``/``.tsv``.
    The file appears under its final name only once complete (atomic rename in the same folder). The node's
    own storage node (if any) is left untouched.

    Returns:
        the written path.
    """
    path = Path(path)
    if node.IsA("vtkMRMLSegmentationNode") and not path.name.lower().endswith(".seg.nrrd"):
        raise InputError(f"{path}: a segmentation is saved as .seg.nrrd")
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = node.CreateDefaultStorageNode()
    if storage is None:
        raise InputError(f"node {node.GetName()!r} ({node.GetClassName()}) cannot be saved to a file")
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith((".seg.nrrd", ".nii.gz")) else path.suffix
    with atomic_path(path, suffix) as tmp:
        storage.SetFileName(str(tmp))
        if node.IsA("vtkMRMLVolumeNode") and hasattr(storage, "SetUseCompression"):
            storage.SetUseCompression(1)
        if not storage.WriteData(node):
            raise InputError(f"{path}: Slicer could not write node {node.GetName()!r}")
        if node.IsA("vtkMRMLTableNode"):  # tables also write <name>.schema.<ext> beside the data
            schema = tmp.with_name(tmp.name[: -len(suffix)] + ".schema" + suffix)
            if schema.exists():
                os.replace(schema, path.with_name(path.name[: -len(suffix)] + ".schema" + suffix))
    return path


# ----------------------------------------------------------------------------------------------------------
# Atomic files: the one way MedDL writes a file that a crash must never leave half-written.


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path`` (atomic), else removed.

    ``suffix`` is appended to the temporary name when the writer picks the format from the extension
    (e.g. ``".png"``, ``".nrrd"``). The parent folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; on success it replaces ``path``, else it is removed.

    An existing folder at ``path`` is first renamed aside (``.<name>.<hex>.old.partial``), then the new one is
    renamed in and the old one deleted: readers see the old complete folder or the new complete one, never a
    mix, and a failure leaves ``path`` as it was. Leftover ``.*.partial`` entries of a killed process are
    recognisable by name (they carry the writer's process id) and removed by the next call for the same ``path``
    (:func:`clean_stale_partials`). The parent folder is created.

    Raises:
        InputError: ``path`` exists and is not a folder.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise InputError(f"{path}: exists and is not a folder; remove it or choose another output")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.old.partial")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clean_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove the ``.<name>.<pid>-<random>.partial`` staging entries of ``path`` that a killed process left beside
    it (its process id is no longer running, or the name carries none: written by an older MedDL); entries of a
    process still running are kept. Returns what was removed."""
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(prefix) and e.name.endswith(".partial")]
    except OSError:
        return removed
    for entry in entries:
        pid_text = entry.name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and _process_running(int(pid_text)):
            continue
        target = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
        removed.append(target)
    return removed


def _process_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process (or a number the system refuses): keep its files
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder and :func:`os.replace`.

    Readers (and a process killed in the middle) see either the old file or the complete new one.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, key-sorted JSON atomically (numpy values and paths converted)."""
    return atomic_write_text(path, json.dumps(to_jsonable(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def to_jsonable(value: Any, base: Path | None = None) -> Any:
    """``value`` with JSON types only: numpy scalars/arrays -> numbers/lists, paths -> strings, NaN and
    infinities (an undefined metric, e.g. an AUROC without positives) -> ``None`` (``null``: strict JSON).

    A path inside ``base`` becomes relative to it (POSIX separators), so a result stays valid after its folder
    is renamed or moved. Other types raise :class:`TypeError`.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        path = Path(value)
        if base is not None and path.is_absolute() and path.is_relative_to(base):
            return path.relative_to(base).as_posix()
        return str(path)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, base) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, base) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array, torch tensor
        return to_jsonable(value.tolist(), base)
    raise TypeError(f"cannot write a {type(value).__name__} as JSON: {value!r}")
