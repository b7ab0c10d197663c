"""The splat stage every render backend shares: Gaussians in the normalized scene become 2-D
splats on a detector (or 3-D ones on a voxel grid), with the culling, cutoff boxes and support
cut that define what a backend sums.

Per-Gaussian geometry (projection, footprint, line-integral factor, window placement) is O(N)
and computed in float64, so thin Gaussians keep their small eigenvalues. What a backend adds is
an :class:`Accumulator`: the O(samples x Gaussians) sum of the splats at the samples of a
:class:`SampleGrid` (``render/torch_windows.py``: chunked windows in PyTorch, the reference;
``render/triton_backend.py``: tile-binned Triton kernels). ``render/renderer.py`` composes the
two into a :class:`~ixgs_engine.render.backend.RenderBackend`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy.stats import chi2

from ixgs_engine.volume import VolumeGrid

CUTOFF_SIGMAS = 3.0  # footprints on the detector are cut at Mahalanobis distance 3 ...
# ... which drops exp(-4.5) (1.1 %) of a 2-D Gaussian's mass. Voxels are cut at the 3-D radius that
# drops the same fraction, so a voxelized volume carries the mass its rendered images show.
VOXEL_CUTOFF_SIGMAS = math.sqrt(chi2.isf(math.exp(-0.5 * CUTOFF_SIGMAS**2), 3))
NEAR_DEPTH = 1e-2  # normalized units: Gaussians closer to the source plane (or behind it) are culled
SUPPORT_TOLERANCE = 1e-6


def inverse_symmetric(matrices: torch.Tensor) -> torch.Tensor:
    """Inverse of symmetric 2x2 or 3x3 matrices (..., d, d) by the adjugate (batched, differentiable)."""
    adjugate, det = adjugate_symmetric(matrices)
    return adjugate / det[..., None, None]


def adjugate_symmetric(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjugate (..., d, d) and determinant (...) of symmetric 2x2 or 3x3 matrices, elementwise
    (batched tiny linear algebra is far slower through LAPACK / bmm)."""
    dims = matrices.shape[-1]
    entries = matrices.reshape(*matrices.shape[:-2], dims * dims).unbind(dim=-1)
    if dims == 2:
        a, b, _, c = entries
        adjugate = torch.stack([c, -b, -b, a], dim=-1)
        det = a * c - b * b
    else:
        a, b, c, _, d, e, _, _, f = entries
        m00, m01, m02 = d * f - e * e, c * e - b * f, b * e - c * d
        m11, m12, m22 = a * f - c * c, b * c - a * e, a * d - b * b
        adjugate = torch.stack([m00, m01, m02, m01, m11, m12, m02, m12, m22], dim=-1)
        det = a * m00 + b * m01 + c * m02
    return adjugate.reshape(matrices.shape), det


def symmetric_times(matrices: torch.Tensor, vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Components of ``M v`` for symmetric 3x3 matrices (N, 3, 3) and vector components
    broadcasting against (N,) (structure of arrays)."""
    m00, m01, m02, _, m11, m12, _, _, m22 = matrices.reshape(-1, 9).unbind(dim=1)
    x, y, z = vector
    return [m00 * x + m01 * y + m02 * z, m01 * x + m11 * y + m12 * z, m02 * x + m12 * y + m22 * z]


def dot3(first: Sequence[torch.Tensor], second: Sequence[torch.Tensor]) -> torch.Tensor:
    return first[0] * second[0] + first[1] * second[1] + first[2] * second[2]


def monomial_pairs(dims: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(dims) for j in range(i, dims)]


@dataclass(frozen=True)
class SampleGrid:
    """Where splats are summed: the integer sample positions of a grid of ``sizes`` (x first), one
    copy per view, at flat index ``view * prod(sizes) + x . strides``; every splat is cut at
    Mahalanobis distance ``cutoff_sigmas``."""

    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    views: int
    cutoff_sigmas: float

    @property
    def numel(self) -> int:
        return self.views * math.prod(self.sizes)


@dataclass(frozen=True)
class Splats:
    """Gaussians in the sample index units of a :class:`SampleGrid`: centres (K, d) and covariances
    (K, d, d) in float64, amplitudes (K,), the view (K,) each is drawn in, and which take part (K,
    bool; None: all)."""

    centres: torch.Tensor
    covariances: torch.Tensor
    amplitudes: torch.Tensor
    view: torch.Tensor
    active: torch.Tensor | None = None


def cutoff_boxes(splats: Splats, grid: SampleGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of the splats to draw (active, with a non-degenerate covariance and a sample inside
    their cutoff box) and every splat's cutoff box clipped to the grid: integer-valued float64
    lower and upper sample coordinates (K, d)."""
    centres, covariances = splats.centres.detach(), splats.covariances.detach()
    n = torch.tensor(list(grid.sizes), dtype=torch.float64, device=centres.device)
    half = grid.cutoff_sigmas * torch.sqrt(torch.diagonal(covariances, dim1=1, dim2=2).clamp_min(0.0))
    low = torch.ceil(centres - half).clamp_min(0.0)
    high = torch.minimum(torch.floor(centres + half), n - 1.0)
    det = adjugate_symmetric(covariances)[1]
    keep = (low <= high).all(dim=1) & (det > 0) & torch.isfinite(det)
    if splats.active is not None:
        keep &= splats.active
    return torch.nonzero(keep).squeeze(1), low, high


@dataclass(frozen=True)
class Cut:
    """Where each sample's ray meets the support box, and each splat's 1-D profile along its
    ray: ``near`` / ``far`` (numel,) distances from the source at which the sample's ray
    enters / leaves the box (equal where it misses), ``depth`` (K,) the distance of the
    splat's centre from the source, ``spread`` (K,) its standard deviation along the ray, and
    ``inside`` (K,) whether it is centred in the box (it keeps the part of each ray inside the
    box; the others keep the part outside)."""

    near: torch.Tensor
    far: torch.Tensor
    depth: torch.Tensor
    spread: torch.Tensor
    inside: torch.Tensor


def ray_box_distances(
    P: torch.Tensor, image_shape: tuple[int, int], support: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (V * H * W,) from each view's source at which every pixel's ray enters and
    leaves the box of half-sizes ``support`` (both 0 where it misses), flat in render order."""
    height, width = image_shape
    v, u = torch.meshgrid(
        torch.arange(height, dtype=P.dtype, device=P.device),
        torch.arange(width, dtype=P.dtype, device=P.device),
        indexing="ij",
    )
    pixels = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(height * width, dtype=P.dtype, device=P.device)])
    directions = torch.linalg.solve(P[:, :, :3], pixels.expand(P.shape[0], 3, -1))  # (V, 3, HW), w = 1 > 0
    directions = directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)
    source = -torch.linalg.solve(P[:, :, :3], P[:, :, 3])
    near = torch.zeros(directions.shape[0], directions.shape[2], dtype=P.dtype, device=P.device)
    far = torch.full_like(near, math.inf)
    for axis, half in enumerate(support):
        step = directions[:, axis]
        safe = torch.where(step.abs() < 1e-12, torch.full_like(step, 1e-12), step)
        first, second = (-half - source[:, axis, None]) / safe, (half - source[:, axis, None]) / safe
        near = torch.maximum(near, torch.minimum(first, second))
        far = torch.minimum(far, torch.maximum(first, second))
    missed = far <= near
    return torch.where(missed, 0.0, near).reshape(-1), torch.where(missed, 0.0, far).reshape(-1)


def centred_in(means: torch.Tensor, support: Sequence[float]) -> torch.Tensor:
    """Which Gaussians (N,) are centred in the support box (faces included): the side of the
    box each one belongs to (no gradient)."""
    return (means.detach().abs() <= means.new_tensor(list(support))).all(dim=1)


def near_a_face(
    means: torch.Tensor, covariances: torch.Tensor, support: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which Gaussians (N,) are centred in the box, and which have part of their 3-sigma box on
    the other side of a face (only those need cutting)."""
    centre = means.detach().to(torch.float64)
    reach = 3.0 * torch.sqrt(torch.diagonal(covariances.detach().to(torch.float64), dim1=1, dim2=2).clamp_min(0.0))
    half = centre.new_tensor(list(support))
    inside = centred_in(centre, support)
    crosses_out = (centre.abs() + reach > half).any(dim=1)
    reaches_in = (centre.abs() - reach < half).all(dim=1)
    return inside, torch.where(inside, crosses_out, reaches_in)


@dataclass(frozen=True)
class Projection:
    """Gaussians splatted onto V views: ``splats`` (V * N, view-major) on ``grid`` (the
    detector's pixels), and what the support cut needs: the normalized matrices ``P`` (V, 3, 4),
    and per splat the distance of its centre from the source (``depth``) and the standard
    deviation of its profile along that ray (``spread``), both (V * N,)."""

    splats: Splats
    grid: SampleGrid
    P: torch.Tensor
    depth: torch.Tensor
    spread: torch.Tensor


def project(
    means: torch.Tensor,
    covariances: torch.Tensor,
    densities: torch.Tensor,
    matrices: torch.Tensor,
    image_shape: tuple[int, int],
    screen_offsets: torch.Tensor | None = None,
) -> Projection:
    """Every Gaussian's splat in every view (differentiable in all inputs).

    For a centre p with ``(a, b, w) = P (p, 1)`` and ``u = (a/w, b/w)``, the footprint is
    ``J Sigma J^T`` with ``J = [P0 - u_0 P2; P1 - u_1 P2] / w`` (rows of P's left block:
    mirrored detectors, skew and off-centre principal points need nothing special), and the
    central line integral is ``rho sqrt(2 pi / (r^T Sigma^-1 r))``, r the unit direction
    from the source (the null space of P) to p. Gaussians closer to the source plane than
    ``NEAR_DEPTH`` (or behind it) are inactive.
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    views = matrices.shape[0]
    P = matrices.to(device=means.device, dtype=torch.float64)
    P = P / torch.linalg.vector_norm(P[:, 2, :3], dim=1)[:, None, None]
    # Structure of arrays: every quantity is a (V, N) or (N,) tensor, since elementwise
    # formulas beat batched 3x3 algebra by far at these sizes.
    row = [[P[:, r, c, None] for c in range(4)] for r in range(3)]
    centre = means.to(torch.float64).unbind(dim=1)
    sigma = covariances.to(torch.float64)
    a, b, w = (dot3(r[:3], centre) + r[3] for r in row)
    front = w > NEAR_DEPTH
    inv_depth = 1.0 / torch.where(front, w, torch.ones_like(w))  # finite everywhere
    u, v = a * inv_depth, b * inv_depth
    j0 = [(row[0][c] - u * row[2][c]) * inv_depth for c in range(3)]
    j1 = [(row[1][c] - v * row[2][c]) * inv_depth for c in range(3)]
    sigma_j0 = symmetric_times(sigma, j0)
    cov_uu, cov_uv, cov_vv = dot3(j0, sigma_j0), dot3(j1, sigma_j0), dot3(j1, symmetric_times(sigma, j1))

    source = -torch.linalg.solve(P[:, :, :3], P[:, :, 3])
    ray = [centre[c] - source[:, c, None] for c in range(3)]
    adjugate, det = adjugate_symmetric(sigma)
    # r^T Sigma^-1 r / |r|^2 = r^T adj(Sigma) r / (det |r|^2)
    line_factor = torch.sqrt(2.0 * math.pi * det * dot3(ray, ray) / dot3(ray, symmetric_times(adjugate, ray)))
    amplitudes = densities * line_factor.to(densities.dtype)

    projected = torch.stack([u, v], dim=-1)
    footprint = torch.stack([cov_uu, cov_uv, cov_uv, cov_vv], dim=-1)
    if screen_offsets is not None:
        projected = projected + screen_offsets.to(torch.float64)
    splats = Splats(
        projected.reshape(-1, 2),
        footprint.reshape(-1, 2, 2),
        amplitudes.reshape(-1),
        torch.arange(views, device=means.device).repeat_interleave(means.shape[0]),
        front.reshape(-1),
    )
    return Projection(
        splats,
        SampleGrid((width, height), (1, width), views, CUTOFF_SIGMAS),
        P,
        torch.sqrt(dot3(ray, ray)).reshape(-1),
        (line_factor / math.sqrt(2.0 * math.pi)).reshape(-1),
    )


def voxel_splats(
    means: torch.Tensor, covariances: torch.Tensor, densities: torch.Tensor, grid: VolumeGrid
) -> tuple[Splats, SampleGrid]:
    """The Gaussians as 3-D splats in the voxel index units of ``grid`` (normalized coordinates),
    cut at ``VOXEL_CUTOFF_SIGMAS``; the sum's flat order is ``grid``'s (z, y, x)."""
    index_to_point = torch.as_tensor(grid.index_to_world_matrix(), dtype=torch.float64, device=means.device)
    to_index = torch.linalg.inv(index_to_point[:3, :3])
    centres = (means.to(torch.float64) - index_to_point[:3, 3]) @ to_index.T
    # A Sigma A^T for every Gaussian at once: row-major vec(A S A^T) = (A kron A) vec(S).
    sigma = (covariances.to(torch.float64).reshape(-1, 9) @ torch.kron(to_index, to_index).T).reshape(-1, 3, 3)
    nx, ny, nz = grid.size_ijk
    splats = Splats(centres, sigma, densities, torch.zeros(means.shape[0], dtype=torch.long, device=means.device))
    return splats, SampleGrid((nx, ny, nz), (1, nx, nx * ny), 1, VOXEL_CUTOFF_SIGMAS)


def voxels_in_support(grid: VolumeGrid, support: Sequence[float], device: torch.device) -> torch.Tensor:
    """Which voxel centres of ``grid`` (nz, ny, nx) lie in the support box; centres on a face
    count as inside (a grid whose outer centres lie on the faces)."""
    faces = np.asarray(support) * (1.0 + SUPPORT_TOLERANCE)
    return torch.as_tensor(np.all(np.abs(grid.voxel_centres()) <= faces, axis=-1), device=device)


class Accumulator(Protocol):
    """The per-sample stage of a render backend: the flat sum (``grid.numel``,) over the active
    splats of ``amplitude * exp(-1/2 (x - c)^T cov^-1 (x - c))`` at the samples of ``grid``,
    each cut at ``grid.cutoff_sigmas`` and culled as :func:`cutoff_boxes` says, differentiable
    in the splats' centres, covariances and amplitudes. Implementations must agree value for
    value and gradient for gradient (``Testing/test_render_triton.py``)."""

    name: str

    def accumulate(self, splats: Splats, grid: SampleGrid) -> torch.Tensor: ...

    def check_device(self, device: torch.device | str) -> None:
        """Raise RuntimeError saying why this accumulator cannot serve ``device``."""
        ...
