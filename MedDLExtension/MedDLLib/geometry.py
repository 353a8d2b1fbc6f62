"""Voxel arrays with their physical geometry: the plain data every MedDL layer passes around.

Conventions (the only place they are defined):

* Arrays are indexed ``[k, j, i]`` (slice, row, column), as ``slicer.util.arrayFromVolume`` and
  ``SimpleITK.GetArrayFromImage`` return them. ``i`` runs along DICOM columns, ``j`` along rows, ``k`` along
  the slice normal.
* :class:`Geometry` stores the ITK/DICOM convention: ``spacing_mm`` as (i, j, k), ``origin_lps_mm`` (centre of
  voxel 0,0,0 in patient LPS) and ``direction_lps`` (3x3, columns are the unit i, j, k axes in LPS). This is
  exactly what SimpleITK reports, so comparisons with SimpleITK are direct.
* Slicer uses RAS. :data:`LPS_TO_RAS` and :meth:`Geometry.ijk_to_ras` / :meth:`Geometry.from_ijk_to_ras`
  are the one place where LPS and RAS are converted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

#: Homogeneous 4x4 flip between LPS (DICOM/ITK) and RAS (Slicer). It is its own inverse.
LPS_TO_RAS: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Physical placement of a 3D voxel grid (ITK convention, LPS, millimetres).

    Attributes:
        spacing_mm: voxel size along i, j, k in mm (all > 0).
        origin_lps_mm: LPS position of the centre of voxel (i, j, k) = (0, 0, 0), in mm.
        direction_lps: 3x3 matrix whose columns are the unit vectors of the i, j, k axes in LPS.
    """

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction_lps: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing_mm)
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise ValueError(f"spacing_mm must be three positive numbers, got {self.spacing_mm!r}")
        direction = np.asarray(self.direction_lps, dtype=float).reshape(3, 3)
        if abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
            raise ValueError(f"direction_lps must be orthonormal, got {direction.tolist()!r}")
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_lps_mm", tuple(float(o) for o in self.origin_lps_mm))
        object.__setattr__(self, "direction_lps", tuple(tuple(float(v) for v in row) for row in direction))

    @property
    def direction(self) -> np.ndarray:
        """3x3 direction matrix (LPS), columns = unit i, j, k axes."""
        return np.asarray(self.direction_lps, dtype=float)

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) voxel indices to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing_mm)
        m[:3, 3] = self.origin_lps_mm
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) voxel indices to RAS mm (Slicer's IJKToRAS)."""
        return LPS_TO_RAS @ self.ijk_to_lps()

    @classmethod
    def from_ijk_to_lps(cls, matrix: np.ndarray) -> "Geometry":
        """Inverse of :meth:`ijk_to_lps` (the matrix must be a rotation times a positive diagonal scaling)."""
        m = np.asarray(matrix, dtype=float)
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        return cls(tuple(spacing), tuple(m[:3, 3]), tuple(map(tuple, m[:3, :3] / spacing)))

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray) -> "Geometry":
        """Inverse of :meth:`ijk_to_ras` (e.g. from a volume node's ``GetIJKToRASMatrix``)."""
        return cls.from_ijk_to_lps(LPS_TO_RAS @ np.asarray(matrix, dtype=float))

    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (1 mL = 1000 mm^3)."""
        return float(np.prod(self.spacing_mm)) / 1000.0

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        """Map an (N, 3) array of (i, j, k) indices (float allowed) to (N, 3) RAS mm."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return (ijk @ self.ijk_to_ras()[:3, :3].T) + self.ijk_to_ras()[:3, 3]

    def allclose(self, other: "Geometry", atol_mm: float = 1e-4) -> bool:
        """True when both geometries place every voxel within ``atol_mm`` (spacing, origin, direction)."""
        return bool(
            np.allclose(self.spacing_mm, other.spacing_mm, atol=atol_mm)
            and np.allclose(self.origin_lps_mm, other.origin_lps_mm, atol=atol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6 + atol_mm / 1000.0)
        )


@dataclasses.dataclass
class Volume:
    """A 3D image: voxels ``array[k, j, i]`` plus :class:`Geometry` plus free-form metadata.

    ``metadata`` carries what the reader knew (modality, series description, UIDs, window centre/width,
    source files, warnings). Plain data: no MRML, no torch.
    """

    array: np.ndarray
    geometry: Geometry = dataclasses.field(default_factory=Geometry)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D [k, j, i], got shape {self.array.shape}")

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        """Array shape (slices, rows, columns)."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray, **metadata: Any) -> "Volume":
        """A new Volume with the same geometry, another array of the same shape, and updated metadata."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from the volume's {self.array.shape}")
        return Volume(array, self.geometry, {**self.metadata, **metadata})
