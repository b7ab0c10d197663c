"""Reference render backend in pure PyTorch (CPU and GPU, autograd).

Per-Gaussian geometry (projection, footprint, line-integral factor, window placement) is O(N)
and computed in float64, so thin Gaussians keep their small eigenvalues; the per-sample work
runs in the dtype of the densities.

Each Gaussian is evaluated only on the samples (pixels, voxels) of a window covering its
cutoff bounding box, clipped to the image (grid), and contributes where its Mahalanobis
distance is below the cutoff (3 on the detector, ``VOXEL_CUTOFF_SIGMAS`` in a volume).
Windows are binned by radius and each bin is cut into chunks of bounded size. Inside a chunk
the exponent of every Gaussian over its window is one matrix product: with ``d = delta + o``
(``delta``: window centre minus Gaussian centre, ``o``: the sample's offset from the window
centre), ``-1/2 d^T Q d`` is a quadratic polynomial in ``o`` whose
coefficients belong to the Gaussian and whose monomials belong to the window sample. A custom
autograd function accumulates windows with ``index_add_`` and, in backward, recomputes each
chunk to get the gradients of the coefficients and amplitudes; the rest of the chain (projection,
covariances) is ordinary autograd on per-Gaussian tensors. Memory is bounded by the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import chi2
from torch.autograd.function import once_differentiable

from ixgs_engine.volume import VolumeGrid

CUTOFF_SIGMAS = 3.0  # footprints on the detector are cut at Mahalanobis distance 3 ...
# ... which drops exp(-4.5) (1.1 %) of a 2-D Gaussian's mass. Voxels are cut at the 3-D radius that
# drops the same fraction, so a voxelized volume carries the mass its rendered images show.
VOXEL_CUTOFF_SIGMAS = math.sqrt(chi2.isf(math.exp(-0.5 * CUTOFF_SIGMAS**2), 3))
NEAR_DEPTH = 1e-2  # normalized units: Gaussians closer to the source plane (or behind it) are culled
# Window samples per chunk: cache-sized on CPU; on GPUs big enough to amortize kernel launches.
CPU_CHUNK_ELEMENTS = 1 << 18
GPU_CHUNK_ELEMENTS = 1 << 24
_EXPONENT_FLOOR = -20.0  # exp() is twice as slow on -inf and underflowing arguments
_EXACT_RADII = 32  # window radii up to this get their own bin; larger ones share geometric bins
_RADIUS_GROWTH = 1.1
SUPPORT_TOLERANCE = 1e-6


def inverse_symmetric(matrices: torch.Tensor) -> torch.Tensor:
    """Inverse of symmetric 2x2 or 3x3 matrices (..., d, d) by the adjugate (batched, differentiable)."""
    adjugate, det = _adjugate_symmetric(matrices)
    return adjugate / det[..., None, None]


def _adjugate_symmetric(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def _symmetric_times(matrices: torch.Tensor, vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Components of ``M v`` for symmetric 3x3 matrices (N, 3, 3) and vector components
    broadcasting against (N,) (structure of arrays)."""
    m00, m01, m02, _, m11, m12, _, _, m22 = matrices.reshape(-1, 9).unbind(dim=1)
    x, y, z = vector
    return [m00 * x + m01 * y + m02 * z, m01 * x + m11 * y + m12 * z, m02 * x + m12 * y + m22 * z]


def _dot(first: Sequence[torch.Tensor], second: Sequence[torch.Tensor]) -> torch.Tensor:
    return first[0] * second[0] + first[1] * second[1] + first[2] * second[2]


def _monomial_pairs(dims: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(dims) for j in range(i, dims)]


def _quadratic_basis(offsets: torch.Tensor) -> torch.Tensor:
    """Monomials (1, o_i, o_i o_j for i <= j) of sample offsets (P, d): (1 + d + d(d+1)/2, P)."""
    dims = offsets.shape[1]
    rows = [
        torch.ones_like(offsets[:, 0]),
        *offsets.T,
        *(offsets[:, i] * offsets[:, j] for i, j in _monomial_pairs(dims)),
    ]
    return torch.stack(rows)


def _quadratic_coefficients(delta: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Coefficients (M, nb) of ``-1/2 (delta + o)^T Q (delta + o)`` on :func:`_quadratic_basis`."""
    dims = delta.shape[1]
    q_delta = (precision * delta[:, None, :]).sum(dim=2)
    constant = -0.5 * (delta * q_delta).sum(dim=1, keepdim=True)
    quadratic = [precision[:, i, j] * (-0.5 if i == j else -1.0) for i, j in _monomial_pairs(dims)]
    return torch.cat([constant, -q_delta, torch.stack(quadratic, dim=1)], dim=1)


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


@dataclass(frozen=True)
class _Chunk:
    """Consecutive splats (in layout order) sharing one window shape."""

    start: int
    stop: int
    basis: torch.Tensor  # (nb, P) monomials of the samples' offsets from the window centre
    offsets: torch.Tensor  # (P,) flat index of each sample relative to the window origin


@dataclass(frozen=True)
class _Layout:
    """Where each kept splat's window lies in the flat output."""

    order: torch.Tensor  # (K,) kept splats, sorted by window size
    anchors: torch.Tensor  # (K, d) float64 window centres, in sample index coordinates
    base: torch.Tensor  # (K,) flat output index of each window's origin (int32 when it fits: faster)
    chunks: list[_Chunk]
    numel: int
    cutoff_value: float  # exp(-1/2 r^2) at the cutoff radius r


def _bin_radius(radius: torch.Tensor) -> torch.Tensor:
    """Window radius per bin: exact up to ``_EXACT_RADII``, then geometric steps of
    ``_RADIUS_GROWTH`` (a few dozen bins at most, at most 1.21x the window area)."""
    steps = torch.ceil(torch.log(radius.clamp_min(1.0) / _EXACT_RADII) / math.log(_RADIUS_GROWTH) - 1e-9).clamp_min(0.0)
    binned = torch.ceil(_EXACT_RADII * _RADIUS_GROWTH**steps - 1e-9)
    return torch.where(radius <= _EXACT_RADII, radius, binned)


def cutoff_boxes(splats: Splats, grid: SampleGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of the splats to draw (active, with a non-degenerate covariance and a sample inside
    their cutoff box) and every splat's cutoff box clipped to the grid: integer-valued float64
    lower and upper sample coordinates (K, d)."""
    centres, covariances = splats.centres.detach(), splats.covariances.detach()
    n = torch.tensor(list(grid.sizes), dtype=torch.float64, device=centres.device)
    half = grid.cutoff_sigmas * torch.sqrt(torch.diagonal(covariances, dim1=1, dim2=2).clamp_min(0.0))
    low = torch.ceil(centres - half).clamp_min(0.0)
    high = torch.minimum(torch.floor(centres + half), n - 1.0)
    det = _adjugate_symmetric(covariances)[1]
    keep = (low <= high).all(dim=1) & (det > 0) & torch.isfinite(det)
    if splats.active is not None:
        keep &= splats.active
    return torch.nonzero(keep).squeeze(1), low, high


def _layout(splats: Splats, grid: SampleGrid, chunk_elements: int) -> _Layout:
    """Cull the splats :func:`cutoff_boxes` drops, then give each kept one a window of side
    ``min(2R + 1, n)`` per axis, R binned, that covers the samples of its cutoff box inside the grid."""
    device = splats.centres.device
    sizes, numel = grid.sizes, grid.numel
    n = torch.tensor(list(sizes), dtype=torch.float64, device=device)
    stride = torch.tensor(list(grid.strides), dtype=torch.long, device=device)
    keep, low, high = cutoff_boxes(splats, grid)
    radius = _bin_radius(torch.ceil((high[keep] - low[keep]).amax(dim=1) / 2.0))
    radius, sort = torch.sort(radius, stable=True)
    order = keep[sort]
    width = torch.minimum(2.0 * radius[:, None] + 1.0, n)
    origin = torch.minimum(low[order], n - width)
    anchors = origin + (width - 1.0) / 2.0
    index_dtype = torch.int32 if numel < 2**31 else torch.long
    base = (splats.view[order] * math.prod(sizes) + (origin.long() * stride).sum(dim=1)).to(index_dtype)

    chunks: list[_Chunk] = []
    start = 0
    values, counts = torch.unique_consecutive(radius, return_counts=True)
    for r, count in zip(values.tolist(), counts.tolist(), strict=True):
        shape = [min(2 * int(r) + 1, s) for s in sizes]
        axes = torch.meshgrid(*(torch.arange(k, dtype=torch.float64, device=device) for k in shape), indexing="ij")
        samples = torch.stack([axis.reshape(-1) for axis in axes], dim=1)
        centre = (torch.tensor(shape, dtype=torch.float64, device=device) - 1.0) / 2.0
        basis = _quadratic_basis(samples - centre).to(splats.amplitudes.dtype)
        offsets = (samples.long() * stride).sum(dim=1).to(index_dtype)
        per_chunk = max(1, chunk_elements // samples.shape[0])
        for first in range(start, start + count, per_chunk):
            chunks.append(_Chunk(first, min(first + per_chunk, start + count), basis, offsets))
        start += count
    return _Layout(order, anchors, base, chunks, numel, math.exp(-0.5 * grid.cutoff_sigmas**2))


def _window_values(coefficients: torch.Tensor, basis: torch.Tensor, cutoff_value: float) -> torch.Tensor:
    """exp of the quadratic exponents (K, P), zero beyond the cutoff."""
    values = (coefficients @ basis).clamp_(min=_EXPONENT_FLOOR).exp_()
    return F.threshold_(values, cutoff_value, 0.0)


class _WindowSum(torch.autograd.Function):
    """Sum of ``amplitude * exp(quadratic)`` windows into a flat output (see module docstring)."""

    @staticmethod
    def forward(ctx, coefficients: torch.Tensor, amplitudes: torch.Tensor, layout: _Layout) -> torch.Tensor:  # type: ignore[override]
        out = coefficients.new_zeros(layout.numel)
        for chunk in layout.chunks:
            part = slice(chunk.start, chunk.stop)
            values = _window_values(coefficients[part], chunk.basis, layout.cutoff_value).mul_(amplitudes[part, None])
            index = layout.base[part, None] + chunk.offsets
            out.index_add_(0, index.reshape(-1), values.reshape(-1))
        ctx.save_for_backward(coefficients, amplitudes)
        ctx.layout = layout
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        coefficients, amplitudes = ctx.saved_tensors
        layout: _Layout = ctx.layout
        grad_out = grad_out.contiguous()
        grad_coefficients = torch.zeros_like(coefficients)
        grad_amplitudes = torch.zeros_like(amplitudes)
        for chunk in layout.chunks:
            part = slice(chunk.start, chunk.stop)
            index = layout.base[part, None] + chunk.offsets
            upstream = grad_out.index_select(0, index.reshape(-1)).reshape(index.shape)
            weighted = _window_values(coefficients[part], chunk.basis, layout.cutoff_value).mul_(upstream)
            moments = weighted @ chunk.basis.T  # basis row 0 is all ones: moments[:, 0] = d out / d amplitude
            grad_amplitudes[part] = moments[:, 0]
            grad_coefficients[part] = moments * amplitudes[part, None]
        return grad_coefficients, grad_amplitudes, None


def _window_coefficients(splats: Splats, layout: _Layout) -> torch.Tensor:
    """Exponent coefficients (K, nb) of the kept splats over their windows, in layout order."""
    precision = inverse_symmetric(splats.covariances[layout.order])
    delta = layout.anchors - splats.centres[layout.order]
    return _quadratic_coefficients(delta, precision).to(splats.amplitudes.dtype)


def _splat(splats: Splats, grid: SampleGrid, chunk_elements: int) -> torch.Tensor:
    """Flat sum over the (active) splats of ``amplitude * exp(-1/2 (x - c)^T cov^-1 (x - c))`` at
    the samples of ``grid``, each cut at ``grid.cutoff_sigmas``."""
    layout = _layout(splats, grid, chunk_elements)
    return _WindowSum.apply(_window_coefficients(splats, layout), splats.amplitudes[layout.order], layout)


@dataclass(frozen=True)
class _Cut:
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


def _standardized(
    distances: torch.Tensor, index: torch.Tensor, depth: torch.Tensor, inverse_spread: torch.Tensor
) -> torch.Tensor:
    """``(distances[index] - depth) / spread`` (K, P), in place on the gathered samples."""
    return distances[index].sub_(depth).mul_(inverse_spread)


def _cut_share(
    cut: _Cut, index: torch.Tensor, part: slice
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Share (K, P) of each splat's line integral on its side of the box along the rays of its
    window samples, and the standardized distances ``z_near``, ``z_far`` and the side sign (K, 1)."""
    depth, inverse_spread = cut.depth[part, None], cut.spread[part, None].reciprocal()
    z_near = _standardized(cut.near, index, depth, inverse_spread)
    z_far = _standardized(cut.far, index, depth, inverse_spread)
    share = torch.special.ndtr(z_far).sub_(torch.special.ndtr(z_near)).clamp_(min=0.0)
    inside = cut.inside[part, None]
    if not bool(inside.all()):
        share = torch.where(inside, share, 1.0 - share)
    sign = torch.where(inside, 1.0, -1.0).to(share.dtype)
    return share, z_near, z_far, sign


class _CutWindowSum(torch.autograd.Function):
    """:class:`_WindowSum` with every sample weighted by its splat's share on its side of the
    support box (:func:`_cut_share`), differentiable in the splat's depth and spread too."""

    @staticmethod
    def forward(ctx, coefficients, amplitudes, depth, spread, layout: _Layout, near, far, inside):  # type: ignore[override]
        cut = _Cut(near, far, depth, spread, inside)
        out = coefficients.new_zeros(layout.numel)
        for chunk in layout.chunks:
            part = slice(chunk.start, chunk.stop)
            index = layout.base[part, None] + chunk.offsets
            share = _cut_share(cut, index, part)[0]
            values = (
                _window_values(coefficients[part], chunk.basis, layout.cutoff_value)
                .mul_(share)
                .mul_(amplitudes[part, None])
            )
            out.index_add_(0, index.reshape(-1), values.reshape(-1))
        ctx.save_for_backward(coefficients, amplitudes, depth, spread, near, far, inside)
        ctx.layout = layout
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        coefficients, amplitudes, depth, spread, near, far, inside = ctx.saved_tensors
        cut = _Cut(near, far, depth, spread, inside)
        layout: _Layout = ctx.layout
        grad_out = grad_out.contiguous()
        grads = [torch.zeros_like(t) for t in (coefficients, amplitudes, depth, spread)]
        density = 1.0 / math.sqrt(2.0 * math.pi)
        for chunk in layout.chunks:
            part = slice(chunk.start, chunk.stop)
            index = layout.base[part, None] + chunk.offsets
            share, z_near, z_far, sign = _cut_share(cut, index, part)
            weighted = _window_values(coefficients[part], chunk.basis, layout.cutoff_value).mul_(grad_out[index])
            moments = (weighted * share) @ chunk.basis.T
            grads[1][part] = moments[:, 0]
            grads[0][part] = moments * amplitudes[part, None]
            phi_near = density * torch.exp(-0.5 * z_near.square())
            phi_far = density * torch.exp(-0.5 * z_far.square())
            scale = amplitudes[part] / spread[part]
            # d share / d depth = -sign (phi(z_far) - phi(z_near)) / spread; likewise for the spread
            grads[2][part] = -scale * (weighted * sign * (phi_far - phi_near)).sum(dim=1)
            grads[3][part] = -scale * (weighted * sign * (z_far * phi_far - z_near * phi_near)).sum(dim=1)
        return grads[0], grads[1], grads[2], grads[3], None, None, None, None


def _ray_box_distances(
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


def _near_a_face(
    means: torch.Tensor, covariances: torch.Tensor, support: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which Gaussians (N,) are centred in the box, and which have part of their 3-sigma box on
    the other side of a face (only those need cutting)."""
    centre = means.detach().to(torch.float64)
    reach = 3.0 * torch.sqrt(torch.diagonal(covariances.detach().to(torch.float64), dim1=1, dim2=2).clamp_min(0.0))
    half = centre.new_tensor(list(support))
    inside = (centre.abs() <= half).all(dim=1)
    crosses_out = (centre.abs() + reach > half).any(dim=1)
    reaches_in = (centre.abs() - reach < half).all(dim=1)
    return inside, torch.where(inside, crosses_out, reaches_in)


def _cut_splat(splats: Splats, grid: SampleGrid, cut: _Cut, chunk_elements: int) -> torch.Tensor:
    """:func:`_splat` with each sample weighted by its splat's share on its side of the support
    box (``cut``; its per-splat entries in splat order)."""
    layout = _layout(splats, grid, chunk_elements)
    order, dtype = layout.order, splats.amplitudes.dtype
    return _CutWindowSum.apply(
        _window_coefficients(splats, layout),
        splats.amplitudes[order],
        cut.depth[order].to(dtype),
        cut.spread[order].to(dtype),
        layout,
        cut.near.to(dtype),
        cut.far.to(dtype),
        cut.inside[order],
    )


class TorchBackend:
    """The reference :class:`~ixgs_engine.render.backend.RenderBackend`: runs wherever PyTorch
    does, on the device of its inputs."""

    name = "torch"

    def __init__(self, chunk_elements: int | None = None) -> None:
        self.chunk_elements = chunk_elements

    def _chunk_elements(self, device: torch.device) -> int:
        if self.chunk_elements is not None:
            return int(self.chunk_elements)
        return CPU_CHUNK_ELEMENTS if device.type == "cpu" else GPU_CHUNK_ELEMENTS

    def _accumulate(self, splats: Splats, grid: SampleGrid) -> torch.Tensor:
        """The per-sample stage of render and voxelize (:func:`_splat`'s contract): the part a
        faster backend replaces, keeping the per-Gaussian geometry above."""
        return _splat(splats, grid, self._chunk_elements(splats.centres.device))

    def render(
        self,
        means: torch.Tensor,
        covariances: torch.Tensor,
        densities: torch.Tensor,
        matrices: torch.Tensor,
        image_shape: tuple[int, int],
        screen_offsets: torch.Tensor | None = None,
        support: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Line-integral images (V, H, W): see :mod:`ixgs_engine.render.backend`.

        For a centre p with ``(a, b, w) = P (p, 1)`` and ``u = (a/w, b/w)``, the footprint is
        ``J Sigma J^T`` with ``J = [P0 - u_0 P2; P1 - u_1 P2] / w`` (rows of P's left block:
        mirrored detectors, skew and off-centre principal points need nothing special), and the
        central line integral is ``rho sqrt(2 pi / (r^T Sigma^-1 r))``, r the unit direction
        from the source (the null space of P) to p.
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
        a, b, w = (_dot(r[:3], centre) + r[3] for r in row)
        front = w > NEAR_DEPTH
        inv_depth = 1.0 / torch.where(front, w, torch.ones_like(w))  # finite everywhere
        u, v = a * inv_depth, b * inv_depth
        j0 = [(row[0][c] - u * row[2][c]) * inv_depth for c in range(3)]
        j1 = [(row[1][c] - v * row[2][c]) * inv_depth for c in range(3)]
        sigma_j0 = _symmetric_times(sigma, j0)
        cov_uu, cov_uv, cov_vv = _dot(j0, sigma_j0), _dot(j1, sigma_j0), _dot(j1, _symmetric_times(sigma, j1))

        source = -torch.linalg.solve(P[:, :, :3], P[:, :, 3])
        ray = [centre[c] - source[:, c, None] for c in range(3)]
        adjugate, det = _adjugate_symmetric(sigma)
        # r^T Sigma^-1 r / |r|^2 = r^T adj(Sigma) r / (det |r|^2)
        line_factor = torch.sqrt(2.0 * math.pi * det * _dot(ray, ray) / _dot(ray, _symmetric_times(adjugate, ray)))
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
        grid = SampleGrid((width, height), (1, width), views, CUTOFF_SIGMAS)
        if support is None:
            return self._accumulate(splats, grid).reshape(views, height, width)
        inside, cut = (flag.repeat(views) for flag in _near_a_face(means, covariances, support))
        whole = self._accumulate(replace(splats, active=splats.active & ~cut), grid)
        near, far = _ray_box_distances(P, (height, width), support)
        depth = torch.sqrt(_dot(ray, ray)).reshape(-1)
        spread = (line_factor / math.sqrt(2.0 * math.pi)).reshape(-1)
        return (
            whole
            + _cut_splat(
                replace(splats, active=splats.active & cut),
                grid,
                _Cut(near, far, depth, spread, inside),
                self._chunk_elements(means.device),
            )
        ).reshape(views, height, width)

    def voxelize(
        self,
        means: torch.Tensor,
        covariances: torch.Tensor,
        densities: torch.Tensor,
        grid: VolumeGrid,
        support: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Summed Gaussians (nz, ny, nx) at the voxel centres of ``grid`` (normalized coordinates);
        with ``support``, the Gaussians centred in the box at the voxels in it, the others at
        the voxels outside it."""
        if support is None:
            return self._voxelize(means, covariances, densities, grid)
        half = means.new_tensor(list(support))
        inside = (means.detach().abs() <= half).all(dim=1)
        # Voxel centres on a face count as inside (a grid whose outer centres lie on the faces).
        faces = np.asarray(support) * (1.0 + SUPPORT_TOLERANCE)
        voxels_inside = torch.as_tensor(np.all(np.abs(grid.voxel_centres()) <= faces, axis=-1), device=means.device)
        parts = (
            [(inside, voxels_inside)]
            if bool(voxels_inside.all())
            else [(inside, voxels_inside), (~inside, ~voxels_inside)]
        )
        out = None
        for gaussians, voxels in parts:
            part = self._voxelize(means[gaussians], covariances[gaussians], densities[gaussians], grid) * voxels
            out = part if out is None else out + part
        return out

    def _voxelize(
        self, means: torch.Tensor, covariances: torch.Tensor, densities: torch.Tensor, grid: VolumeGrid
    ) -> torch.Tensor:
        index_to_point = torch.as_tensor(grid.index_to_world_matrix(), dtype=torch.float64, device=means.device)
        to_index = torch.linalg.inv(index_to_point[:3, :3])
        centres = (means.to(torch.float64) - index_to_point[:3, 3]) @ to_index.T
        # A Sigma A^T for every Gaussian at once: row-major vec(A S A^T) = (A kron A) vec(S).
        sigma = (covariances.to(torch.float64).reshape(-1, 9) @ torch.kron(to_index, to_index).T).reshape(-1, 3, 3)
        nx, ny, nz = grid.size_ijk
        splats = Splats(centres, sigma, densities, torch.zeros(means.shape[0], dtype=torch.long, device=means.device))
        flat = self._accumulate(splats, SampleGrid((nx, ny, nz), (1, nx, nx * ny), 1, VOXEL_CUTOFF_SIGMAS))
        return flat.reshape(grid.shape)
