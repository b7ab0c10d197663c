"""Starting Gaussians: uniform random (the IXGS paper's) or sampled from a few SART iterations
(ours), over the model's domain (the ROI and, coarser, the region around it), with densities
calibrated so the first renders match the views."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ixgs_engine.classical.sart import sart
from ixgs_engine.gaussians.model import GaussianModel
from ixgs_engine.geometry.roi import ROI, roi_grid
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.reconstruct.config import ReconstructionConfig
from ixgs_engine.reconstruct.data import TrainingData, detector_voxel_size
from ixgs_engine.render.backend import RenderBackend
from ixgs_engine.volume import Volume, VolumeGrid

CALIBRATION_VIEWS = 8
# SART runs on at least the ROI grown by this factor: where the patient extends beyond the box
# it reconstructs, rays that graze the box carry attenuation from outside it, which SART piles
# into spikes at the box faces (up to 500x bone in a test); the margin absorbs it.
SART_MARGIN = 1.5


@dataclass(frozen=True)
class ModelDomain:
    """Where the Gaussians live, in normalized coordinates: the ROI's half-sizes and the
    domain's (the ROI grown by ``config.domain_scale``), both centred at the origin."""

    roi: np.ndarray
    domain: np.ndarray

    @classmethod
    def of(cls, data: TrainingData, config: ReconstructionConfig) -> ModelDomain:
        half = data.scene.half_sizes(data.roi)
        return cls(roi=half, domain=half * config.domain_scale)

    @property
    def support(self) -> tuple[float, float, float]:
        """The ROI's half-sizes: the face at which the render backends part the Gaussians in
        the ROI (cut at its faces) from those around it (cut where the ROI starts)."""
        return tuple(float(h) for h in self.roi)

    def outside_roi(self, points: np.ndarray) -> np.ndarray:
        """Which normalized points (..., 3) lie outside the ROI."""
        return np.any(np.abs(points) > self.roi, axis=-1)


def _sart_volume(
    data: TrainingData, config: ReconstructionConfig, box: ROI, pitch: float, progress: ProgressCallback | None
) -> tuple[np.ndarray, VolumeGrid]:
    """A few SART iterations (normalized densities) on ``box`` at ``pitch`` mm, and the grid in
    normalized coordinates."""
    grid = roi_grid(box, pitch)
    volume = sart(
        data.targets.cpu().numpy(),
        data.world_matrices,
        grid,
        iterations=config.init_sart_iterations,
        device=data.targets.device,
        progress=progress,
    )
    return data.scene.attenuation_to_normalized(volume.array), data.scene.grid_to_normalized(grid)


def sart_start(
    data: TrainingData, config: ReconstructionConfig, progress: ProgressCallback | None = None
) -> tuple[np.ndarray, VolumeGrid]:
    """SART over the ROI and a margin around it (zero outside the ROI) at the finer of the
    ROI's longest side over ``config.init_grid_size`` and a training pixel at the ROI's
    centre (no finer than the views resolve), and its grid in normalized coordinates."""
    roi = data.roi
    pitch = max(float(np.max(roi.size)) / config.init_grid_size, detector_voxel_size(data.world_matrices, roi))
    values, grid = _sart_volume(data, config, ROI(roi.center, roi.size * SART_MARGIN, roi.direction), pitch, progress)
    return np.where(ModelDomain.of(data, config).outside_roi(grid.voxel_centres()), 0.0, values), grid


def start_volume(data: TrainingData, values: np.ndarray, grid: VolumeGrid) -> Volume:
    """The SART start (``sart_start``'s normalized densities and grid) in world units (1/mm, mm):
    the run's first look at the anatomy (its preview)."""
    attenuation = np.asarray(data.scene.attenuation_to_world(values), dtype=np.float32)
    return Volume.on_grid(data.scene.grid_to_world(grid), attenuation)


def sart_surroundings(
    data: TrainingData, config: ReconstructionConfig, progress: ProgressCallback | None = None
) -> tuple[np.ndarray, VolumeGrid]:
    """A coarse SART over the whole domain (``config.init_grid_size`` voxels across it), zero in
    the ROI: where the Gaussians around the ROI start."""
    roi, domain = data.roi, ModelDomain.of(data, config)
    box = ROI(roi.center, roi.size * config.domain_scale, roi.direction)
    values, grid = _sart_volume(data, config, box, float(np.max(box.size)) / config.init_grid_size, progress)
    return np.where(domain.outside_roi(grid.voxel_centres()), values, 0.0), grid


def random_positions(domain: ModelDomain, n: int, share: float, seed: int) -> np.ndarray:
    """``n`` points: ``1 - share`` of them uniform in the ROI, the rest uniform in the domain
    around it (the IXGS paper's random start, extended to the model's domain)."""
    rng = np.random.default_rng(seed)
    outside_count = int(round(n * share)) if np.any(domain.domain > domain.roi) else 0
    inside = rng.uniform(-domain.roi, domain.roi, size=(n - outside_count, 3))
    outside = np.empty((0, 3))
    while len(outside) < outside_count:
        batch = rng.uniform(-domain.domain, domain.domain, size=(2 * outside_count, 3))
        outside = np.concatenate([outside, batch[domain.outside_roi(batch)]])
    return np.concatenate([inside, outside[:outside_count]])


def calibrate_densities(
    model: GaussianModel, data: TrainingData, backend: RenderBackend, support: tuple[float, float, float]
) -> GaussianModel:
    """Scale all densities by one factor so that a few rendered views carry the same total
    line integral as the measured ones."""
    views = torch.linspace(0, data.num_views - 1, min(CALIBRATION_VIEWS, data.num_views)).round().long()
    with torch.no_grad():
        rendered = backend.render(
            model.positions,
            model.covariances(),
            model.densities,
            data.matrices[views],
            data.image_shape,
            support=support,
        )
        factor = float(data.targets[views].sum() / rendered.sum().clamp_min(1e-12))
        return GaussianModel.from_values(
            model.positions,
            model.scales,
            model.rotations,
            model.densities * factor,
            scale_bounds=model.scale_bounds,
            normalization=model.normalization,
            device=model.positions.device,
            dtype=model.positions.dtype,
        )


def initial_model(
    data: TrainingData,
    config: ReconstructionConfig,
    backend: RenderBackend,
    stage_progress: Callable[[str], ProgressCallback] | None = None,
    on_start_volume: Callable[[Volume], None] | None = None,
) -> GaussianModel:
    """The Gaussians a run starts from (deterministic for ``config.seed``);
    ``stage_progress(name)`` gives a progress callback for each SART stage of a volume start,
    and ``on_start_volume`` receives that start (``start_volume``) as soon as it exists."""
    device = data.targets.device
    domain = ModelDomain.of(data, config)

    def progress(name: str) -> ProgressCallback | None:
        return stage_progress(name) if stage_progress is not None else None

    if config.init == "volume":
        outside_count = int(round(config.num_gaussians * config.outside_share)) if config.domain_scale > 1 else 0
        values, grid = sart_start(data, config, progress("SART start"))
        if on_start_volume is not None:
            on_start_volume(start_volume(data, values, grid))
        parts = [GaussianModel.from_volume(values, grid, config.num_gaussians - outside_count, seed=config.seed)]
        if outside_count:
            values, grid = sart_surroundings(data, config, progress("SART surroundings"))
            if np.any(values > 0):
                parts.append(GaussianModel.from_volume(values, grid, outside_count, seed=config.seed + 1))
        model = GaussianModel.concatenate(parts, normalization=data.scene, device=device)
    else:
        positions = random_positions(domain, config.num_gaussians, config.outside_share, config.seed)
        model = GaussianModel.at_points(positions, density=1.0, normalization=data.scene, device=device)
    return calibrate_densities(model, data, backend, domain.support)
