"""Trained Gaussians as a volume: their sum at the voxel centres of a world grid, in 1/mm."""

from __future__ import annotations

import numpy as np
import torch

from ixgs_engine.gaussians.model import GaussianModel
from ixgs_engine.geometry.normalization import SceneNormalization
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.render.backend import RenderBackend
from ixgs_engine.volume import Volume, VolumeGrid

SLAB_VOXELS = 1 << 21


def voxelize_volume(
    model: GaussianModel, scene: SceneNormalization, roi: ROI, grid: VolumeGrid, backend: RenderBackend
) -> Volume:
    """Sum of the Gaussians at the voxel centres of a world grid, in 1/mm, a slab of z at a
    time to bound memory: those centred in the ROI inside it, the others outside it (the
    partition the training renders, see ``RenderBackend``)."""
    support = tuple(float(h) for h in scene.half_sizes(roi))
    normalized = scene.grid_to_normalized(grid)
    nz, ny, nx = grid.shape
    slab = max(1, SLAB_VOXELS // (ny * nx))
    values = np.empty(grid.shape, dtype=np.float32)
    with torch.no_grad():
        means, covariances, densities = model.positions, model.covariances(), model.densities
        for start in range(0, nz, slab):
            depth = min(slab, nz - start)
            block = backend.voxelize(
                means, covariances, densities, normalized.block((start, 0, 0), (depth, ny, nx)), support
            )
            values[start : start + depth] = block.cpu().numpy()
    return Volume.on_grid(grid, scene.attenuation_to_world(values).astype(np.float32))
