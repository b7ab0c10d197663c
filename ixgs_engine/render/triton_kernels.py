"""Triton kernels of the tile-binned Gaussian accumulation (2-D detector images and 3-D voxel grids).

The sample grid (``views`` copies of an nx x ny x nz grid, x fastest) is cut into tiles of
``TX x TY x TZ`` samples: 16 x 16 pixels, 8 x 8 x 8 voxels. Each tile has a list of the splats
whose cutoff box touches it (built and sorted by tile in PyTorch); one program per tile walks
its list ``BLOCK`` splats at a time, evaluating ``exp(-1/2 d^T Q d)`` on a (BLOCK, tile) block.

- forward: the tile's values are summed over its splats and stored once (no atomics; every
  sample of the output is written, so the output needs no zero fill).
- backward: per splat and tile, the moments ``sum e g``, ``sum e g d_a`` and ``sum e g d_a d_b``
  (``e`` the cut Gaussian, ``g`` the upstream gradient, ``d`` = sample - centre) are reduced over
  the tile and added atomically to the splat's row; the chain rule to amplitude, centre and
  precision is three lines of PyTorch on these moments.

Splat parameters are packed per row: centre high part (DIMS), centre low part (DIMS; the centre
is ``hi + lo`` so that ``d`` keeps float64 accuracy in float32 arithmetic), the upper triangle
of the precision Q (row-major: q00, q01, [q02,] q11, [q12, q22]) and the amplitude.

The kernels are plain ``triton.jit`` functions: with ``TRITON_INTERPRET=1`` set before Triton is
first imported they run on CPU tensors through Triton's interpreter (how the CPU tests run).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _tile_samples(tile, tiles_x, tiles_y, tiles_per_view, TX: tl.constexpr, TY: tl.constexpr, TZ: tl.constexpr):
    """View index and integer sample coordinates (x, y, z) of the tile's samples."""
    view = tile // tiles_per_view
    local = tile % tiles_per_view
    tx = local % tiles_x
    ty = (local // tiles_x) % tiles_y
    tz = local // (tiles_x * tiles_y)
    p = tl.arange(0, TX * TY * TZ)
    x = tx * TX + p % TX
    y = ty * TY + (p // TX) % TY
    z = tz * TZ + p // (TX * TY)
    return view, x, y, z


@triton.jit
def _cut_gaussians(params_ptr, ids_ptr, first, end, x, y, z, cutoff_value, DIMS: tl.constexpr, BLOCK: tl.constexpr):
    """The (BLOCK, tile) block of ``exp(-1/2 d^T Q d)`` (zero beyond the cutoff and on rows past
    ``end``) for list entries ``first ..``, with the splats' rows, amplitudes and offsets ``d``."""
    NPARAM = 2 * DIMS + (DIMS * (DIMS + 1)) // 2 + 1
    entry = first + tl.arange(0, BLOCK)
    valid = entry < end
    row = tl.load(ids_ptr + entry, mask=valid, other=0)
    base = params_ptr + row * NPARAM
    dtype = params_ptr.dtype.element_ty
    dx = (x.to(dtype)[None, :] - tl.load(base + 0, mask=valid, other=0.0)[:, None]) - tl.load(
        base + DIMS, mask=valid, other=0.0
    )[:, None]
    dy = (y.to(dtype)[None, :] - tl.load(base + 1, mask=valid, other=0.0)[:, None]) - tl.load(
        base + DIMS + 1, mask=valid, other=0.0
    )[:, None]
    q = base + 2 * DIMS
    if DIMS == 2:
        dz = dx * 0.0
        q00 = tl.load(q + 0, mask=valid, other=0.0)[:, None]
        q01 = tl.load(q + 1, mask=valid, other=0.0)[:, None]
        q11 = tl.load(q + 2, mask=valid, other=0.0)[:, None]
        power = -0.5 * (q00 * dx * dx + q11 * dy * dy) - q01 * dx * dy
    else:
        dz = (z.to(dtype)[None, :] - tl.load(base + 2, mask=valid, other=0.0)[:, None]) - tl.load(
            base + DIMS + 2, mask=valid, other=0.0
        )[:, None]
        q00 = tl.load(q + 0, mask=valid, other=0.0)[:, None]
        q01 = tl.load(q + 1, mask=valid, other=0.0)[:, None]
        q02 = tl.load(q + 2, mask=valid, other=0.0)[:, None]
        q11 = tl.load(q + 3, mask=valid, other=0.0)[:, None]
        q12 = tl.load(q + 4, mask=valid, other=0.0)[:, None]
        q22 = tl.load(q + 5, mask=valid, other=0.0)[:, None]
        power = -0.5 * (q00 * dx * dx + q11 * dy * dy + q22 * dz * dz) - (q01 * dx * dy + q02 * dx * dz + q12 * dy * dz)
    amplitude = tl.load(base + NPARAM - 1, mask=valid, other=0.0)
    values = tl.exp(power)
    values = tl.where((values > cutoff_value) & valid[:, None], values, 0.0)
    return values, row, valid, amplitude, dx, dy, dz


@triton.jit
def _add_moments(moments_ptr, weighted, row, valid, dx, dy, dz, DIMS: tl.constexpr):
    """Add each splat's moments of ``weighted`` (BLOCK, tile) over the tile atomically to its row of
    ``moments``: 1, d_a, then d_a d_b in precision order."""
    NMOMENT = 1 + DIMS + (DIMS * (DIMS + 1)) // 2
    out = moments_ptr + row * NMOMENT
    tl.atomic_add(out + 0, tl.sum(weighted, axis=1), mask=valid)
    wx = weighted * dx
    wy = weighted * dy
    tl.atomic_add(out + 1, tl.sum(wx, axis=1), mask=valid)
    tl.atomic_add(out + 2, tl.sum(wy, axis=1), mask=valid)
    if DIMS == 2:
        tl.atomic_add(out + 3, tl.sum(wx * dx, axis=1), mask=valid)
        tl.atomic_add(out + 4, tl.sum(wx * dy, axis=1), mask=valid)
        tl.atomic_add(out + 5, tl.sum(wy * dy, axis=1), mask=valid)
    else:
        wz = weighted * dz
        tl.atomic_add(out + 3, tl.sum(wz, axis=1), mask=valid)
        tl.atomic_add(out + 4, tl.sum(wx * dx, axis=1), mask=valid)
        tl.atomic_add(out + 5, tl.sum(wx * dy, axis=1), mask=valid)
        tl.atomic_add(out + 6, tl.sum(wx * dz, axis=1), mask=valid)
        tl.atomic_add(out + 7, tl.sum(wy * dy, axis=1), mask=valid)
        tl.atomic_add(out + 8, tl.sum(wy * dz, axis=1), mask=valid)
        tl.atomic_add(out + 9, tl.sum(wz * dz, axis=1), mask=valid)


@triton.jit
def tile_sum(
    out_ptr,
    grad_ptr,
    params_ptr,
    ids_ptr,
    starts_ptr,
    tiles_x,
    tiles_y,
    tiles_per_view,
    nx,
    ny,
    nz,
    sx,
    sy,
    sz,
    per_view,
    cutoff_value,
    DIMS: tl.constexpr,
    TX: tl.constexpr,
    TY: tl.constexpr,
    TZ: tl.constexpr,
    BLOCK: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    """One program per tile. Forward: ``out`` gets the sum of the tile's splats' amplitude-weighted
    cut Gaussians (``grad`` is not read). ``BACKWARD``: each listed splat's moments of
    ``e * grad`` over the tile are added to its row of ``out`` (see :func:`_add_moments`)."""
    tile = tl.program_id(0)
    view, x, y, z = _tile_samples(tile, tiles_x, tiles_y, tiles_per_view, TX, TY, TZ)
    inside = (x < nx) & (y < ny) & (z < nz)
    samples = view * per_view + x * sx + y * sy + z * sz
    first = tl.load(starts_ptr + tile)
    end = tl.load(starts_ptr + tile + 1)
    if BACKWARD:
        upstream = tl.load(grad_ptr + samples, mask=inside, other=0.0)
    else:
        total = tl.zeros((TX * TY * TZ,), dtype=out_ptr.dtype.element_ty)
    for block in range(first, end, BLOCK):
        values, row, valid, amplitude, dx, dy, dz = _cut_gaussians(
            params_ptr, ids_ptr, block, end, x, y, z, cutoff_value, DIMS, BLOCK
        )
        if BACKWARD:
            _add_moments(out_ptr, values * upstream[None, :], row, valid, dx, dy, dz, DIMS)
        else:
            total += tl.sum(values * amplitude[:, None], axis=0)
    if not BACKWARD:
        tl.store(out_ptr + samples, total, mask=inside)
