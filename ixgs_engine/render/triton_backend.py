"""Fast render backend for CUDA GPUs: the shared splat stage (``splats.py``) with the
per-sample accumulation in tile-binned Triton kernels (:mod:`ixgs_engine.render.triton_kernels`).

Everything per Gaussian (projection, footprint, line-integral factor, culling, the precision
matrices) stays in PyTorch with autograd, as for the torch backend. What changes is the
O(samples x Gaussians) stage, :class:`TritonAccumulator`: each splat's cutoff box is listed in every 16 x 16 pixel (or
8 x 8 x 8 voxel) tile it touches, the (tile, splat) pairs are sorted by tile with ``torch.sort``,
and one Triton program per tile sums its splats (forward) or reduces their gradient moments
and adds them atomically (backward). Values and gradients equal the reference's (same cutoffs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ixgs_engine.errors import IXGSError
from ixgs_engine.render import triton_kernels
from ixgs_engine.render.renderer import SplatRenderer
from ixgs_engine.render.splats import SampleGrid, Splats, cutoff_boxes, inverse_symmetric, monomial_pairs
from ixgs_engine.render.torch_backend import TorchBackend
from ixgs_engine.volume import VolumeGrid

TILE_SHAPES = {2: (16, 16, 1), 3: (8, 8, 8)}  # samples per tile along x, y, z
BLOCK_SPLATS = {2: 16, 3: 8}  # splats evaluated together per program step: (BLOCK, tile) values in registers
MIN_CAPABILITY = (8, 0)  # Triton's supported NVIDIA GPUs (Ampere and newer)
# Self-test bound on the relative L2 difference from the torch reference in float32. Loose on
# purpose: rounding may move a sample across the hard cutoff in one backend and not the other
# (a jump of 1.1 % of that splat's peak); broken kernels are off by O(1). The tests check 1e-4.
_CHECK_TOLERANCE = 1e-2


@dataclass(frozen=True)
class _TileBins:
    """The (tile, splat) lists and the grid the kernels write: ``ids[starts[t]:starts[t + 1]]``
    are the rows of the splats touching tile t (tiles numbered view-major, then z, y, x)."""

    ids: torch.Tensor  # (pairs,) int32
    starts: torch.Tensor  # (tiles + 1,) int32
    dims: int
    sizes: tuple[int, int, int]  # nx, ny, nz (nz = 1 for images)
    strides: tuple[int, int, int]
    tiles_xy: tuple[int, int]
    tiles_per_view: int
    numel: int
    cutoff_value: float

    @property
    def num_tiles(self) -> int:
        return self.starts.numel() - 1

    def launch(self, out: torch.Tensor, grad: torch.Tensor, params: torch.Tensor, backward: bool) -> None:
        """Run :func:`~ixgs_engine.render.triton_kernels.tile_sum` on these tiles (one program each)."""
        nx, ny, nz = self.sizes
        tx, ty, tz = TILE_SHAPES[self.dims]
        triton_kernels.tile_sum[(self.num_tiles,)](
            out,
            grad,
            params,
            self.ids,
            self.starts,
            *self.tiles_xy,
            self.tiles_per_view,
            nx,
            ny,
            nz,
            *self.strides,
            nx * ny * nz,
            self.cutoff_value,
            DIMS=self.dims,
            TX=tx,
            TY=ty,
            TZ=tz,
            BLOCK=BLOCK_SPLATS[self.dims],
            BACKWARD=backward,
        )


def _bin_tiles(splats: Splats, grid: SampleGrid) -> tuple[torch.Tensor, _TileBins]:
    """Cull splats as the reference does (:func:`cutoff_boxes`) and list each kept one in every
    tile its box touches; returns the kept splats' indices and the tile lists (whose ids index
    the kept splats)."""
    sizes, views = grid.sizes, grid.views
    dims = len(sizes)
    device = splats.centres.device
    kept, low, high = cutoff_boxes(splats, grid)

    tile = torch.tensor(TILE_SHAPES[dims][:dims], dtype=torch.long, device=device)
    tiles = [math.ceil(s / t) for s, t in zip(sizes, TILE_SHAPES[dims], strict=False)]
    first = torch.div(low[kept].long(), tile, rounding_mode="floor")
    span = torch.div(high[kept].long(), tile, rounding_mode="floor") - first + 1
    counts = span.prod(dim=1)
    splat = torch.repeat_interleave(torch.arange(kept.numel(), device=device), counts)
    if splat.numel() >= 2**31 or views * math.prod(sizes) >= 2**31:
        raise RuntimeError("too many (tile, Gaussian) pairs or samples for the Triton kernels' 32-bit indices")
    # Position of each pair inside its splat's box of tiles, unravelled x fastest.
    rank = torch.arange(splat.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[splat]
    tile_index = splats.view[kept][splat] * math.prod(tiles)
    place = 1
    for axis in range(dims):
        coordinate = first[splat, axis] + rank % span[splat, axis]
        rank = torch.div(rank, span[splat, axis], rounding_mode="floor")
        tile_index = tile_index + coordinate * place
        place *= tiles[axis]
    tile_index, order = torch.sort(tile_index, stable=True)
    num_tiles = views * math.prod(tiles)
    starts = torch.zeros(num_tiles + 1, dtype=torch.int32, device=device)
    starts[1:] = torch.cumsum(torch.bincount(tile_index, minlength=num_tiles), 0)
    padded = (list(sizes) + [1])[:3]
    padded_strides = (list(grid.strides) + [0])[:3]
    bins = _TileBins(
        ids=splat[order].to(torch.int32),
        starts=starts,
        dims=dims,
        sizes=(padded[0], padded[1], padded[2]),
        strides=(padded_strides[0], padded_strides[1], padded_strides[2]),
        tiles_xy=(tiles[0], tiles[1]),
        tiles_per_view=math.prod(tiles),
        numel=grid.numel,
        cutoff_value=math.exp(-0.5 * grid.cutoff_sigmas**2),
    )
    return kept, bins


def _pack(centres: torch.Tensor, precision: torch.Tensor, amplitudes: torch.Tensor) -> torch.Tensor:
    """Kernel rows: centre split as high + low parts in the amplitudes' dtype (offsets from the
    centre stay float64-accurate), precision's upper triangle, amplitude."""
    dtype = amplitudes.dtype
    high = centres.to(dtype)
    low = (centres - high.to(centres.dtype)).to(dtype)
    return torch.cat([high, low, precision.to(dtype), amplitudes[:, None]], dim=1).contiguous()


class _TileSum(torch.autograd.Function):
    """Flat sum of ``amplitude * exp(-1/2 (x - c)^T Q (x - c))`` over the binned splats; inputs
    are the centres (K, d, float64), Q's upper triangles (K, d(d+1)/2) and the amplitudes (K,)."""

    @staticmethod
    def forward(ctx, centres: torch.Tensor, precision: torch.Tensor, amplitudes: torch.Tensor, bins: _TileBins):  # type: ignore[override]
        params = _pack(centres, precision, amplitudes)
        out = amplitudes.new_empty(bins.numel)
        bins.launch(out, out, params, backward=False)  # the forward pass reads no gradient
        ctx.save_for_backward(centres, precision, amplitudes)
        ctx.params = params
        ctx.bins = bins
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        centres, precision, amplitudes = ctx.saved_tensors
        bins: _TileBins = ctx.bins
        dims = bins.dims
        pairs = monomial_pairs(dims)
        moments = amplitudes.new_zeros(amplitudes.shape[0], 1 + dims + len(pairs))
        bins.launch(moments, grad_out.contiguous(), ctx.params, backward=True)
        # value = a e(p), p = -1/2 d^T Q d, d = x - c: dp/dc = Q d, dp/dQ_ii = -d_i^2 / 2, dp/dQ_ij = -d_i d_j.
        # Chained in float64 (O(K) work), returned in each input's dtype.
        scaled = moments.double() * amplitudes.double()[:, None]
        full = scaled.new_zeros(precision.shape[0], dims, dims)
        for column, (i, j) in enumerate(pairs):
            full[:, i, j] = full[:, j, i] = precision[:, column].double()
        grad_centres = (full @ scaled[:, 1 : 1 + dims, None])[:, :, 0]
        factors = scaled.new_tensor([-0.5 if i == j else -1.0 for i, j in pairs])
        grad_precision = scaled[:, 1 + dims :] * factors
        return grad_centres.to(centres.dtype), grad_precision.to(precision.dtype), moments[:, 0], None


class TritonAccumulator:
    """:class:`~ixgs_engine.render.splats.Accumulator` with Triton kernels; needs CUDA tensors
    (or CPU tensors under ``TRITON_INTERPRET=1``, for tests)."""

    name = "triton"

    def accumulate(self, splats: Splats, grid: SampleGrid) -> torch.Tensor:
        centres, covariances, amplitudes = splats.centres, splats.covariances, splats.amplitudes
        if centres.device.type != "cuda" and not triton_kernels.INTERPRETED:
            raise IXGSError(
                f"the Triton render backend needs a CUDA GPU, not {centres.device} (use IXGS_RENDER_BACKEND=auto "
                "or torch; TRITON_INTERPRET=1 runs the kernels, slowly, on the CPU for tests)"
            )
        if amplitudes.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"the Triton render backend computes in float32 or float64, not {amplitudes.dtype}")
        kept, bins = _bin_tiles(splats, grid)
        rows, columns = zip(*monomial_pairs(len(grid.sizes)), strict=True)
        precision = inverse_symmetric(covariances[kept])[:, list(rows), list(columns)]
        return _TileSum.apply(centres[kept], precision, amplitudes[kept].contiguous(), bins)

    def check_device(self, device: torch.device | str) -> None:
        """Raise RuntimeError saying why this backend cannot serve ``device``: not CUDA, a GPU
        older than Triton supports, or kernels that fail :meth:`self_test` there."""
        device = torch.device(device)
        if device.type != "cuda":
            raise RuntimeError(f"device {device} is not a CUDA GPU")
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CAPABILITY:
            name = torch.cuda.get_device_name(device)
            raise RuntimeError(f"{name} has compute capability {capability[0]}.{capability[1]}; Triton needs 8.0+")
        self.self_test(device)

    def self_test(self, device: torch.device | str) -> None:
        """Compile the kernels on ``device`` and raise RuntimeError unless render and voxelize
        values and gradients of a small float32 scene match the torch reference's."""
        reference, candidate = TorchBackend(), SplatRenderer(self)
        for what in ("render", "voxelize"):
            expected = _check_scene(reference, what, torch.device(device))
            actual = _check_scene(candidate, what, torch.device(device))
            for name, want, got in zip(("values", "gradients"), expected, actual, strict=True):
                error = float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp_min(1e-30))
                if not error <= _CHECK_TOLERANCE:
                    raise RuntimeError(f"Triton {what} {name} differ from the torch reference by {error:.2g}")


def _check_scene(backend: SplatRenderer, what: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and mean-gradient of a small fixed float32 scene (40 Gaussians; a 40 x 48 view or
    a 20^3 grid) on ``device``: the scene of :meth:`TritonAccumulator.self_test`."""
    generator = torch.Generator().manual_seed(0)
    means = (torch.rand(40, 3, generator=generator) - 0.5).to(device).requires_grad_()
    scales = 0.02 + 0.1 * torch.rand(40, 3, generator=generator)
    covariances = torch.diag_embed(scales**2).to(device)
    densities = torch.rand(40, generator=generator).to(device)
    if what == "render":  # a pinhole 3 units from the origin, focal length 60 pixels
        matrix = np.array([[60.0, 0.0, 24.0, 72.0], [0.0, 60.0, 20.0, 60.0], [0.0, 0.0, 1.0, 3.0]])
        out = backend.render(means, covariances, densities, torch.tensor(matrix[None], device=device), (40, 48))
    else:
        grid = VolumeGrid((20, 20, 20), origin=np.full(3, -0.6), spacing=np.full(3, 0.06))
        out = backend.voxelize(means, covariances, densities, grid)
    (gradient,) = torch.autograd.grad(out.square().mean(), means)
    return out.detach(), gradient


class TritonBackend(SplatRenderer):
    """The fast backend, the splat stage with :class:`TritonAccumulator`."""

    def __init__(self) -> None:
        super().__init__(TritonAccumulator())

    def self_test(self, device: torch.device | str) -> None:
        """:meth:`TritonAccumulator.self_test`."""
        self.accumulator.self_test(device)
