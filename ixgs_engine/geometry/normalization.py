"""Scene normalization: map the ROI box to [-1, 1]^3 with one isotropic scale.

Normalized coordinates are ``xn = k * D @ (x - c)`` (c the ROI centre, D its direction rows,
k = 2 / largest ROI side). Lengths scale by k, so a density expressed per normalized unit is
``mu / k``: line integrals, being dimensionless, are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ixgs_engine.geometry.roi import ROI
from ixgs_engine.volume import VolumeGrid


@dataclass(frozen=True)
class SceneNormalization:
    """Similarity transform between world mm and the normalized [-1, 1]^3 scene."""

    center: np.ndarray
    direction: np.ndarray
    scale: float

    @classmethod
    def from_roi(cls, roi: ROI) -> SceneNormalization:
        return cls(center=roi.center.copy(), direction=roi.direction.copy(), scale=2.0 / float(np.max(roi.size)))

    def world_to_normalized_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix world -> normalized."""
        T = np.eye(4)
        T[:3, :3] = self.scale * self.direction
        T[:3, 3] = -self.scale * self.direction @ self.center
        return T

    def normalized_to_world_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix normalized -> world."""
        T = np.eye(4)
        T[:3, :3] = self.direction.T / self.scale
        T[:3, 3] = self.center
        return T

    def to_normalized(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        return self.scale * (pts - self.center) @ self.direction.T

    def to_world(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        return pts @ self.direction / self.scale + self.center

    def projection_to_normalized(self, matrix: np.ndarray) -> np.ndarray:
        """P acting on normalized points (same pixels): ``P @ T^-1``."""
        return np.asarray(matrix, dtype=np.float64) @ self.normalized_to_world_matrix()

    def grid_to_normalized(self, grid: VolumeGrid) -> VolumeGrid:
        """A world-mm voxel grid expressed in normalized coordinates (the same voxels)."""
        return VolumeGrid(
            grid.shape,
            origin=self.to_normalized(grid.origin),
            spacing=grid.spacing * self.scale,
            direction=self.direction @ grid.direction,
        )

    def grid_to_world(self, grid: VolumeGrid) -> VolumeGrid:
        """Inverse of :meth:`grid_to_normalized`: a normalized voxel grid in world mm."""
        return VolumeGrid(
            grid.shape,
            origin=self.to_world(grid.origin),
            spacing=grid.spacing / self.scale,
            direction=self.direction.T @ grid.direction,
        )

    def attenuation_to_normalized(self, mu_per_mm: np.ndarray | float) -> np.ndarray | float:
        """Density per normalized length unit that gives the same line integrals."""
        return mu_per_mm / self.scale

    def half_sizes(self, roi: ROI) -> np.ndarray:
        """Half-sizes (3,) of an ROI box in normalized units, along the normalized axes (those of
        the ROI this normalization came from)."""
        return self.scale * np.asarray(roi.size, dtype=np.float64) / 2.0

    def attenuation_to_world(self, density: np.ndarray | float) -> np.ndarray | float:
        """Inverse of :meth:`attenuation_to_normalized`: back to 1/mm."""
        return density * self.scale
