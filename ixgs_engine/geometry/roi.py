"""The reconstruction box (ROI) and its default: the region every view sees."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ixgs_engine.errors import GeometryError
from ixgs_engine.geometry.projection import normalize_projection_matrix, ray_directions
from ixgs_engine.volume import VolumeGrid


@dataclass
class ROI:
    """Box in world mm: ``center``, ``size`` along the box axes, and ``direction`` whose
    rows are the box axes in world coordinates (as in scan.json)."""

    center: np.ndarray
    size: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64).reshape(3)
        self.size = np.asarray(self.size, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not (np.all(np.isfinite(self.center)) and np.all(np.isfinite(self.size))):
            raise GeometryError("ROI center and size must be finite numbers")
        if np.any(self.size <= 0):
            raise GeometryError(f"ROI size must be positive along every axis, got {self.size.tolist()}")
        if not np.allclose(self.direction @ self.direction.T, np.eye(3), atol=1e-6):
            raise GeometryError("ROI direction must be an orthonormal 3x3 matrix (rows = box axes)")

    def corners(self) -> np.ndarray:
        """The 8 corners (8, 3) in world mm."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        return self.center + (signs * self.size / 2.0) @ self.direction

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Which world points (..., 3) lie inside the box."""
        local = (np.asarray(points, dtype=np.float64) - self.center) @ self.direction.T
        return np.all(np.abs(local) <= self.size / 2.0, axis=-1)

    def to_dict(self) -> dict:
        out = {"center": self.center.tolist(), "size": self.size.tolist()}
        if not np.allclose(self.direction, np.eye(3)):
            out["direction"] = self.direction.tolist()
        return out


def box_fraction_in_view(matrix: np.ndarray, image_shape: tuple[int, int], roi: ROI, samples: int = 5) -> float:
    """Fraction of sample points of the box (a samples^3 grid) that project onto the detector
    in front of the source. 0 means the view misses the box."""
    P = normalize_projection_matrix(matrix)
    height, width = image_shape
    t = np.linspace(-0.5, 0.5, samples)
    grid = np.stack(np.meshgrid(t, t, t, indexing="ij"), axis=-1).reshape(-1, 3)
    points = roi.center + (grid * roi.size) @ roi.direction
    hom = points @ P[:, :3].T + P[:, 3]
    w = hom[:, 2]
    front = w > 0
    u = np.where(front, hom[:, 0] / np.where(front, w, 1.0), -np.inf)
    v = np.where(front, hom[:, 1] / np.where(front, w, 1.0), -np.inf)
    inside = front & (u >= -0.5) & (u <= width - 0.5) & (v >= -0.5) & (v <= height - 0.5)
    return float(inside.mean())


def _box_visible(matrices: Sequence[np.ndarray], image_shape: tuple[int, int], roi: ROI) -> bool:
    """True when every corner of the box projects onto every detector, in front of its source
    (the projection of a box in front of the source is the hull of its corners' projections)."""
    height, width = image_shape
    corners = roi.corners()
    for P in matrices:
        hom = corners @ P[:, :3].T + P[:, 3]
        w = hom[:, 2]
        if np.any(w <= 0):
            return False
        u, v = hom[:, 0] / w, hom[:, 1] / w
        if np.any(u < -0.5) or np.any(u > width - 0.5) or np.any(v < -0.5) or np.any(v > height - 0.5):
            return False
    return True


def central_ray_intersection(matrices: Sequence[np.ndarray], image_shape: tuple[int, int]) -> np.ndarray:
    """Least-squares meeting point of the rays through the detector centres (the isocentre of
    an orbit). With one view, or parallel rays, a point on the first central ray at half its
    depth budget is not defined, so this raises GeometryError."""
    height, width = image_shape
    centre_pixel = np.array([[(width - 1) / 2.0, (height - 1) / 2.0]])
    normal = np.zeros((3, 3))
    rhs = np.zeros(3)
    for P in matrices:
        Pn = normalize_projection_matrix(P)
        source = -np.linalg.solve(Pn[:, :3], Pn[:, 3])
        direction = ray_directions(Pn, centre_pixel)[0]
        direction /= np.linalg.norm(direction)
        proj = np.eye(3) - np.outer(direction, direction)
        normal += proj
        rhs += proj @ source
    if np.linalg.cond(normal) > 1e8:
        raise GeometryError(
            "the central rays of the views are (nearly) parallel, so the region every view sees "
            "is unbounded; give an ROI in scan.json"
        )
    return np.linalg.solve(normal, rhs)


def _largest_scale(fits, low: float, high: float, steps: int = 40) -> float:
    """Bisection for the largest s in [low, high] with fits(s) true (fits(low) must hold)."""
    for _ in range(steps):
        mid = 0.5 * (low + high)
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


def default_roi(matrices: Sequence[np.ndarray], image_shape: tuple[int, int]) -> ROI:
    """The largest world-axis-aligned box around the central rays' meeting point that every
    view sees whole: first the largest cube, then each axis grown on its own (z, y, x).

    Raises GeometryError when no box of any size is visible in every view."""
    normalized = [normalize_projection_matrix(P) for P in matrices]
    center = central_ray_intersection(normalized, image_shape)
    sources = [-np.linalg.solve(P[:, :3], P[:, 3]) for P in normalized]
    reach = 2.0 * min(np.linalg.norm(s - center) for s in sources)
    tiny = 1e-6 * reach

    def cube(side: float) -> bool:
        return _box_visible(normalized, image_shape, ROI(center, np.full(3, side)))

    if not cube(tiny):
        raise GeometryError(
            "the views have no region in common around their central rays' meeting point; "
            "check the projection matrices or give an ROI in scan.json"
        )
    size = np.full(3, _largest_scale(cube, tiny, reach))
    for axis in (2, 1, 0):

        def grown(extent: float, axis: int = axis) -> bool:
            trial = size.copy()
            trial[axis] = extent
            return _box_visible(normalized, image_shape, ROI(center, trial))

        size[axis] = _largest_scale(grown, size[axis], 4.0 * reach)
    return ROI(center, size)


def roi_grid(roi: ROI, voxel_size: float) -> VolumeGrid:
    """The voxel grid that fills the ROI box with voxels of about ``voxel_size`` mm (the
    spacing is adjusted per axis so the voxels tile the box exactly), axes along the box."""
    if not voxel_size > 0:
        raise GeometryError(f"voxel size must be positive, got {voxel_size}")
    counts = np.maximum(np.round(roi.size / voxel_size).astype(int), 2)
    return _box_grid(roi, counts, roi.size / counts)


def grown_grid(roi: ROI, factor: float, voxels_across: int) -> VolumeGrid:
    """A coarse grid over the ROI grown by ``factor`` about its centre, axes along the box,
    whose voxel faces fall on the ROI's faces: about ``voxels_across`` voxels across the ROI's
    longest side (every axis gets a whole number of voxels across the ROI, at least one), and
    at least ``(factor - 1) / 2`` of the ROI's size on every side around it."""
    if not (factor >= 1 and voxels_across >= 1):
        raise GeometryError(f"need a growth factor >= 1 and >= 1 voxel, got {factor} and {voxels_across}")
    pitch = float(np.max(roi.size)) / voxels_across
    inside = np.maximum(np.round(roi.size / pitch).astype(int), 1)
    spacing = roi.size / inside
    counts = inside + 2 * np.ceil(inside * (factor - 1.0) / 2.0 - 1e-9).astype(int)
    return _box_grid(roi, counts, spacing)


def _box_grid(roi: ROI, counts: np.ndarray, spacing: np.ndarray) -> VolumeGrid:
    """``counts`` (i, j, k) voxels of ``spacing`` mm centred on the ROI, axes along the box."""
    direction = roi.direction.T  # columns = box axes = index axes i, j, k
    origin = roi.center - direction @ (spacing * (counts - 1) / 2.0)
    return VolumeGrid((int(counts[2]), int(counts[1]), int(counts[0])), origin, spacing, direction)
