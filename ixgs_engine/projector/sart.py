"""SART (simultaneous algebraic reconstruction) with the Joseph projector, any geometry.

Each update uses one subset of views: ``x += relaxation * A_s^T((p_s - A_s x) / A_s 1) /
A_s^T 1``, i.e. residuals normalized by each ray's length through the volume and the
backprojection normalized by each voxel's total weight (Andersen & Kak 1984). Subsets are
visited in a fixed interleaved order so consecutive updates use far-apart views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ixgs_engine.progress import ProgressCallback
from ixgs_engine.projector.joseph import JosephProjector
from ixgs_engine.volume import Volume, VolumeGrid

# Each subset's voxel weights (a back projection of ones) are kept while they fit in this many
# bytes, and recomputed at every update otherwise (one more back projection an update), so
# SART on a fine output grid (hundreds of MB a volume) does not hold one volume per view.
WEIGHT_CACHE_BYTES = 1 << 30


def interleaved_subsets(num_views: int, views_per_subset: int) -> list[list[int]]:
    """Split views into subsets of evenly strided views and order the subsets with a
    golden-ratio stride, so that consecutive updates use far-apart views of an orbit."""
    if views_per_subset < 1:
        raise ValueError("views_per_subset must be >= 1")
    count = int(np.ceil(num_views / views_per_subset))
    subsets = [list(range(start, num_views, count)) for start in range(count)]
    stride = max(int(round(count * 0.381966)), 1)
    while np.gcd(stride, count) != 1:
        stride += 1
    return [subsets[(i * stride) % count] for i in range(count)]


def sart(
    projections: np.ndarray,
    matrices: Sequence[np.ndarray] | np.ndarray,
    grid: VolumeGrid,
    iterations: int,
    relaxation: float = 0.5,
    views_per_subset: int = 1,
    positivity: bool = True,
    initial: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    after_pass: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> Volume:
    """Reconstruct attenuation (same units as projections per mm) on ``grid``.

    ``iterations`` counts full passes over all views; ``progress(done, total)`` is called
    after each subset update; ``after_pass(volume, before)`` after each pass, with the volume
    before that pass, may change ``volume`` in place (a regularization step between passes)."""
    values = torch.as_tensor(np.asarray(projections, dtype=np.float32), device=device)
    if values.ndim != 3 or values.shape[0] != len(matrices):
        raise ValueError(f"need projections (N, H, W) for {len(matrices)} matrices, got {tuple(values.shape)}")
    projector = JosephProjector(grid, matrices, tuple(values.shape[1:]), device=device)
    volume = torch.zeros(grid.shape, dtype=torch.float32, device=device)
    if initial is not None:
        volume += torch.as_tensor(np.asarray(initial, dtype=np.float32), device=device)
    subsets = interleaved_subsets(projector.num_views, views_per_subset)
    subset_projectors = [projector.subset(views) for views in subsets]
    ones = torch.ones(grid.shape, dtype=torch.float32, device=device)
    ray_lengths = [p.forward(ones) for p in subset_projectors]
    cached = len(subsets) * ones.numel() * ones.element_size() <= WEIGHT_CACHE_BYTES
    voxel_weights = [
        p.adjoint(torch.ones_like(lengths)) if cached else None
        for p, lengths in zip(subset_projectors, ray_lengths, strict=True)
    ]
    total = iterations * len(subsets)
    done = 0
    for _ in range(iterations):
        before = volume.clone() if after_pass is not None else volume
        for views, sub, lengths, weights in zip(subsets, subset_projectors, ray_lengths, voxel_weights, strict=True):
            residual = values[views] - sub.forward(volume)
            normalized = torch.where(lengths > 1e-6, residual / lengths.clamp_min(1e-6), torch.zeros_like(residual))
            update = sub.adjoint(normalized)
            if weights is None:
                weights = sub.adjoint(torch.ones_like(lengths))
            volume += relaxation * torch.where(
                weights > 1e-6, update / weights.clamp_min(1e-6), torch.zeros_like(update)
            )
            if positivity:
                volume.clamp_(min=0.0)
            done += 1
            if progress is not None:
                progress(done, total)
        if after_pass is not None:
            after_pass(volume, before)
    return Volume.on_grid(grid, volume.cpu().numpy())
