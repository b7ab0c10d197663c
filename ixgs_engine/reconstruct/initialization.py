"""Starting Gaussians: uniform random in the box (the IXGS paper's) or sampled from a few
SART iterations (ours), with densities calibrated so the first renders match the views."""

from __future__ import annotations

import numpy as np
import torch

from ixgs_engine.gaussians.model import GaussianModel
from ixgs_engine.geometry.roi import ROI, roi_grid
from ixgs_engine.projector.sart import sart
from ixgs_engine.reconstruct.config import ReconstructionConfig
from ixgs_engine.reconstruct.data import TrainingData
from ixgs_engine.render.backend import RenderBackend, normalized_grid
from ixgs_engine.volume import VolumeGrid

CALIBRATION_VIEWS = 8
# SART runs on the ROI grown by this factor: where the patient extends beyond the ROI (the usual
# clinical case), rays that graze the box carry attenuation from outside it, which SART on the
# box alone piles into spikes at its faces (up to 500x bone in a test); the margin absorbs it.
SART_MARGIN = 1.5


def sart_start(data: TrainingData, config: ReconstructionConfig) -> tuple[np.ndarray, VolumeGrid]:
    """A coarse SART volume (normalized densities) over the ROI and a margin around it, zero
    outside the ROI, and its grid in normalized coordinates."""
    roi = data.roi
    grown = ROI(roi.center, roi.size * SART_MARGIN, roi.direction)
    grid = roi_grid(grown, float(np.max(grown.size)) / config.init_grid_size)
    volume = sart(
        data.targets.cpu().numpy(),
        data.world_matrices,
        grid,
        iterations=config.init_sart_iterations,
        device=data.targets.device,
    )
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    centres = np.stack([i, j, k], axis=-1) @ grid.index_to_world_matrix()[:3, :3].T + grid.origin
    values = np.where(roi.contains(centres), volume.array, 0.0)
    return data.scene.attenuation_to_normalized(values), normalized_grid(grid, data.scene)


def calibrate_densities(model: GaussianModel, data: TrainingData, backend: RenderBackend) -> GaussianModel:
    """Scale all densities by one factor so that a few rendered views carry the same total
    line integral as the measured ones."""
    views = torch.linspace(0, data.num_views - 1, min(CALIBRATION_VIEWS, data.num_views)).round().long()
    with torch.no_grad():
        rendered = backend.render(model.positions, model.covariances(), model.densities, data.matrices[views], data.image_shape)
        factor = float(data.targets[views].sum() / rendered.sum().clamp_min(1e-12))
        return GaussianModel.from_values(
            model.positions, model.scales, model.rotations, model.densities * factor,
            scale_bounds=model.scale_bounds, normalization=model.normalization,
            device=model.positions.device, dtype=model.positions.dtype,
        )


def initial_model(data: TrainingData, config: ReconstructionConfig, backend: RenderBackend) -> GaussianModel:
    """The Gaussians a run starts from (deterministic for ``config.seed``)."""
    device = data.targets.device
    if config.init == "volume":
        values, grid = sart_start(data, config)
        model = GaussianModel.from_volume(
            values, grid, config.num_gaussians, seed=config.seed, normalization=data.scene, device=device
        )
    else:
        model = GaussianModel.random(config.num_gaussians, density=1.0, seed=config.seed, normalization=data.scene, device=device)
    return calibrate_densities(model, data, backend)
