"""From trained Gaussians to files: the attenuation volume on the ROI grid (1/mm, world
geometry), an optional thresholded label map, and the Gaussians themselves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ixgs_engine.gaussians.model import GaussianModel
from ixgs_engine.geometry.normalization import SceneNormalization
from ixgs_engine.geometry.roi import ROI, roi_grid
from ixgs_engine.io import atomic_output
from ixgs_engine.io.volumes import write_volume
from ixgs_engine.render.backend import RenderBackend, normalized_grid, subgrid
from ixgs_engine.volume import Volume, VolumeGrid

SLAB_VOXELS = 1 << 21


def voxelize_volume(
    model: GaussianModel, scene: SceneNormalization, roi: ROI, grid: VolumeGrid, backend: RenderBackend
) -> Volume:
    """Sum of the Gaussians at the voxel centres of a world grid, in 1/mm, a slab of z at a
    time to bound memory: those centred in the ROI inside it, the others outside it (the
    partition the training renders, see ``RenderBackend``)."""
    support = tuple(float(h) for h in scene.half_sizes(roi))
    normalized = normalized_grid(grid, scene)
    nz, ny, nx = grid.shape
    slab = max(1, SLAB_VOXELS // (ny * nx))
    values = np.empty(grid.shape, dtype=np.float32)
    with torch.no_grad():
        means, covariances, densities = model.positions, model.covariances(), model.densities
        for start in range(0, nz, slab):
            depth = min(slab, nz - start)
            block = backend.voxelize(
                means, covariances, densities, subgrid(normalized, (start, 0, 0), (depth, ny, nx)), support
            )
            values[start : start + depth] = block.cpu().numpy()
    return Volume.on_grid(grid, scene.attenuation_to_world(values).astype(np.float32))


@dataclass
class WrittenOutputs:
    volume: Path
    gaussians: Path
    label: Path | None


def write_outputs(
    output_dir: str | Path,
    model: GaussianModel,
    scene: SceneNormalization,
    roi: ROI,
    voxel_size: float,
    backend: RenderBackend,
    volume_format: str = "nrrd",
    threshold: float | None = None,
) -> tuple[Volume, WrittenOutputs]:
    """Voxelize and write ``volume.<fmt>``, ``gaussians.npz`` and, with a threshold (1/mm),
    ``label.<fmt>`` (1 where attenuation >= threshold)."""
    output_dir = Path(output_dir)
    volume = voxelize_volume(model, scene, roi, roi_grid(roi, voxel_size), backend)
    volume_path = output_dir / f"volume.{volume_format}"
    write_volume(volume_path, volume)
    gaussians_path = output_dir / "gaussians.npz"
    with atomic_output(gaussians_path) as temp:
        model.save(temp)
    label_path = None
    if threshold is not None:
        label_path = output_dir / f"label.{volume_format}"
        write_volume(label_path, volume.with_array((volume.array >= threshold).astype(np.uint8)))
    return volume, WrittenOutputs(volume_path, gaussians_path, label_path)
