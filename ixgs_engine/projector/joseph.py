"""Joseph's voxel projector in PyTorch for arbitrary 3x4 projection matrices.

Each ray is sampled where it crosses the voxel planes of its dominant index axis, with
bilinear interpolation inside the plane (trilinear interpolation at an integer coordinate),
and each sample is weighted by the ray length it stands for: the same discretization as
RTK's Joseph forward projector, border included. As in RTK, the volume spans its outermost
voxel centres (index 0 .. n - 1 along each axis): a ray is cut to that box, plane k stands
for the ray's stretch between k - 1/2 and k + 1/2 inside it (so the first and last samples
weigh the partial steps to where the ray enters and leaves), and in-plane coordinates just
outside the box take the border voxel's value. So a CT whose tissue reaches the faces of its
box projects as RTK projects it (the tests compare the two on such volumes). Sampling uses
``grid_sample`` (border padding), so the operator is linear, differentiable, and its exact
transpose comes from the sampler's gradient. Work is split per view and per chunk of rays to
bound memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ixgs_engine.geometry.projection import normalize_projection_matrix
from ixgs_engine.volume import VolumeGrid

DEFAULT_SAMPLES_PER_CHUNK = 1 << 20


class JosephProjector:
    """Forward projection ``A`` and its transpose for one volume grid and a set of views."""

    def __init__(
        self,
        grid: VolumeGrid,
        matrices: np.ndarray | Sequence[np.ndarray],
        image_shape: tuple[int, int],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        samples_per_chunk: int = DEFAULT_SAMPLES_PER_CHUNK,
    ) -> None:
        if min(grid.shape) < 2:
            raise ValueError(f"the volume grid needs at least 2 voxels along every axis, got {grid.shape}")
        self.grid = grid
        self.matrices = np.stack([normalize_projection_matrix(P) for P in matrices])
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.device = torch.device(device)
        self.dtype = dtype
        self.samples_per_chunk = int(samples_per_chunk)
        self._world_to_index = torch.as_tensor(grid.world_to_index_matrix(), dtype=torch.float64, device=self.device)
        # (x, y, z) voxel counts, the order grid_sample's coordinates use.
        self._counts = torch.tensor(grid.size_ijk, dtype=torch.float64, device=self.device)
        height, width = self.image_shape
        v, u = torch.meshgrid(
            torch.arange(height, dtype=torch.float64, device=self.device),
            torch.arange(width, dtype=torch.float64, device=self.device),
            indexing="ij",
        )
        self._pixels = torch.stack(
            [u.reshape(-1), v.reshape(-1), torch.ones(height * width, dtype=torch.float64, device=self.device)]
        )

    @property
    def num_views(self) -> int:
        return int(self.matrices.shape[0])

    def subset(self, views: Sequence[int]) -> JosephProjector:
        """A projector for some of the views (same grid, device and chunking)."""
        return JosephProjector(
            self.grid, self.matrices[list(views)], self.image_shape, self.device, self.dtype, self.samples_per_chunk
        )

    def _index_rays(self, view: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Source (3,) and ray directions (R, 3) of one view in continuous index coordinates
        (x, y, z order), and each direction's world length (R,) (mm per unit of depth)."""
        P = torch.as_tensor(self.matrices[view], dtype=torch.float64, device=self.device)
        M_inv = torch.linalg.inv(P[:, :3])
        source_world = -M_inv @ P[:, 3]
        directions_world = (M_inv @ self._pixels).T
        source = self._world_to_index[:3, :3] @ source_world + self._world_to_index[:3, 3]
        directions = directions_world @ self._world_to_index[:3, :3].T
        return source, directions, directions_world.norm(dim=1)

    def _plane_samples(self, view: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For one view, chunks of (ray indices (R,), grid coordinates (R, L, 3) in [-1, 1],
        sample weights (R, L) in steps between planes, per-ray step length (R,)) covering every
        ray that meets the volume's box."""
        source, directions, lengths = self._index_rays(view)
        counts = self._counts
        safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
        t_a = (0.0 - source) / safe
        t_b = (counts - 1.0 - source) / safe
        t_enter = torch.minimum(t_a, t_b).amax(dim=1).clamp_min(0.0)
        t_exit = torch.maximum(t_a, t_b).amin(dim=1)
        dominant = directions.abs().argmax(dim=1)
        for axis in range(3):
            rays = torch.nonzero((dominant == axis) & (t_exit > t_enter)).squeeze(1)
            if rays.numel() == 0:
                continue
            d_axis = directions[rays, axis]
            k_enter = source[axis] + t_enter[rays] * d_axis
            k_exit = source[axis] + t_exit[rays] * d_axis
            k_near, k_far = torch.minimum(k_enter, k_exit), torch.maximum(k_enter, k_exit)
            # Plane k stands for the ray's stretch of [k - 1/2, k + 1/2] inside the box.
            k_low = torch.floor(k_near + 0.5).clamp(0, counts[axis] - 1)
            k_high = torch.floor(k_far + 0.5).clamp(0, counts[axis] - 1)
            span = (k_high - k_low + 1).long()
            order = torch.argsort(span)
            rays, d_axis, k_low, span = rays[order], d_axis[order], k_low[order], span[order]
            k_near, k_far = k_near[order], k_far[order]
            start = 0
            while start < rays.numel():
                stop = self._chunk_end(span, start)
                longest = int(span[stop - 1])
                steps = torch.arange(longest, dtype=torch.float64, device=self.device)
                planes = k_low[start:stop, None] + steps
                t = (planes - source[axis]) / d_axis[start:stop, None]
                points = source + t[..., None] * directions[rays[start:stop], None, :]
                coords = (2.0 * points / (counts - 1.0) - 1.0).to(self.dtype)
                covered = torch.minimum(planes + 0.5, k_far[start:stop, None]) - torch.maximum(
                    planes - 0.5, k_near[start:stop, None]
                )
                samples = (covered.clamp_min(0.0) * (steps < span[start:stop, None])).to(self.dtype)
                weight = (lengths[rays[start:stop]] / d_axis[start:stop].abs()).to(self.dtype)
                yield rays[start:stop], coords, samples, weight
                start = stop

    def _chunk_end(self, span: torch.Tensor, start: int) -> int:
        """End of the chunk of rays (sorted by ascending span) starting at ``start`` whose
        padded sample count stays within the budget (at least one ray)."""
        guess = min(start + max(self.samples_per_chunk // int(span[start]), 1), span.numel())
        return min(start + max(self.samples_per_chunk // int(span[guess - 1]), 1), span.numel())

    def _check_volume(self, volume: torch.Tensor) -> None:
        if tuple(volume.shape) != tuple(self.grid.shape):
            raise ValueError(f"volume shape {tuple(volume.shape)} does not match the grid {self.grid.shape}")

    def _forward_values(self, volume: torch.Tensor) -> torch.Tensor:
        self._check_volume(volume)
        height, width = self.image_shape
        source = volume.to(device=self.device, dtype=self.dtype)[None, None]
        out = torch.zeros(self.num_views, height * width, dtype=self.dtype, device=self.device)
        for view in range(self.num_views):
            for rays, coords, samples_weight, weight in self._plane_samples(view):
                samples = F.grid_sample(
                    source, coords[None, None], mode="bilinear", padding_mode="border", align_corners=True
                )
                out[view, rays] = (samples[0, 0, 0] * samples_weight).sum(dim=1) * weight
        return out.reshape(self.num_views, height, width)

    def adjoint(self, projections: torch.Tensor) -> torch.Tensor:
        """Backprojection ``A^T y``: the exact transpose of :meth:`forward`."""
        height, width = self.image_shape
        if tuple(projections.shape) != (self.num_views, height, width):
            raise ValueError(
                f"projections shape {tuple(projections.shape)} does not match ({self.num_views}, {height}, {width})"
            )
        flat = projections.to(device=self.device, dtype=self.dtype).reshape(self.num_views, -1)
        total = torch.zeros((1, 1, *self.grid.shape), dtype=self.dtype, device=self.device)
        with torch.enable_grad():
            for view in range(self.num_views):
                for rays, coords, samples_weight, weight in self._plane_samples(view):
                    leaf = torch.zeros(
                        (1, 1, *self.grid.shape), dtype=self.dtype, device=self.device, requires_grad=True
                    )
                    samples = F.grid_sample(
                        leaf, coords[None, None], mode="bilinear", padding_mode="border", align_corners=True
                    )
                    upstream = (flat[view, rays] * weight)[:, None] * samples_weight
                    (grad,) = torch.autograd.grad(samples[0, 0, 0], leaf, grad_outputs=upstream)
                    total += grad
        return total[0, 0]

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Line integrals (N, H, W) of ``volume`` (nz, ny, nx); differentiable in the volume."""
        return _Projection.apply(volume, self)

    __call__ = forward


class _Projection(torch.autograd.Function):
    """Autograd wrapper: forward without a graph, backward through the chunked adjoint."""

    @staticmethod
    def forward(ctx, volume: torch.Tensor, projector: JosephProjector) -> torch.Tensor:  # type: ignore[override]
        ctx.projector = projector
        ctx.volume_dtype = volume.dtype
        ctx.volume_device = volume.device
        return projector._forward_values(volume.detach())

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        grad = ctx.projector.adjoint(grad_output)
        return grad.to(dtype=ctx.volume_dtype, device=ctx.volume_device), None
