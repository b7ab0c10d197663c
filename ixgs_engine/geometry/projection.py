"""3x4 projection matrices: normalization, decomposition into intrinsics/rotation/source, rays.

Convention (docs/scan-format.md): for a world point X (mm), ``P @ (X, 1) = (u*w, v*w, w)``
with ``u`` the column and ``v`` the row of the stored image, (0, 0) the centre of the first
pixel, and ``w > 0`` in front of the source. ``P = [M | p4]`` is defined up to a positive factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ixgs_engine.errors import GeometryError


@dataclass(frozen=True)
class PoseDecomposition:
    """``P ~ K @ [R | -R @ source]``.

    ``K`` is upper triangular with ``K[2, 2] = 1`` and ``K[0, 0] > 0`` (pixels); ``R`` is a
    proper rotation whose third row is the principal (viewing) direction in world
    coordinates. A mirrored detector (det M < 0) shows up as ``K[1, 1] < 0``.
    """

    intrinsics: np.ndarray
    rotation: np.ndarray
    source: np.ndarray

    @property
    def mirrored(self) -> bool:
        """True when the detector axes are mirrored relative to the viewing direction."""
        return bool(self.intrinsics[1, 1] < 0)

    @property
    def principal_point(self) -> np.ndarray:
        """(u, v) where the principal ray (perpendicular to the detector) hits it."""
        return self.intrinsics[:2, 2].copy()

    @property
    def viewing_direction(self) -> np.ndarray:
        """Unit world vector from the source along the principal ray."""
        return self.rotation[2].copy()


def validate_projection_matrix(matrix: np.ndarray) -> np.ndarray:
    """Return P as a finite float64 3x4 array with a non-singular left 3x3 block."""
    P = np.asarray(matrix, dtype=np.float64)
    if P.shape != (3, 4):
        raise GeometryError(f"a projection matrix must be 3x4, got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise GeometryError("the projection matrix has non-finite entries")
    M = P[:, :3]
    singular = np.linalg.svd(M, compute_uv=False)
    if singular[-1] <= 1e-12 * singular[0]:
        raise GeometryError("the projection matrix is singular (its left 3x3 block has no inverse)")
    return P


def normalize_projection_matrix(matrix: np.ndarray) -> np.ndarray:
    """Scale P so that its third row is a unit vector: then ``w`` is the depth in mm along
    the principal ray (positive in front of the source)."""
    P = validate_projection_matrix(matrix)
    return P / np.linalg.norm(P[2, :3])


def source_position(matrix: np.ndarray) -> np.ndarray:
    """The X-ray source: the null space of P, ``S = -M^-1 p4``."""
    P = validate_projection_matrix(matrix)
    return -np.linalg.solve(P[:, :3], P[:, 3])


def _rq(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RQ decomposition ``M = K @ Q`` with K upper triangular and Q orthogonal."""
    flip = np.flipud(np.eye(3))
    q, r = np.linalg.qr((flip @ M).T)
    K = flip @ r.T @ flip
    Q = flip @ q.T
    return K, Q


def decompose_projection_matrix(matrix: np.ndarray) -> PoseDecomposition:
    """Split P into intrinsics, rotation and source position (see :class:`PoseDecomposition`)."""
    P = normalize_projection_matrix(matrix)
    K, Q = _rq(P[:, :3])
    # Make the diagonal of K positive where the convention allows, folding signs into Q.
    signs = np.sign(np.diag(K))
    signs[signs == 0] = 1.0
    K = K @ np.diag(signs)
    Q = np.diag(signs) @ Q
    # Q may be a reflection (mirrored detector): move the reflection into K's second column so
    # that the rotation stays proper, keeping K[0,0] > 0 and K[2,2] > 0.
    if np.linalg.det(Q) < 0:
        K = K @ np.diag([1.0, -1.0, 1.0])
        Q = np.diag([1.0, -1.0, 1.0]) @ Q
    scale = K[2, 2]
    K = K / scale
    return PoseDecomposition(intrinsics=K, rotation=Q, source=source_position(P))


def compose_projection_matrix(intrinsics: np.ndarray, rotation: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Build ``P = K @ [R | -R @ S]`` (inverse of :func:`decompose_projection_matrix`)."""
    K = np.asarray(intrinsics, dtype=np.float64)
    R = np.asarray(rotation, dtype=np.float64)
    S = np.asarray(source, dtype=np.float64).reshape(3)
    return K @ np.hstack([R, (-R @ S)[:, None]])


def project_points(matrix: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (N, 3) to pixel coordinates (N, 2) and depths w (N,) in the
    normalization of :func:`normalize_projection_matrix`."""
    P = normalize_projection_matrix(matrix)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    hom = pts @ P[:, :3].T + P[:, 3]
    w = hom[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = hom[:, :2] / w[:, None]
    return uv, w


def ray_directions(matrix: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """World directions (N, 3) of the rays from the source through pixels (u, v), scaled so
    that a unit step advances the depth w by 1 mm (they point away from the source)."""
    P = normalize_projection_matrix(matrix)
    pix = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    hom = np.hstack([pix, np.ones((pix.shape[0], 1))])
    return np.linalg.solve(P[:, :3], hom.T).T


def detector_frame(matrix: np.ndarray, distance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A physical detector plane equivalent to P at ``distance`` mm from the source.

    Returns the world position of pixel (0, 0) and the world vectors of one pixel step along
    u and along v. Any distance gives the same rays; RTK and other tools that want a
    detector plane can be fed these.
    """
    P = normalize_projection_matrix(matrix)
    M_inv = np.linalg.inv(P[:, :3])
    source = -M_inv @ P[:, 3]
    origin = source + distance * M_inv[:, 2]
    return origin, distance * M_inv[:, 0], distance * M_inv[:, 1]


def rigid_motion_between(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The 4x4 world motion ``M`` with ``after ~ before @ M`` for two views with the same
    intrinsics (a pose refined rigidly): ``M`` rotates by ``R_before^T R_after`` and takes the
    after-source to the before-source."""
    first, second = decompose_projection_matrix(before), decompose_projection_matrix(after)
    rotation = first.rotation.T @ second.rotation
    motion = np.eye(4)
    motion[:3, :3] = rotation
    motion[:3, 3] = first.source - rotation @ second.source
    return motion


def rigid_motion(rotation_vector: np.ndarray, translation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The 4x4 world motion ``x -> R (x - c) + c + t``: a rotation (vector, radians) about
    ``centre`` then a shift ``translation`` (mm); a view whose scene moved so has matrix ``P M``."""
    rotation = rotation_matrix(rotation_vector)
    centre = np.asarray(centre, dtype=np.float64)
    motion = np.eye(4)
    motion[:3, :3] = rotation
    motion[:3, 3] = centre - rotation @ centre + np.asarray(translation, dtype=np.float64)
    return motion


def rotation_matrix(rotation_vector: np.ndarray) -> np.ndarray:
    """The 3x3 rotation of a rotation vector (radians; Rodrigues' formula)."""
    vector = np.asarray(rotation_vector, dtype=np.float64).reshape(3)
    angle = float(np.linalg.norm(vector))
    if angle < 1e-15:
        return np.eye(3)
    x, y, z = vector / angle
    skew = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * skew + (1.0 - np.cos(angle)) * skew @ skew
