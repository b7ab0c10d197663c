"""Remove bead shadows from the views so the metal does not become streaks or blobs in the
reconstruction: mask each bead's disc (from the estimated pose, so beads that were hidden or
missed are covered too) and fill it with the harmonic (Laplace)
interpolation of its rim, directly on the line integrals: the smoothest fill that meets the
surrounding anatomy, with no texture of its own that could become a structure in 3-D.
(OpenCV's Telea inpainting returns noise for float32 images in OpenCV 5, hence a sparse solve.)"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve

from ixgs_engine.poses.correspondence import projected_beads
from ixgs_engine.poses.phantom import BeadPhantom


def _discs(centres: np.ndarray, radii: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    height, width = image_shape
    vs, us = np.mgrid[:height, :width]
    mask = np.zeros(image_shape, dtype=bool)
    for (u, v), r in zip(centres, radii, strict=True):
        if -r <= u <= width - 1 + r and -r <= v <= height - 1 + r:
            mask |= (us - u) ** 2 + (vs - v) ** 2 <= r**2
    return mask


def bead_mask(
    matrix: np.ndarray, phantom: BeadPhantom, image_shape: tuple[int, int], margin_px: float = 1.5
) -> np.ndarray:
    """Pixels within ``margin_px`` of any bead's predicted shadow."""
    uv, radii, depth = projected_beads(matrix, phantom)
    front = depth > 0
    return _discs(uv[front], radii[front] + margin_px, image_shape)


def inpaint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image (float32) with the masked pixels replaced by the solution of Laplace's equation
    whose boundary values are the unmasked neighbours (4-neighbourhood; image borders mirror)."""
    pixels = np.asarray(image, dtype=np.float64)
    out = pixels.copy()
    inside = np.argwhere(mask)
    if len(inside) == 0:
        return out.astype(np.float32)
    if mask.all():
        raise ValueError("cannot inpaint an image that is masked everywhere")
    height, width = mask.shape
    number = -np.ones(mask.shape, dtype=np.int64)
    number[mask] = np.arange(len(inside))
    rows, cols, values = [], [], []
    rhs = np.zeros(len(inside))
    degree = np.zeros(len(inside))
    for dv, du in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        v, u = inside[:, 0] + dv, inside[:, 1] + du
        exists = (v >= 0) & (v < height) & (u >= 0) & (u < width)
        idx = np.nonzero(exists)[0]
        degree[idx] += 1
        neighbour = number[v[idx], u[idx]]
        unknown = neighbour >= 0
        rows.extend(idx[unknown])
        cols.extend(neighbour[unknown])
        values.extend([-1.0] * int(unknown.sum()))
        rhs[idx[~unknown]] += pixels[v[idx[~unknown]], u[idx[~unknown]]]
    rows.extend(range(len(inside)))
    cols.extend(range(len(inside)))
    values.extend(degree)
    system = coo_matrix((values, (rows, cols)), shape=(len(inside), len(inside))).tocsr()
    out[mask] = spsolve(system, rhs)
    return out.astype(np.float32)
