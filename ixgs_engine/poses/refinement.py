"""Joint refinement of all views: poses (and shared intrinsics) that minimize the bead
reprojection error over every view at once (scipy least_squares, robust soft-L1 loss).

Parameters: per view a rotation vector and translation; shared by all views fx, |fy|, cu, cv
(zero skew; each view keeps its own mirror sign) when the intrinsics are refined. A C-arm's
intrinsics barely change between views, so sharing them makes each view's pose better
determined than a per-view DLT with its 11 free parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import lil_matrix
from scipy.spatial.transform import Rotation

from ixgs_engine.geometry.projection import decompose_projection_matrix


@dataclass
class ViewObservations:
    """Matched beads of one view: world points (N, 3), pixels (N, 2), current matrix."""

    points: np.ndarray
    uv: np.ndarray
    matrix: np.ndarray


def _intrinsics(shared: np.ndarray, sign: float) -> np.ndarray:
    fx, fy, cu, cv = shared
    return np.array([[fx, 0.0, cu], [0.0, sign * fy, cv], [0.0, 0.0, 1.0]])


def refine_views(
    views: list[ViewObservations], intrinsics: np.ndarray | None, refine_intrinsics: bool, robust_scale_px: float = 1.0
) -> list[np.ndarray]:
    """Refined matrices (one per view). ``intrinsics`` are the known K (fixed unless
    ``refine_intrinsics``); None: start from the median of the views' decomposed intrinsics and
    refine them (shared)."""
    poses = [decompose_projection_matrix(v.matrix) for v in views]
    signs = np.array([-1.0 if p.mirrored else 1.0 for p in poses])
    if intrinsics is not None:
        shared = np.array([intrinsics[0, 0], abs(intrinsics[1, 1]), intrinsics[0, 2], intrinsics[1, 2]])
        # A view decomposed with the known K: rotation nearest to K^-1 P.
        starts = []
        for view, sign in zip(views, signs, strict=True):
            A = np.linalg.solve(_intrinsics(shared, sign), view.matrix)
            A = A / np.linalg.norm(A[2, :3])
            u, _, vt = np.linalg.svd(A[:, :3])
            starts.append((u @ vt, A[:, 3]))
    else:
        K = np.array([p.intrinsics for p in poses])
        shared = np.median(np.stack([K[:, 0, 0], np.abs(K[:, 1, 1]), K[:, 0, 2], K[:, 1, 2]], axis=1), axis=0)
        starts = [(p.rotation, -p.rotation @ p.source) for p in poses]
        refine_intrinsics = True
    x0 = np.concatenate([np.concatenate([Rotation.from_matrix(R).as_rotvec(), t]) for R, t in starts])
    if refine_intrinsics:
        x0 = np.concatenate([x0, shared])
    count = len(views)

    def unpack(x: np.ndarray):
        k = x[6 * count :] if refine_intrinsics else shared
        return [
            (Rotation.from_rotvec(x[6 * i : 6 * i + 3]).as_matrix(), x[6 * i + 3 : 6 * i + 6]) for i in range(count)
        ], k

    def residuals(x: np.ndarray) -> np.ndarray:
        extrinsics, k = unpack(x)
        out = []
        for view, (R, t), sign in zip(views, extrinsics, signs, strict=True):
            cam = view.points @ R.T + t
            hom = cam @ _intrinsics(k, sign).T
            out.append((hom[:, :2] / hom[:, 2:] - view.uv).ravel())
        return np.concatenate(out)

    sizes = [2 * len(v.points) for v in views]
    sparsity = lil_matrix((sum(sizes), len(x0)), dtype=int)
    row = 0
    for i, size in enumerate(sizes):
        sparsity[row : row + size, 6 * i : 6 * i + 6] = 1
        if refine_intrinsics:
            sparsity[row : row + size, 6 * count :] = 1
        row += size
    fit = least_squares(residuals, x0, jac_sparsity=sparsity, loss="soft_l1", f_scale=robust_scale_px, x_scale="jac")
    extrinsics, k = unpack(fit.x)
    return [_intrinsics(k, sign) @ np.hstack([R, t[:, None]]) for (R, t), sign in zip(extrinsics, signs, strict=True)]
