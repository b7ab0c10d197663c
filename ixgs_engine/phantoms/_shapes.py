"""Shared helpers for procedural phantoms: centred voxel grids, signed distances, partial volume.

Shapes are described by signed distance functions (negative inside, in the grid's length unit).
A voxel's coverage is a linear ramp of the distance over one voxel width, which approximates
its partial volume and keeps edges free of staircase aliasing at no supersampling cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np

from ixgs_engine.volume import Volume


def spacing_xyz(spacing_mm: float | Sequence[float]) -> np.ndarray:
    """Voxel spacing (sx, sy, sz) in mm from one number or an (sx, sy, sz) triple."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"voxel spacing must be positive and finite, got {spacing_mm}")
    return spacing


def centred_geometry(shape: Sequence[int], spacing_mm: float | Sequence[float]) -> Volume:
    """An all-zero float32 volume of ``shape`` (nz, ny, nx) whose centre is the world origin."""
    if len(shape) != 3 or any(int(n) != n or n < 1 for n in shape):
        raise ValueError(f"shape must be three positive integers (nz, ny, nx), got {shape}")
    spacing = spacing_xyz(spacing_mm)
    size_xyz = np.array(shape[::-1], dtype=np.float64)
    origin = -(size_xyz - 1.0) / 2.0 * spacing
    return Volume(np.zeros(tuple(int(n) for n in shape), np.float32), origin, spacing, np.eye(3))


def rotation_z(degrees: float) -> np.ndarray:
    """Active rotation about z (x towards y)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_x(degrees: float) -> np.ndarray:
    """Active rotation about x (y towards z)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def to_local(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: Sequence[float], axes: np.ndarray
) -> list[np.ndarray]:
    """Coordinates along the columns of ``axes`` (orthonormal) relative to ``centre``."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    return [axes[0, k] * dx + axes[1, k] * dy + axes[2, k] * dz for k in range(3)]


def ellipsoid_sdf(coords: Sequence[np.ndarray], semi_axes: Sequence[np.ndarray | float]) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse/ellipsoid centred at 0.

    Works for any number of axes (two give an infinite elliptic cylinder). It is the
    first-order distance (r - 1) / |grad r| of the normalized radius r: exact for circles and
    spheres and accurate near the surface, which is where the partial-volume ramp needs it.
    Semi-axes may be arrays broadcasting against the coordinates (e.g. varying along z).
    """
    r = np.sqrt(sum((c / a) ** 2 for c, a in zip(coords, semi_axes, strict=True)))
    grad = np.sqrt(sum((c / np.square(a)) ** 2 for c, a in zip(coords, semi_axes, strict=True)))
    smallest = reduce(np.minimum, semi_axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(grad > 0, r / grad, smallest)
    return (r - 1.0) * ratio


def rounded_box_sdf(local: Sequence[np.ndarray], half_size: Sequence[float], rounding: float) -> np.ndarray:
    """Exact signed distance to a box with rounded edges, in its local frame (centred at 0)."""
    q = [np.abs(c) - (h - rounding) for c, h in zip(local, half_size, strict=True)]
    outside = np.sqrt(sum(np.square(np.maximum(qi, 0.0)) for qi in q))
    inside = np.minimum(reduce(np.maximum, q), 0.0)
    return outside + inside - rounding


def smooth_union(distances: Sequence[np.ndarray], blend: float) -> np.ndarray:
    """Union of shapes with fillets of about ``blend`` where they meet (polynomial smooth min)."""

    def smin(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h = np.maximum(blend - np.abs(a - b), 0.0) / blend
        return np.minimum(a, b) - h * h * blend / 4.0

    return reduce(smin, distances)


@dataclass(frozen=True)
class Region:
    """A box of voxels: index slices into the volume and broadcastable centre coordinates."""

    slices: tuple[slice, slice, slice]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray


class Canvas:
    """Voxel values painted shape by shape, with coordinates in a chosen length unit.

    ``unit_mm`` is how many mm one coordinate unit is: phantoms are modelled in their own
    units and scaled to the field of view by it. Distances passed in are in those units.
    """

    def __init__(self, geometry: Volume, unit_mm: float, background: float) -> None:
        self.geometry = geometry
        self.unit_mm = unit_mm
        self.values = np.full(geometry.array.shape, background, np.float32)
        self._axes = [
            ((geometry.origin[i] + geometry.spacing[i] * np.arange(n)) / unit_mm).astype(np.float32)
            for i, n in enumerate(geometry.size_ijk)
        ]
        self.ramp = float(np.mean(geometry.spacing)) / unit_mm

    def region(self, low: Sequence[float], high: Sequence[float]) -> Region:
        """Voxels whose centres lie in the box [low, high] (x, y, z), widened by one ramp."""
        slices = []
        for axis, lo, hi in zip(self._axes, low, high, strict=True):
            start = int(np.searchsorted(axis, lo - self.ramp))
            stop = int(np.searchsorted(axis, hi + self.ramp, side="right"))
            slices.append(slice(start, max(start, stop)))
        sx, sy, sz = slices
        x, y, z = (axis[s] for axis, s in zip(self._axes, slices, strict=True))
        return Region((sz, sy, sx), x[None, None, :], y[None, :, None], z[:, None, None])

    def voxel_size_zyx(self) -> np.ndarray:
        """Voxel spacing along the array axes (z, y, x), in canvas units."""
        return self.geometry.spacing[::-1] / self.unit_mm

    def everywhere(self) -> Region:
        """The whole volume as a region."""
        return self.region([-np.inf] * 3, [np.inf] * 3)

    def coverage(self, distance: np.ndarray) -> np.ndarray:
        """Partial volume in [0, 1] of a voxel whose centre is ``distance`` from a surface."""
        return np.clip(0.5 - distance / self.ramp, 0.0, 1.0).astype(np.float32)

    def paint(self, region: Region, distance: np.ndarray, value: float | np.ndarray) -> None:
        """Cover the shape with ``value``, blending with what lies beneath by partial volume."""
        below = self.values[region.slices]
        below += self.coverage(distance) * (np.asarray(value, np.float32) - below)

    def add(self, region: Region, distance: np.ndarray, amount: float) -> None:
        """Add ``amount`` inside the shape, weighted by partial volume (superposed shapes)."""
        self.values[region.slices] += np.float32(amount) * self.coverage(distance)

    def volume(self) -> Volume:
        """The painted values with the canvas geometry."""
        return self.geometry.with_array(self.values)
