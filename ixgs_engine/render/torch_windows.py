"""The reference accumulator in pure PyTorch (CPU and GPU, autograd): the per-sample stage of
the ``torch`` render backend (``torch_backend.TorchBackend``), and the support cut's sum for every backend.

Each splat (``splats.py``) is evaluated only on the samples (pixels, voxels) of a window
covering its cutoff bounding box, clipped to the image (grid), and contributes where its
Mahalanobis distance is below the cutoff (3 on the detector, ``VOXEL_CUTOFF_SIGMAS`` in a
volume); the per-sample work runs in the dtype of the amplitudes. Windows are binned by radius
and each bin is cut into chunks of bounded size. Inside a chunk the exponent of every splat
over its window is one matrix product: with ``d = delta + o`` (``delta``: window centre minus
splat centre, ``o``: the sample's offset from the window centre), ``-1/2 d^T Q d`` is a
quadratic polynomial in ``o`` whose coefficients belong to the splat and whose monomials
belong to the window sample. A custom autograd function accumulates windows with
``index_add_`` and, in backward, recomputes each chunk to get the gradients of the
coefficients and amplitudes; the rest of the chain (projection, covariances) is ordinary
autograd on per-Gaussian tensors. Memory is bounded by the chunk size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ixgs_engine.render.splats import Cut, SampleGrid, Splats, cutoff_boxes, inverse_symmetric, monomial_pairs

# Window samples per chunk: cache-sized on CPU; on GPUs big enough to amortize kernel launches.
CPU_CHUNK_ELEMENTS = 1 << 18
GPU_CHUNK_ELEMENTS = 1 << 24
_EXPONENT_FLOOR = -20.0  # exp() is twice as slow on -inf and underflowing arguments
_EXACT_RADII = 32  # window radii up to this get their own bin; larger ones share geometric bins
_RADIUS_GROWTH = 1.1


def _quadratic_basis(offsets: torch.Tensor) -> torch.Tensor:
    """Monomials (1, o_i, o_i o_j for i <= j) of sample offsets (P, d): (1 + d + d(d+1)/2, P)."""
    dims = offsets.shape[1]
    rows = [
        torch.ones_like(offsets[:, 0]),
        *offsets.T,
        *(offsets[:, i] * offsets[:, j] for i, j in monomial_pairs(dims)),
    ]
    return torch.stack(rows)


def _quadratic_coefficients(delta: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Coefficients (M, nb) of ``-1/2 (delta + o)^T Q (delta + o)`` on :func:`_quadratic_basis`."""
    dims = delta.shape[1]
    q_delta = (precision * delta[:, None, :]).sum(dim=2)
    constant = -0.5 * (delta * q_delta).sum(dim=1, keepdim=True)
    quadratic = [precision[:, i, j] * (-0.5 if i == j else -1.0) for i, j in monomial_pairs(dims)]
    return torch.cat([constant, -q_delta, torch.stack(quadratic, dim=1)], dim=1)


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


def chunk_elements_for(device: torch.device, chunk_elements: int | None = None) -> int:
    """Window samples per chunk: ``chunk_elements`` if given, else the device's default."""
    if chunk_elements is not None:
        return int(chunk_elements)
    return CPU_CHUNK_ELEMENTS if device.type == "cpu" else GPU_CHUNK_ELEMENTS


def window_sum(splats: Splats, grid: SampleGrid, chunk_elements: int | None = None) -> torch.Tensor:
    """Flat sum over the (active) splats of ``amplitude * exp(-1/2 (x - c)^T cov^-1 (x - c))`` at
    the samples of ``grid``, each cut at ``grid.cutoff_sigmas``."""
    layout = _layout(splats, grid, chunk_elements_for(splats.centres.device, chunk_elements))
    return _WindowSum.apply(_window_coefficients(splats, layout), splats.amplitudes[layout.order], layout)


def _standardized(
    distances: torch.Tensor, index: torch.Tensor, depth: torch.Tensor, inverse_spread: torch.Tensor
) -> torch.Tensor:
    """``(distances[index] - depth) / spread`` (K, P), in place on the gathered samples."""
    return distances[index].sub_(depth).mul_(inverse_spread)


def _cut_share(
    cut: Cut, index: torch.Tensor, part: slice
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
        cut = Cut(near, far, depth, spread, inside)
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
        cut = Cut(near, far, depth, spread, inside)
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


def cut_window_sum(splats: Splats, grid: SampleGrid, cut: Cut, chunk_elements: int | None = None) -> torch.Tensor:
    """:func:`window_sum` with each sample weighted by its splat's share on its side of the
    support box (``cut``; its per-splat entries in splat order)."""
    layout = _layout(splats, grid, chunk_elements_for(splats.centres.device, chunk_elements))
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


class TorchAccumulator:
    """The reference :class:`~ixgs_engine.render.splats.Accumulator` (:func:`window_sum`), on
    the device of its inputs."""

    name = "torch"

    def __init__(self, chunk_elements: int | None = None) -> None:
        self.chunk_elements = chunk_elements

    def accumulate(self, splats: Splats, grid: SampleGrid) -> torch.Tensor:
        return window_sum(splats, grid, self.chunk_elements)

    def check_device(self, device: torch.device | str) -> None:
        """Every device PyTorch runs on will do."""
