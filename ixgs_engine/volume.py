"""Voxel grids and volumes with their world geometry (ITK conventions, LPS millimetres)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class VolumeGrid:
    """Where the voxels of a volume lie in the world.

    ``shape`` is (nz, ny, nx), the shape of arrays indexed ``[k, j, i]`` as SimpleITK's
    ``GetArrayFromImage`` returns them. ``origin`` is the world position (mm) of voxel
    (i, j, k) = (0, 0, 0)'s centre, ``spacing`` is (sx, sy, sz) in mm, and ``direction`` is the
    3x3 matrix whose columns are the world directions of the i, j, k index axes.
    """

    shape: tuple[int, int, int]
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.shape = tuple(int(n) for n in self.shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"a volume grid needs 3 positive sizes (nz, ny, nx), got {self.shape}")
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if np.any(self.spacing <= 0) or not np.all(np.isfinite(self.spacing)):
            raise ValueError(f"voxel spacing must be positive and finite, got {self.spacing}")

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k (x, y, z index axes)."""
        nz, ny, nx = self.shape
        return nx, ny, nz

    def index_to_world_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping continuous (i, j, k, 1) to world (x, y, z, 1)."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    def world_to_index_matrix(self) -> np.ndarray:
        """4x4 inverse of :meth:`index_to_world_matrix`."""
        return np.linalg.inv(self.index_to_world_matrix())

    def center(self) -> np.ndarray:
        """World position of the grid's geometric centre."""
        mid = (np.array(self.size_ijk, dtype=np.float64) - 1.0) / 2.0
        return self.origin + self.direction @ (self.spacing * mid)

    def extent(self) -> np.ndarray:
        """Physical size (mm) of the box the voxels cover along i, j, k."""
        return self.spacing * np.array(self.size_ijk, dtype=np.float64)

    def voxel_centres(self) -> np.ndarray:
        """World positions (nz, ny, nx, 3) of every voxel centre."""
        k, j, i = np.meshgrid(*(np.arange(n) for n in self.shape), indexing="ij")
        return np.stack([i, j, k], axis=-1) @ self.index_to_world_matrix()[:3, :3].T + self.origin

    def block(self, start: Sequence[int], shape: Sequence[int]) -> VolumeGrid:
        """The block of this grid with ``shape`` (nz, ny, nx) starting at voxel index ``start``
        (k, j, i): the same voxels, e.g. a random 32^3 sub-volume for the TV loss."""
        k, j, i = (int(s) for s in start)
        corner = self.index_to_world_matrix() @ np.array([i, j, k, 1.0])
        return VolumeGrid(tuple(shape), origin=corner[:3], spacing=self.spacing.copy(), direction=self.direction.copy())


class Volume(VolumeGrid):
    """Voxel values (``array``, indexed [k, j, i]) on a :class:`VolumeGrid`."""

    def __init__(
        self,
        array: np.ndarray,
        origin: np.ndarray | None = None,
        spacing: np.ndarray | None = None,
        direction: np.ndarray | None = None,
    ) -> None:
        self.array = np.asarray(array)
        if self.array.ndim != 3:
            raise ValueError(f"a volume needs a 3-D array, got shape {self.array.shape}")
        super().__init__(
            self.array.shape,
            np.zeros(3) if origin is None else origin,
            np.ones(3) if spacing is None else spacing,
            np.eye(3) if direction is None else direction,
        )

    @classmethod
    def on_grid(cls, grid: VolumeGrid, array: np.ndarray) -> Volume:
        """Values on an existing grid (shapes must agree)."""
        if tuple(np.shape(array)) != tuple(grid.shape):
            raise ValueError(f"array shape {np.shape(array)} does not match grid shape {grid.shape}")
        return cls(array, grid.origin.copy(), grid.spacing.copy(), grid.direction.copy())

    @property
    def grid(self) -> VolumeGrid:
        """The geometry alone."""
        return VolumeGrid(self.shape, self.origin.copy(), self.spacing.copy(), self.direction.copy())

    def with_array(self, array: np.ndarray) -> Volume:
        """Same geometry, other values."""
        return Volume.on_grid(self, array)

    def __repr__(self) -> str:
        return (
            f"Volume(shape={self.shape}, origin={self.origin.tolist()}, spacing={self.spacing.tolist()}, "
            f"dtype={self.array.dtype})"
        )
