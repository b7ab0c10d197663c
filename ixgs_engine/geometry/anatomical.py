"""Conversions at the Slicer boundary and realignment to the patient's anatomical axes.

The engine works in patient LPS millimetres (ITK, DICOM); 3D Slicer works in RAS. The two
frames differ by a half turn about the z axis (x and y flipped), which is a proper rotation, so
handedness and box orientations survive the conversion. Everything here is plain numpy so the
Slicer modules stay thin and pytest can check it without Slicer.

Realignment: a reconstruction lives in the C-arm's world frame, which is only roughly the
patient's. :func:`realignment_from_landmarks` (points the user places along the spine and from
the patient's right to left) and :func:`realignment_from_principal_axes` (the inertia axes of the
thresholded bone) give a rigid 4x4 transform (LPS) that turns the volume so its anatomy lines
up with the world axes: spine along z (superior), right-to-left along x.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

from ixgs_engine.errors import GeometryError
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.volume import Volume, VolumeGrid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""4x4 homogeneous matrix taking LPS coordinates to RAS (its own inverse)."""


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    """Points (..., 3) from LPS to RAS. The same flip takes RAS back to LPS."""
    return np.asarray(points, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])


ras_to_lps_points = lps_to_ras_points


def lps_to_ras_transform(matrix: np.ndarray) -> np.ndarray:
    """A 4x4 transform of LPS points written as the same transform of RAS points."""
    return LPS_TO_RAS @ np.asarray(matrix, dtype=np.float64) @ LPS_TO_RAS


def ijk_to_ras_matrix(grid: VolumeGrid) -> np.ndarray:
    """4x4 matrix taking voxel indices (i, j, k, 1) to RAS mm, as Slicer's volume nodes hold it."""
    return LPS_TO_RAS @ grid.index_to_world_matrix()


def grid_from_ijk_to_ras(shape: tuple[int, int, int], ijk_to_ras: np.ndarray) -> VolumeGrid:
    """The engine grid (LPS) of an array of ``shape`` (nz, ny, nx) with Slicer's IJK-to-RAS matrix.

    Raises GeometryError when the matrix has a zero-length or sheared index axis.
    """
    affine = LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=np.float64)
    axes = affine[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(axes)):
        raise GeometryError("the IJK-to-RAS matrix has a zero-length or non-finite index axis")
    direction = axes / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
        raise GeometryError("the IJK-to-RAS matrix is sheared; index axes must be perpendicular")
    return VolumeGrid(shape, affine[:3, 3], spacing, direction)


def markup_roi_parameters(roi: ROI) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slicer markups-ROI parameters of an engine ROI: centre (RAS), size (mm along the box
    axes), and the 3x3 matrix whose columns are the box axes in RAS (the rotation part of the
    ROI node's object-to-node matrix)."""
    axes_ras = LPS_TO_RAS[:3, :3] @ roi.direction.T
    return lps_to_ras_points(roi.center), roi.size.copy(), axes_ras


def roi_from_markup_parameters(center_ras: np.ndarray, size: np.ndarray, axes_ras: np.ndarray) -> ROI:
    """The engine ROI (LPS, rows of ``direction`` = box axes) of a Slicer markups ROI."""
    direction = (LPS_TO_RAS[:3, :3] @ np.asarray(axes_ras, dtype=np.float64)).T
    return ROI(ras_to_lps_points(center_ras), size, direction)


def _rigid_about(rotation: np.ndarray, center: np.ndarray) -> np.ndarray:
    """4x4 transform x -> rotation (x - center) + center."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = center - rotation @ center
    return matrix


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    length = float(np.linalg.norm(vector))
    if not length > 1e-9 or not np.isfinite(length):
        raise GeometryError(f"{what} has no direction (points coincide); place the landmarks apart")
    return vector / length


def realignment_from_landmarks(
    spine_points: np.ndarray, right_point: np.ndarray, left_point: np.ndarray, center: np.ndarray | None = None
) -> np.ndarray:
    """Rigid 4x4 transform (LPS) that turns the anatomy so the spine runs along +z (superior)
    and the patient's right-to-left line along +x, rotating about ``center`` (default: the mean
    of all landmarks).

    ``spine_points`` (N >= 2, 3) are ordered from inferior to superior (e.g. vertebral body
    centres or discs); their best-fit line gives the superior axis. ``right_point`` and
    ``left_point`` (e.g. the two pedicles of one vertebra) give the left axis, made
    perpendicular to the spine. The spine axis is trusted first because it is the longest and
    best-defined direction.
    """
    spine = np.asarray(spine_points, dtype=np.float64).reshape(-1, 3)
    if len(spine) < 2:
        raise GeometryError("the spine axis needs at least two landmarks (inferior first, superior last)")
    right = np.asarray(right_point, dtype=np.float64).reshape(3)
    left = np.asarray(left_point, dtype=np.float64).reshape(3)
    _, spread, axes = np.linalg.svd(spine - spine.mean(axis=0), full_matrices=False)
    superior = _unit(axes[0] * spread[0], "the spine axis")
    if np.dot(superior, spine[-1] - spine[0]) < 0:
        superior = -superior
    lateral = left - right
    lateral = _unit(lateral - np.dot(lateral, superior) * superior, "the right-to-left axis (across the spine)")
    posterior = np.cross(superior, lateral)
    rotation = np.stack([lateral, posterior, superior])  # rows: the measured L, P, S axes
    if center is None:
        center = np.vstack([spine, right, left]).mean(axis=0)
    return _rigid_about(rotation, np.asarray(center, dtype=np.float64).reshape(3))


def principal_axes(volume: Volume, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid (LPS mm), principal moments (mm², descending) and axes (rows, unit) of the voxels
    at or above ``threshold``, weighted equally (the shape of the thresholded bone).

    Raises GeometryError when fewer than 4 voxels pass the threshold.
    """
    k, j, i = np.nonzero(volume.array >= threshold)
    if len(i) < 4:
        raise GeometryError(
            f"only {len(i)} voxels are at or above the threshold {threshold:g}; lower the threshold to select the bone"
        )
    index = np.stack([i, j, k, np.ones_like(i)]).astype(np.float64)
    points = (volume.index_to_world_matrix() @ index)[:3].T
    centroid = points.mean(axis=0)
    covariance = np.cov((points - centroid).T, bias=True)
    moments, vectors = np.linalg.eigh(covariance)
    order = np.argsort(moments)[::-1]
    return centroid, moments[order], vectors[:, order].T


def realignment_from_principal_axes(volume: Volume, threshold: float) -> np.ndarray:
    """Rigid 4x4 transform (LPS) that turns the thresholded bone's principal axes onto the world
    axes they are closest to, rotating about the bone's centroid.

    Each principal axis is matched to the nearest world axis (the assignment with the largest
    total alignment) and given that axis's sign, so this corrects tilts of up to about 45
    degrees without flipping the patient; the third axis is chosen to keep the turn proper.
    """
    centroid, _, axes = principal_axes(volume, threshold)
    best = max(permutations(range(3)), key=lambda order: sum(abs(axes[a, w]) for a, w in enumerate(order)))
    measured = np.zeros((3, 3))
    for axis, world in enumerate(best):
        measured[world] = axes[axis] * np.sign(axes[axis, world] or 1.0)
    if np.linalg.det(measured) < 0:
        weakest = int(np.argmin(np.abs(np.diag(measured))))
        measured[weakest] = -measured[weakest]
    return _rigid_about(measured, centroid)
