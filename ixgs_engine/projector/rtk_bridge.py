"""Optional bridge to RTK (itk-rtk), the primitives: our 3x4 projection matrices as an RTK
geometry (and back), our volumes and projection stacks as ITK images, circular orbits fitted to
matrices, and RTK's Joseph forward projector. RTK's reconstructions built on them are in
``classical.rtk``.

RTK is an independent, established implementation, so the tests and benchmarks use it as the
reference our own projector and SART are checked against. itk-rtk is an optional dependency:
it is imported inside the functions, never at module import.

Coordinates: RTK's projection stack is an ITK image (W, H, N) with origin 0, identity
direction and spacing (su, sv, 1), so index (u, v) is our pixel (u, v) and the geometry's
detector axes are the world step vectors of one pixel along u and v (see
:func:`ixgs_engine.geometry.projection.detector_frame`). RTK's ``GetMatrix(i)`` maps a world
point to the *physical* (mm) coordinates of that projection image, so our P is
``diag(1/su, 1/sv, 1) @ GetMatrix(i)`` up to a non-zero factor (see :func:`matrices_from_rtk`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ixgs_engine.errors import GeometryError
from ixgs_engine.geometry.projection import detector_frame, normalize_projection_matrix, source_position
from ixgs_engine.volume import Volume, VolumeGrid

INSTALL_HINT = "install the rtk extra: pip install 'ixgs-engine[rtk]'"

# Relative tolerance on the pixel aspect ratio shared by all views (RTK has one stack spacing).
_ASPECT_TOLERANCE = 1e-6
# Cosine of the angle between the pixel axes above which RTK refuses a detector.
_SKEW_TOLERANCE = 1e-6
# The detector is placed at least this factor beyond the deepest volume corner: RTK clips each
# ray at its detector pixel.
_DETECTOR_MARGIN = 1.25


class RTKGeometry(NamedTuple):
    """An RTK geometry and the pixel spacing (su, sv) mm its projection images must have
    (origin 0, identity direction)."""

    geometry: Any
    spacing: tuple[float, float]


def import_rtk() -> tuple[Any, Any]:
    """``(itk, itk.RTK)``, or an ImportError that says how to install them."""
    try:
        import itk
        from itk import RTK as rtk
    except (ImportError, AttributeError) as error:
        raise ImportError(f"RTK (itk-rtk) is not available; {INSTALL_HINT}") from error
    return itk, rtk


def as_matrices(matrices: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """(N, 3, 4) float64 array of matrices normalized so that w is the depth in mm."""
    stacked = np.stack([normalize_projection_matrix(P) for P in matrices])
    if stacked.shape[0] == 0:
        raise GeometryError("at least one projection matrix is needed")
    return stacked


def rtk_geometry(matrices: np.ndarray | Sequence[np.ndarray], *, u_spacing: float = 1.0) -> RTKGeometry:
    """RTK geometry with one arbitrary-geometry projection per matrix, and the pixel spacing
    (su, sv) its projection images must have (origin 0, identity direction).

    P alone fixes the rays, not where the detector plane is: only the focal length in pixels
    is known. Each view's detector is put at the depth where one pixel step along u is
    ``u_spacing`` mm, which is the true panel when ``u_spacing`` is the true pixel pitch. RTK
    integrates only from the source to the detector, so projectors need the panel beyond the
    volume (:func:`rtk_forward_project` and :func:`rtk_sart` choose it so). Mirrored
    detectors (det M < 0) are fine: RTK then sees negative source distances, which its
    matrices handle. Raises GeometryError for skewed pixel axes, or pixel aspect ratios that
    differ between views (RTK has one spacing per projection stack).
    """
    itk, rtk = import_rtk()
    if not u_spacing > 0:
        raise GeometryError(f"u_spacing must be positive, got {u_spacing}")
    normalized = as_matrices(matrices)
    geometry = rtk.ThreeDCircularProjectionGeometry.New()
    v_spacings = []
    for index, P in enumerate(normalized):
        _, unit_u, _ = detector_frame(P, 1.0)
        origin, step_u, step_v = detector_frame(P, u_spacing / np.linalg.norm(unit_u))
        du, dv = np.linalg.norm(step_u), np.linalg.norm(step_v)
        if abs(step_u @ step_v) > _SKEW_TOLERANCE * du * dv:
            raise GeometryError(f"view {index}: skewed pixel axes (not perpendicular), which RTK cannot represent")
        added = geometry.AddProjection(
            itk.Point[itk.D, 3](source_position(P).tolist()),
            itk.Point[itk.D, 3](origin.tolist()),
            itk.Vector[itk.D, 3]((step_u / du).tolist()),
            itk.Vector[itk.D, 3]((step_v / dv).tolist()),
        )
        if not added:
            raise GeometryError(f"view {index}: RTK refused the detector orientation")
        v_spacings.append(dv)
    v_spacing = float(np.mean(v_spacings))
    if np.ptp(v_spacings) > _ASPECT_TOLERANCE * v_spacing:
        raise GeometryError("the views' pixel aspect ratios differ; RTK needs one pixel spacing for all projections")
    return RTKGeometry(geometry, (float(u_spacing), v_spacing))


def matrices_from_rtk(geometry: Any, spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """Our (N, 3, 4) matrices (w = depth in mm, > 0 in front of the source) from an RTK
    geometry whose projection images have identity direction and the given 2-D origin and
    spacing (mm)."""
    itk, _ = import_rtk()
    su, sv = spacing
    ou, ov = origin
    pixel_from_physical = np.array([[1.0 / su, 0.0, -ou / su], [0.0, 1.0 / sv, -ov / sv], [0.0, 0.0, 1.0]])
    out = []
    for index in range(len(geometry.GetGantryAngles())):
        P = normalize_projection_matrix(pixel_from_physical @ itk.array_from_matrix(geometry.GetMatrix(index)))
        detector_point = itk.array_from_matrix(geometry.GetProjectionCoordinatesToFixedSystemMatrix(index))[:3, 3]
        out.append(P if P[2, :3] @ detector_point + P[2, 3] > 0 else -P)
    return np.stack(out)


def u_spacing_beyond(grid: VolumeGrid, matrices: np.ndarray) -> float:
    """Smallest u pitch for :func:`rtk_geometry` that puts every view's detector beyond the
    deepest corner of the volume's box (voxel edges, not centres), with a margin."""
    nx, ny, nz = grid.size_ijk
    corners_ijk = np.array([[i, j, k] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)])
    corners = corners_ijk @ (grid.direction @ np.diag(grid.spacing)).T + grid.origin
    pitches = []
    for P in matrices:
        depth = max(float(np.max(corners @ P[2, :3] + P[2, 3])), 1.0)
        _, unit_u, _ = detector_frame(P, 1.0)
        pitches.append(_DETECTOR_MARGIN * depth * np.linalg.norm(unit_u))
    return float(max(pitches))


def volume_image(itk: Any, array: np.ndarray, grid: VolumeGrid) -> Any:
    """float32 ITK image of an array [k, j, i] with the grid's origin, spacing and direction."""
    image = itk.image_from_array(np.ascontiguousarray(array, dtype=np.float32))
    image.SetOrigin(grid.origin.tolist())
    image.SetSpacing(grid.spacing.tolist())
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(grid.direction)))
    return image


def projection_image(itk: Any, stack: np.ndarray, spacing: tuple[float, float]) -> Any:
    """float32 ITK projection stack (W, H, N) of an array (N, H, W): origin 0, given spacing."""
    image = itk.image_from_array(np.ascontiguousarray(stack, dtype=np.float32))
    image.SetOrigin([0.0, 0.0, 0.0])
    image.SetSpacing([spacing[0], spacing[1], 1.0])
    return image


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int]:
    height, width = (int(n) for n in image_shape)
    if height < 1 or width < 1:
        raise ValueError(f"image_shape must be (H, W) with positive sizes, got {tuple(image_shape)}")
    return height, width


def rtk_forward_project(
    volume: Volume, matrices: np.ndarray | Sequence[np.ndarray], image_shape: Sequence[int]
) -> np.ndarray:
    """Line integrals (N, H, W), float32, of ``volume`` by RTK's Joseph forward projector."""
    itk, rtk = import_rtk()
    normalized = as_matrices(matrices)
    height, width = _check_image_shape(image_shape)
    geometry, spacing = rtk_geometry(normalized, u_spacing=u_spacing_beyond(volume, normalized))
    image_type = itk.Image[itk.F, 3]
    projector = rtk.JosephForwardProjectionImageFilter[image_type, image_type].New()
    projector.SetInput(0, projection_image(itk, np.zeros((len(normalized), height, width)), spacing))
    projector.SetInput(1, volume_image(itk, volume.array, volume))
    projector.SetGeometry(geometry)
    projector.Update()
    return itk.array_from_image(projector.GetOutput()).copy()


# A circular orbit's sources may leave their plane and circle, and its central rays miss the
# rotation axis, by at most this fraction of the orbit radius.
_CIRCULAR_TOLERANCE = 1e-3


def fit_circular_orbit(matrices: np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Centre and unit axis of the circular orbit the views follow (sources on a circle, every
    central ray through the axis and perpendicular to it); GeometryError says why not."""
    normalized = as_matrices(matrices)
    if len(normalized) < 3:
        raise GeometryError(f"{len(normalized)} views cannot define an orbit")
    sources = np.stack([source_position(P) for P in normalized])
    centroid = sources.mean(axis=0)
    axes = np.linalg.svd(sources - centroid)[2]
    normal = axes[2]
    in_plane = (sources - centroid) @ axes[:2].T
    # Kasa circle fit: x^2 + y^2 + D x + E y + F = 0.
    design = np.column_stack([in_plane, np.ones(len(in_plane))])
    (d, e, f), *_ = np.linalg.lstsq(design, -(in_plane**2).sum(axis=1), rcond=None)
    centre_2d = -0.5 * np.array([d, e])
    radius = float(np.sqrt(max(centre_2d @ centre_2d - f, 0.0)))
    if not radius > 0:
        raise GeometryError("the sources do not lie on a circle")
    tolerance = _CIRCULAR_TOLERANCE * radius
    off_plane = float(np.max(np.abs((sources - centroid) @ normal)))
    if off_plane > tolerance:
        raise GeometryError(f"the sources leave the orbit plane by up to {off_plane:.2f} mm")
    off_circle = float(np.max(np.abs(np.linalg.norm(in_plane - centre_2d, axis=1) - radius)))
    if off_circle > tolerance:
        raise GeometryError(f"the source-to-axis distance varies by up to {off_circle:.2f} mm")
    centre = centroid + centre_2d @ axes[:2]
    for index, P in enumerate(normalized):
        direction = P[2, :3]  # unit viewing direction (w = depth)
        if abs(direction @ normal) > _CIRCULAR_TOLERANCE:
            raise GeometryError(f"view {index}: the central ray is tilted out of the orbit plane")
        to_centre = centre - sources[index]
        miss = np.linalg.norm(to_centre - (to_centre @ direction) * direction)
        if miss > tolerance:
            raise GeometryError(f"view {index}: the central ray misses the rotation axis by {miss:.2f} mm")
    return centre, normal


def unmirrored(matrices: np.ndarray, stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views whose detector is mirrored (det M < 0) flipped left-right, image and matrix, so
    RTK's FDK weights see positive source-to-detector distances."""
    width = stack.shape[2]
    flip = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out_matrices, out_stack = matrices.copy(), stack.copy()
    for index, P in enumerate(matrices):
        if np.linalg.det(P[:, :3]) < 0:
            out_matrices[index] = flip @ P
            out_stack[index] = stack[index, :, ::-1]
    return out_matrices, out_stack


def orbit_frame(centre: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """4x4 rigid map from world to RTK's circular frame: the orbit centre to the origin, its
    axis to +y (RTK's rotation axis), so RTK's gantry angles are the orbit angles."""
    helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
    first = np.cross(axis, helper)
    first /= np.linalg.norm(first)
    rotation = np.stack([first, axis, np.cross(first, axis)])
    frame = np.eye(4)
    frame[:3, :3] = rotation
    frame[:3, 3] = -rotation @ centre
    return frame
