"""One view's projection matrix from 2-D/3-D bead correspondences: PnP with known intrinsics
(OpenCV), DLT without them, and a geometric (reprojection-error) polish of a DLT matrix.

OpenCV's camera is right-handed (image y down, z forward, K[1,1] > 0). IXGS also allows a
mirrored detector (K[1,1] < 0, docs/geometry.md): then the rows are flipped (v -> -v), which
makes K proper (F K with F = diag(1, -1, 1)), OpenCV solves that camera, and P = F^-1 (F K) [R | t]
= K [R | t] composes back.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.optimize import least_squares

from ixgs_engine.errors import GeometryError
from ixgs_engine.geometry.projection import normalize_projection_matrix, project_points

MIN_PNP_POINTS = 4
MIN_DLT_POINTS = 6


def reprojection_errors(matrix: np.ndarray, points: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Pixel distances between the projections of ``points`` (N, 3) and ``uv`` (N, 2)."""
    projected, _ = project_points(matrix, points)
    return np.linalg.norm(projected - np.asarray(uv, dtype=np.float64), axis=1)


def extrinsics_matrix(intrinsics: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """P = K [R | t]."""
    return np.asarray(intrinsics, dtype=np.float64) @ np.hstack([rotation, np.reshape(translation, (3, 1))])


def _mirror(intrinsics: np.ndarray) -> np.ndarray:
    return np.diag([1.0, -1.0 if intrinsics[1, 1] < 0 else 1.0, 1.0])


def pnp(
    points: np.ndarray, uv: np.ndarray, intrinsics: np.ndarray, initial: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t with ``K [R | t]`` mapping ``points`` onto ``uv``
    (reprojection error minimized by Levenberg-Marquardt). ``initial`` (R, t) starts from a
    guess; otherwise SQPnP finds the global solution first."""
    points = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) < MIN_PNP_POINTS:
        raise GeometryError(f"PnP needs at least {MIN_PNP_POINTS} matched beads, got {len(points)}")
    flip = _mirror(intrinsics)
    camera = flip @ np.asarray(intrinsics, dtype=np.float64)
    image = np.ascontiguousarray(np.asarray(uv, dtype=np.float64).reshape(-1, 2) * [1.0, flip[1, 1]])
    if initial is not None:
        rvec = cv2.Rodrigues(np.asarray(initial[0], dtype=np.float64))[0]
        tvec = np.asarray(initial[1], dtype=np.float64).reshape(3, 1)
        ok, rvec, tvec = cv2.solvePnP(points, image, camera, None, rvec, tvec, True, cv2.SOLVEPNP_ITERATIVE)
    else:
        ok, rvec, tvec = cv2.solvePnP(points, image, camera, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise GeometryError("OpenCV's PnP found no pose for the matched beads")
    rvec, tvec = cv2.solvePnPRefineLM(points, image, camera, None, rvec, tvec)
    return cv2.Rodrigues(rvec)[0], tvec.reshape(3)


def pnp_ransac(
    points: np.ndarray, uv: np.ndarray, intrinsics: np.ndarray, threshold_px: float = 3.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """RANSAC PnP (OpenCV, mirrored detectors handled as in :func:`pnp`): (R, t, inlier
    mask), or None when no pose gathers 4 inliers."""
    points = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) < MIN_PNP_POINTS:
        return None
    flip = _mirror(intrinsics)
    camera = flip @ np.asarray(intrinsics, dtype=np.float64)
    image = np.ascontiguousarray(np.asarray(uv, dtype=np.float64).reshape(-1, 2) * [1.0, flip[1, 1]])
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        points, image, camera, None, reprojectionError=threshold_px, iterationsCount=200, flags=cv2.SOLVEPNP_SQPNP
    )
    if not ok or inliers is None or len(inliers) < MIN_PNP_POINTS:
        return None
    mask = np.zeros(len(points), dtype=bool)
    mask[inliers.ravel()] = True
    return cv2.Rodrigues(rvec)[0], tvec.reshape(3), mask


def _normalizer(points: np.ndarray) -> np.ndarray:
    """Hartley's similarity: centroid to the origin, mean distance sqrt(dim)."""
    dim = points.shape[1]
    center = points.mean(axis=0)
    scale = np.sqrt(dim) / max(np.mean(np.linalg.norm(points - center, axis=1)), 1e-12)
    transform = np.eye(dim + 1)
    transform[:dim, :dim] *= scale
    transform[:dim, dim] = -scale * center
    return transform


def check_non_coplanar(points: np.ndarray) -> None:
    """DLT needs beads that span 3-D: the smallest spread must not vanish."""
    spread = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    if spread[-1] < 0.02 * spread[0]:
        raise GeometryError(
            "the matched beads are (nearly) coplanar; a projection matrix without known "
            "intrinsics needs beads spread in 3-D"
        )


def dlt(points: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Direct linear transform with Hartley normalization: P (3x4, w > 0 for the points) from
    at least 6 non-coplanar correspondences."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    if len(points) < MIN_DLT_POINTS:
        raise GeometryError(f"DLT needs at least {MIN_DLT_POINTS} matched beads, got {len(points)}")
    check_non_coplanar(points)
    T3, T2 = _normalizer(points), _normalizer(uv)
    X = np.hstack([points, np.ones((len(points), 1))]) @ T3.T
    x = np.hstack([uv, np.ones((len(uv), 1))]) @ T2.T
    rows = []
    for Xi, (u, v, _) in zip(X, x, strict=True):
        rows.append(np.concatenate([Xi, np.zeros(4), -u * Xi]))
        rows.append(np.concatenate([np.zeros(4), Xi, -v * Xi]))
    _, _, vt = np.linalg.svd(np.asarray(rows))
    P = np.linalg.inv(T2) @ vt[-1].reshape(3, 4) @ T3
    if np.median(np.hstack([points, np.ones((len(points), 1))]) @ P[2]) < 0:
        P = -P
    return normalize_projection_matrix(P)


def polish_matrix(matrix: np.ndarray, points: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Minimize the reprojection error over all 11 degrees of freedom of P (from a DLT start)."""
    start = normalize_projection_matrix(matrix).ravel()

    def residuals(p: np.ndarray) -> np.ndarray:
        P = p.reshape(3, 4)
        hom = points @ P[:, :3].T + P[:, 3]
        return (hom[:, :2] / hom[:, 2:] - uv).ravel()

    fit = least_squares(residuals, start, method="lm", x_scale="jac")
    return normalize_projection_matrix(fit.x.reshape(3, 4))
