"""SART (simultaneous algebraic reconstruction) with the Joseph projector, any geometry.

Each update uses one subset of views: ``x += relaxation * A_s^T((p_s - A_s x) / A_s 1) /
A_s^T 1``, i.e. residuals normalized by each ray's length through the volume and the
backprojection normalized by each voxel's total weight (Andersen & Kak 1984). Subsets are
visited in a fixed interleaved order so consecutive updates use far-apart views.

With a :class:`Shell`, a second, coarser grid around the volume is solved with it (the
unknowns are both grids; its projections add to the volume's): each ray's residual is
normalized by its length through both, so what lies around the volume is fitted where it is
instead of landing in the volume's voxels along rays that graze its faces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ixgs_engine.progress import ProgressCallback
from ixgs_engine.projector.joseph import JosephProjector
from ixgs_engine.volume import Volume, VolumeGrid

# Each subset's voxel weights (a back projection of ones) are kept while they fit in this many
# bytes, and recomputed at every update otherwise (one more back projection an update), so
# SART on a fine output grid (hundreds of MB a volume) does not hold one volume per view.
WEIGHT_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class Shell:
    """A coarse grid around the reconstructed volume (the rest of a truncated patient), solved
    with it: started from ``initial``, its voxels where ``held`` is true (those inside the
    volume's box) kept at zero, updated during the first ``passes`` passes and then held, its
    projections kept (after a few passes it changes little, and it costs as much a pass as
    the volume)."""

    grid: VolumeGrid
    initial: np.ndarray
    held: np.ndarray
    passes: int

    def __post_init__(self) -> None:
        if self.initial.shape != self.grid.shape or self.held.shape != self.grid.shape:
            raise ValueError(f"the shell's arrays must have its grid's shape {self.grid.shape}")


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
    shell: Shell | None = None,
    min_ray_mm: float = 0.0,
    ceiling: np.ndarray | None = None,
) -> Volume:
    """Reconstruct attenuation (same units as projections per mm) on ``grid``.

    ``min_ray_mm`` damps the voxels at the grid's corners and edges: a ray's residual is divided
    by its length through the grid or at least ``min_ray_mm`` (a ray clipping a corner for a
    fraction of a voxel would otherwise put its whole residual there: with data not exactly
    consistent with the grid, such as poses slightly off, those voxels grow without bound).
    0: plain SART. ``ceiling`` (``grid.shape``, 1/mm; ``classical.ceiling``) is each voxel's
    upper bound, applied with positivity after every update and after each pass.

    ``iterations`` counts full passes over all views; ``progress(done, total)`` is called
    after each subset update; ``after_pass(volume, before)`` after each pass, with the volume
    before that pass, may change ``volume`` in place (a regularization step between passes).
    With a ``shell``, it is solved alongside (see :class:`Shell`); only ``grid``'s volume is
    returned."""
    values = torch.as_tensor(np.asarray(projections, dtype=np.float32), device=device)
    if values.ndim != 3 or values.shape[0] != len(matrices):
        raise ValueError(f"need projections (N, H, W) for {len(matrices)} matrices, got {tuple(values.shape)}")
    projector = JosephProjector(grid, matrices, tuple(values.shape[1:]), device=device)
    volume = torch.zeros(grid.shape, dtype=torch.float32, device=device)
    if initial is not None:
        volume += torch.as_tensor(np.asarray(initial, dtype=np.float32), device=device)
    upper = None
    if ceiling is not None:
        if tuple(np.shape(ceiling)) != tuple(grid.shape):
            raise ValueError(f"the ceiling must have the grid's shape {grid.shape}, got {np.shape(ceiling)}")
        upper = torch.as_tensor(np.asarray(ceiling, dtype=np.float32), device=device)
        torch.minimum(volume, upper, out=volume)
    subsets = interleaved_subsets(projector.num_views, views_per_subset)
    subset_projectors = [projector.subset(views) for views in subsets]
    ones = torch.ones(grid.shape, dtype=torch.float32, device=device)
    ray_lengths = [p.forward(ones) for p in subset_projectors]
    around = _ShellState(shell, matrices, tuple(values.shape[1:]), subsets, device) if shell is not None else None
    if around is not None:
        ray_lengths = [lengths + extra for lengths, extra in zip(ray_lengths, around.ray_lengths(), strict=True)]
    cached = len(subsets) * ones.numel() * ones.element_size() <= WEIGHT_CACHE_BYTES
    voxel_weights = [
        p.adjoint(torch.ones_like(lengths)) if cached else None
        for p, lengths in zip(subset_projectors, ray_lengths, strict=True)
    ]
    total = iterations * len(subsets)
    done = 0
    for iteration in range(iterations):
        before = volume.clone() if after_pass is not None else volume
        if around is not None and iteration == shell.passes:
            around.hold()
        for index, (views, sub, lengths, weights) in enumerate(
            zip(subsets, subset_projectors, ray_lengths, voxel_weights, strict=True)
        ):
            residual = values[views] - sub.forward(volume)
            if around is not None:
                residual -= around.projection(index)
            floor = max(min_ray_mm, 1e-6)
            normalized = torch.where(lengths > 1e-6, residual / lengths.clamp_min(floor), torch.zeros_like(residual))
            if weights is None:
                weights = sub.adjoint(torch.ones_like(lengths))
            volume += relaxation * _normalized_back_projection(sub, normalized, weights)
            if positivity:
                volume.clamp_(min=0.0)
            if upper is not None:
                torch.minimum(volume, upper, out=volume)
            if around is not None and around.held_projections is None:
                around.update(index, relaxation * normalized, positivity)
            done += 1
            if progress is not None:
                progress(done, total)
        if after_pass is not None:
            after_pass(volume, before)
            if upper is not None:
                torch.minimum(volume, upper, out=volume)
    return Volume.on_grid(grid, volume.cpu().numpy())


def _normalized_back_projection(
    projector: JosephProjector, normalized: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``A^T r / A^T 1``, zero where no ray reaches a voxel."""
    update = projector.adjoint(normalized)
    return torch.where(weights > 1e-6, update / weights.clamp_min(1e-6), torch.zeros_like(update))


class _ShellState:
    """A :class:`Shell` during SART: its volume, per-subset projectors and voxel weights, and
    its projections once it is held."""

    def __init__(
        self,
        shell: Shell,
        matrices: Sequence[np.ndarray] | np.ndarray,
        image_shape: tuple[int, int],
        subsets: list[list[int]],
        device: str | torch.device,
    ) -> None:
        whole = JosephProjector(shell.grid, matrices, image_shape, device=device)
        self.projectors = [whole.subset(views) for views in subsets]
        self.free = torch.as_tensor(~np.asarray(shell.held, dtype=bool), dtype=torch.float32, device=device)
        self.volume = torch.as_tensor(np.asarray(shell.initial, dtype=np.float32), device=device) * self.free
        self.weights = [
            p.adjoint(torch.ones((len(views), *image_shape), device=device)) * self.free
            for p, views in zip(self.projectors, subsets, strict=True)
        ]
        self.held_projections: list[torch.Tensor] | None = None

    def ray_lengths(self) -> list[torch.Tensor]:
        """Each ray's length through the shell's free voxels."""
        return [p.forward(self.free) for p in self.projectors]

    def hold(self) -> None:
        """Stop updating the shell: its projections are computed once and kept."""
        self.held_projections = [p.forward(self.volume) for p in self.projectors]

    def projection(self, index: int) -> torch.Tensor:
        if self.held_projections is not None:
            return self.held_projections[index]
        return self.projectors[index].forward(self.volume)

    def update(self, index: int, normalized: torch.Tensor, positivity: bool) -> None:
        self.volume += _normalized_back_projection(self.projectors[index], normalized, self.weights[index])
        if positivity:
            self.volume.clamp_(min=0.0)
