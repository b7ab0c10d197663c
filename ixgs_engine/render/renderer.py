"""A render backend composed of the shared splat stage (``splats.py``) and an accumulator.

:class:`SplatRenderer` does what every backend does the same way: project the Gaussians
(``splats.project``) or place them on a voxel grid (``splats.voxel_splats``), part them at the
support box's faces, and hand the per-sample sums to its :class:`~ixgs_engine.render.splats.Accumulator`.
The splats that straddle a face are weighted per sample by their share on their side of the box;
that cut sum has one implementation, the torch windows (``torch_windows.cut_window_sum``), whatever
the accumulator: it concerns the few Gaussians near the ROI's faces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ixgs_engine.render.splats import (
    Accumulator,
    Cut,
    centred_in,
    near_a_face,
    project,
    ray_box_distances,
    voxel_splats,
    voxels_in_support,
)
from ixgs_engine.render.torch_windows import cut_window_sum
from ixgs_engine.volume import VolumeGrid


class SplatRenderer:
    """A :class:`~ixgs_engine.render.backend.RenderBackend` summing splats with ``accumulator``;
    ``chunk_elements`` bounds the torch windows of the support cut (None: the device's default)."""

    def __init__(self, accumulator: Accumulator, chunk_elements: int | None = None) -> None:
        self.accumulator = accumulator
        self.chunk_elements = chunk_elements

    @property
    def name(self) -> str:
        return self.accumulator.name

    def check_device(self, device: torch.device | str) -> None:
        """Raise RuntimeError saying why this backend cannot serve ``device``."""
        self.accumulator.check_device(device)

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
        """Line-integral images (V, H, W): see :mod:`ixgs_engine.render.backend`."""
        height, width = int(image_shape[0]), int(image_shape[1])
        views = matrices.shape[0]
        projection = project(means, covariances, densities, matrices, image_shape, screen_offsets)
        splats, grid = projection.splats, projection.grid
        if support is None:
            return self.accumulator.accumulate(splats, grid).reshape(views, height, width)
        inside, cut = (flag.repeat(views) for flag in near_a_face(means, covariances, support))
        whole = self.accumulator.accumulate(replace(splats, active=splats.active & ~cut), grid)
        near, far = ray_box_distances(projection.P, (height, width), support)
        parted = cut_window_sum(
            replace(splats, active=splats.active & cut),
            grid,
            Cut(near, far, projection.depth, projection.spread, inside),
            self.chunk_elements,
        )
        return (whole + parted).reshape(views, height, width)

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
        inside = centred_in(means, support)
        voxels_inside = voxels_in_support(grid, support, means.device)
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
        splats, samples = voxel_splats(means, covariances, densities, grid)
        return self.accumulator.accumulate(splats, samples).reshape(grid.shape)
