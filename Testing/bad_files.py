"""Volume files no MedDL task can read, for the tests of every task's one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Kinds :func:`unreadable_volume_file` writes; each must be refused with "could not read this volume file".
UNREADABLE_KINDS = ("junk", "truncated", "vector")


def unreadable_volume_file(folder: Path, kind: str) -> Path:
    """A ``.nrrd`` Slicer cannot load as a grey-value volume: ``junk`` (not NRRD), ``truncated`` (header and
    10 bytes of voxels) or ``vector`` (2 values per voxel)."""
    import SimpleITK as sitk

    image = np.zeros((4, 16, 16), np.int16)
    if kind == "junk":
        path = folder / "junk.nrrd"
        path.write_bytes(b"garbage!")
    elif kind == "truncated":
        path = folder / "trunc.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(image), str(path), False)
        data = path.read_bytes()
        path.write_bytes(data[: data.index(b"\n\n") + 2 + 10])
    elif kind == "vector":
        path = folder / "vec.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(np.stack([image, image], axis=-1).astype(np.float32), isVector=True),
                        str(path))
    else:
        raise ValueError(f"kind must be one of {UNREADABLE_KINDS}, got {kind!r}")
    return path
