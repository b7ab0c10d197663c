"""From trained Gaussians to files: the attenuation volume on the ROI grid (1/mm, world
geometry; the voxelized Gaussians, refined by SART + TV passes when the config asks), an
optional thresholded label map, and the Gaussians themselves (``gaussians.npz``: the trained
model, before those passes)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ixgs_engine.classical.ceiling import line_integral_ceiling
from ixgs_engine.device import check_memory
from ixgs_engine.errors import IXGSError
from ixgs_engine.gaussians.model import GaussianModel
from ixgs_engine.geometry.roi import ROI, roi_grid
from ixgs_engine.io import atomic_output
from ixgs_engine.io.volumes import resample_to, write_volume
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.reconstruct import run_files
from ixgs_engine.reconstruct.config import ReconstructionConfig
from ixgs_engine.reconstruct.data import TrainingData
from ixgs_engine.reconstruct.final_passes import PassesResult, run_final_passes
from ixgs_engine.reconstruct.voxelize import voxelize_volume
from ixgs_engine.render.backend import RenderBackend
from ixgs_engine.volume import Volume, VolumeGrid

BYTES_PER_OUTPUT_VOXEL = 13  # the float32 volume, its copy in world units, the writer's copy, a label byte


def write_preview(output_dir: Path, start: Volume, grid: VolumeGrid) -> Path:
    """``start`` (a classical start, 1/mm) resampled onto the run's output ``grid`` (zero where it
    has no voxels, never negative), written atomically as the run's preview; its path."""
    preview = resample_to(start, grid)
    path = Path(output_dir) / run_files.PREVIEW_FILE
    write_volume(path, preview.with_array(np.maximum(preview.array, 0.0)))
    return path


def output_grid(roi: ROI, voxel_size: float) -> VolumeGrid:
    """The output volume's grid, checked before any long work: a finite positive voxel size,
    and a volume that fits in this machine's memory (refused with the numbers otherwise)."""
    if not (math.isfinite(voxel_size) and voxel_size > 0):
        raise IXGSError(f"`voxel_size` must be a positive number of mm, got {voxel_size}")
    grid = roi_grid(roi, voxel_size)
    nz, ny, nx = grid.shape
    check_memory(
        math.prod(grid.shape) * BYTES_PER_OUTPUT_VOXEL,
        f"the output volume ({nx}x{ny}x{nz} voxels of {voxel_size:.3g} mm, ROI "
        f"{' x '.join(f'{s:.0f}' for s in roi.size)} mm)",
        "give a larger `voxel_size` or a smaller ROI",
    )
    return grid


@dataclass
class WrittenOutputs:
    volume: Path
    gaussians: Path
    label: Path | None


def final_volume(
    model: GaussianModel,
    data: TrainingData,
    grid: VolumeGrid,
    backend: RenderBackend,
    config: ReconstructionConfig,
    progress: ProgressCallback | None = None,
    register: bool = False,
) -> PassesResult:
    """What a run writes: the Gaussians voxelized on ``grid``, then the config's final SART + TV
    passes over ``data`` (the views at full resolution) started from them (see ``final_passes``),
    with what the passes found around the ROI; every voxel bounded by the views' line-integral
    ceiling (``final_passes.ceiling``); with ``register``, the views registered to the volume
    between the passes (``config.poses``). A voxelized volume that is not finite everywhere, or
    zero everywhere, is refused."""
    volume = voxelize_volume(model, data.scene, data.roi, grid, backend)
    _check_volume(volume)
    ceiling = None
    if config.final_passes.ceiling:
        measured = data.targets.cpu().numpy()
        ceiling = line_integral_ceiling(measured, data.world_matrices, grid, device=data.targets.device)
        volume = volume.with_array(np.minimum(volume.array, ceiling))
    return run_final_passes(
        volume,
        model,
        data,
        backend,
        config.final_passes,
        progress,
        config.domain_scale,
        ceiling=ceiling,
        registration=config.poses if register else None,
    )


def _check_volume(volume: Volume) -> None:
    if not np.isfinite(volume.array).all():
        raise IXGSError(
            "the reconstruction diverged (the volume holds NaN or infinite values); nothing was written. "
            "Check the images are line integrals (ixgs info) and try a smaller learning rate or preset fast"
        )
    if not volume.array.any():
        raise IXGSError("the reconstruction is zero everywhere; nothing was written. Check the images (ixgs info)")


def write_outputs(
    output_dir: str | Path,
    volume: Volume,
    model: GaussianModel,
    volume_format: str = "nrrd",
    threshold: float | None = None,
) -> WrittenOutputs:
    """Write ``volume`` (see ``final_volume``) as ``volume.<fmt>``, the Gaussians as
    ``gaussians.npz`` and, with a threshold (1/mm), ``label.<fmt>`` (1 where attenuation >=
    threshold)."""
    output_dir = Path(output_dir)
    _check_volume(volume)
    volume_path = output_dir / f"volume.{volume_format}"
    write_volume(volume_path, volume)
    gaussians_path = output_dir / "gaussians.npz"
    with atomic_output(gaussians_path) as temp:
        model.save(temp)
    label_path = None
    if threshold is not None:
        label_path = output_dir / f"label.{volume_format}"
        write_volume(label_path, volume.with_array((volume.array >= threshold).astype(np.uint8)))
    return WrittenOutputs(volume_path, gaussians_path, label_path)
