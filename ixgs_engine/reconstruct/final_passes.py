"""The last stage of a reconstruction: SART passes, each followed by a few total-variation
descent steps (ASD-POCS, Sidky & Pan 2008), started from the voxelized Gaussians.

Why: a short training leaves the Gaussians smooth where the views leave the volume free, but it
also blurs detail the views do determine. Each SART pass back-projects the residual, so it
restores what the projections measure and keeps the rest from the Gaussians; the TV steps after
each pass, sized by that pass's change, take SART's streaks out again.

What lies around the ROI decides where the passes run. A specimen's Gaussians just outside its
box are the tails of the tissue at its faces: they stay in the views, and the border voxels
explain them. When the Gaussians around the ROI carry more than ``TRUNCATED_SHARE`` of the
views' line integrals (a truncated patient, the box inside a body), the ROI alone would pile
the rest of the patient into its voxels, worst along rays that graze a face; there a coarse
shell over the model's domain (``classical.sart.Shell``, started from the Gaussians around the
ROI) is solved alongside in the first ``SHELL_PASSES`` passes and then held, so each ray's
residual is spread over its whole path. The measurements behind these choices are in
``benchmarks/results/refinement_studies.md``. The passes on the ROI alone may be RTK's SART
(``FinalPasses.projector``: C++, a tenth of our time a pass on a 2-core CPU); the shell is ours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from ixgs_engine.classical.asd_pocs import asd_pocs
from ixgs_engine.classical.ceiling import line_integral_ceiling
from ixgs_engine.classical.rtk import rtk_asd_pocs
from ixgs_engine.classical.sart import Shell, interleaved_subsets
from ixgs_engine.gaussians.model import GaussianModel
from ixgs_engine.geometry.roi import grown_grid
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.reconstruct.config import FinalPasses
from ixgs_engine.reconstruct.data import TrainingData
from ixgs_engine.reconstruct.pose_refinement import PoseRefinement
from ixgs_engine.reconstruct.view_registration import register_views
from ixgs_engine.reconstruct.voxelize import voxelize_volume
from ixgs_engine.render.backend import RenderBackend
from ixgs_engine.render.splats import centred_in
from ixgs_engine.volume import Volume

VIEWS_PER_RENDER = 4  # bounds the render's memory at full resolution
# Above this share of the views' line integrals carried by the Gaussians around the ROI, the
# passes solve a shell around it too; below, they run on the ROI alone (see above). The in-situ
# case has 80 %, a specimen 1.3 %; nothing was measured in between. Below the bar a patient's
# surroundings go into the ROI's voxels (at most this share of the line integrals).
TRUNCATED_SHARE = 0.1
# The shell's voxels: this many across the ROI's longest side (4 mm for a 128 mm ROI), at most
# half the output's; solved in this many passes, then held.
SHELL_VOXELS_ACROSS_ROI = 32
SHELL_PASSES = 2

_log = logging.getLogger(__name__)


def surroundings_projections(model: GaussianModel, data: TrainingData, backend: RenderBackend) -> np.ndarray:
    """Line integrals (V, H, W) of the Gaussians centred outside the ROI, along each pixel's ray
    outside the ROI only (the render's cut at the ROI's faces): their share of the views tells a
    truncated patient from a specimen (see above)."""
    support = tuple(float(h) for h in data.scene.half_sizes(data.roi))
    out = np.zeros((data.num_views, *data.image_shape), dtype=np.float32)
    with torch.no_grad():
        outside = ~centred_in(model.positions, support)
        if not bool(outside.any()):
            return out
        means, covariances, densities = (
            model.positions[outside],
            model.covariances()[outside],
            model.densities[outside],
        )
        for first in range(0, data.num_views, VIEWS_PER_RENDER):
            views = slice(first, min(first + VIEWS_PER_RENDER, data.num_views))
            rendered = backend.render(
                means, covariances, densities, data.matrices[views], data.image_shape, None, support
            )
            out[views] = rendered.cpu().numpy()
    return out


def surroundings_shell(
    model: GaussianModel, data: TrainingData, backend: RenderBackend, volume: Volume, domain_scale: float
) -> Shell:
    """The coarse shell of a truncated patient: a grid over the model's domain (the ROI grown by
    ``domain_scale``) whose voxel faces fall on the ROI's, started from the Gaussians
    voxelized on it, held at zero inside the ROI (``volume``'s box)."""
    across = max(1, min(SHELL_VOXELS_ACROSS_ROI, max(volume.shape) // 2))
    grid = grown_grid(data.roi, domain_scale, across)
    start = voxelize_volume(model, data.scene, data.roi, grid, backend).array
    return Shell(grid, start, data.roi.contains(grid.voxel_centres()), SHELL_PASSES)


@dataclass(frozen=True)
class PassesResult:
    """What the passes wrote, and what they found around the ROI: the share of the views' line
    integrals the Gaussians around it carry (None without passes) and the shell solved with it
    (a truncated patient)."""

    volume: Volume
    surroundings_share: float | None = None
    shell: Shell | None = None
    # Voxels of ``volume`` held at the line-integral ceiling (None without one).
    at_ceiling: int | None = None
    # The views' registrations to the volume (world motions of their matrices, all sweeps
    # composed; None without any) and how many sweeps there were.
    motions: np.ndarray | None = None
    registrations: int = 0

    def record(self) -> dict:
        """For ``summary.json``: the share, the shell's voxels (x, y, z), size (mm) and passes,
        or None, and the voxels held at the ceiling."""
        shell = None
        if self.shell is not None:
            shell = {
                "voxels": [int(n) for n in self.shell.grid.shape[::-1]],
                "voxel_mm": round(float(np.max(self.shell.grid.spacing)), 3),
                "passes": self.shell.passes,
            }
        share = None if self.surroundings_share is None else round(self.surroundings_share, 4)
        return {"surroundings_share": share, "shell": shell, "voxels_at_ceiling": self.at_ceiling}


def run_final_passes(
    volume: Volume,
    model: GaussianModel,
    data: TrainingData,
    backend: RenderBackend,
    passes: FinalPasses,
    progress: ProgressCallback | None = None,
    domain_scale: float = 2.5,
    ceiling: np.ndarray | None = None,
    registration: PoseRefinement | None = None,
) -> PassesResult:
    """``passes.passes`` SART passes over ``data``'s views (full resolution, world units) on
    ``volume``'s grid, started from ``volume`` (the voxelized Gaussians, 1/mm), each followed by
    ``passes.tv_steps`` TV descent steps (``classical.asd_pocs``); non-negative; ``progress(done,
    total)`` after each view's update (and each view's registration). On the ROI alone, or, when
    the Gaussians around the ROI carry more than ``TRUNCATED_SHARE`` of the views' line integrals,
    with a coarse shell over the model's domain (``domain_scale``) solved alongside (see above);
    each voxel kept under ``ceiling`` (``classical.ceiling``, ``volume`` already under it; made
    again from the registered poses). With ``registration`` (the pose refinement's settings), the
    views are registered to the volume after ``registration.register_after_passes`` passes (on
    the ROI alone: a truncated patient's views are not the ROI's projections) and the passes after
    that use the registered poses (not either when the volume is too coarse:
    ``PoseRefinement.registers``). No passes: ``volume`` as it is."""
    if passes.passes < 1:
        return PassesResult(volume, at_ceiling=voxels_at(volume.array, ceiling))
    measured = data.targets.cpu().numpy()
    surroundings = float(surroundings_projections(model, data, backend).sum(dtype=np.float64))
    share = surroundings / max(float(measured.sum(dtype=np.float64)), 1e-12)
    shell = None
    if share > TRUNCATED_SHARE:
        shell = surroundings_shell(model, data, backend, volume, domain_scale)
        nz, ny, nx = shell.grid.shape
        _log.info(
            "%.0f%% of what the views measure lies outside the ROI (a truncated patient): the SART passes "
            "also solve a %dx%dx%d grid of %.1f mm voxels around it (in the first %d passes)",
            100 * share,
            nx,
            ny,
            nz,
            float(np.max(shell.grid.spacing)),
            shell.passes,
        )
    by_rtk = passes.projector == "rtk" and shell is None
    if passes.projector == "rtk" and not by_rtk:
        passes = ours_instead_of_rtk(passes)
        _log.info(
            "%d SART passes of our projector instead of RTK's: RTK's cannot solve the shell around the ROI alongside",
            passes.passes,
        )
    stops = [passes.passes]
    if registration is not None and shell is not None:
        _log.info("the views are not registered to the volume: the ROI alone does not explain a truncated patient's")
    elif registration is not None and not registration.registers(volume.shape):
        _log.info(
            "the views are not registered to the volume: %d voxels across are too coarse (%d at least, at 1/%d)",
            max(volume.shape),
            registration.registration_min_voxels,
            registration.registration_factor,
        )
    elif registration is not None:
        stops = sorted({n for n in registration.register_after_passes if n < passes.passes}) + stops
    registered = len(stops) - 1
    subsets = len(interleaved_subsets(data.num_views, 1))
    total = passes.passes * subsets + registered * data.num_views
    matrices = np.asarray(data.world_matrices, dtype=np.float64)
    motions = np.tile(np.eye(4), (data.num_views, 1, 1))
    done = 0
    for index, stop in enumerate(stops):
        if index > 0:
            offset = done * subsets + (index - 1) * data.num_views
            found = register_views(
                volume,
                measured,
                matrices,
                data.roi.center,
                registration.registration_iterations,
                registration.registration_factor,
                device=data.targets.device,
                progress=_counted(progress, offset, total),
            )
            matrices = np.einsum("vij,vjk->vik", matrices, found)
            motions = np.einsum("vij,vjk->vik", motions, found)
            if ceiling is not None:
                ceiling = line_integral_ceiling(measured, matrices, volume.grid, device=data.targets.device)
        offset = done * subsets + index * data.num_views
        if by_rtk:
            volume = rtk_asd_pocs(
                measured,
                matrices,
                volume.grid,
                stop - done,
                passes.relaxation,
                passes.tv_steps,
                passes.tv_step,
                after_pass=_passes_counted(progress, offset, subsets, total),
                initial=volume.array,
                ceiling=ceiling,
            )
        else:
            volume = asd_pocs(
                measured,
                matrices,
                volume.grid,
                stop - done,
                relaxation=passes.relaxation,
                tv_steps=passes.tv_steps,
                tv_step=passes.tv_step,
                initial=volume.array,
                device=data.targets.device,
                progress=_offset(progress, offset, total),
                shell=shell,
                min_ray_mm=passes.min_ray_voxels * float(np.min(volume.grid.spacing)),
                ceiling=ceiling,
            )
        done = stop
    return PassesResult(
        volume, share, shell, voxels_at(volume.array, ceiling), motions if registered else None, registered
    )


def _offset(progress: ProgressCallback | None, offset: int, total: int) -> ProgressCallback | None:
    """``progress`` for one part of the stage: its own counts shifted by ``offset`` of ``total``."""
    if progress is None:
        return None
    return lambda done, _total, *info: progress(offset + done, total)


def ours_instead_of_rtk(passes: FinalPasses) -> FinalPasses:
    """The passes of ours that stand in for RTK's where those cannot run (see ``FinalPasses``)."""
    count = passes.passes if passes.ours_passes is None else passes.ours_passes
    step = passes.tv_step if passes.ours_tv_step is None else passes.ours_tv_step
    return replace(passes, passes=count, tv_step=step, projector="ours")


def _passes_counted(progress: ProgressCallback | None, offset: int, subsets: int, total: int):
    """An ``after_pass(volume, number)`` for RTK's passes: each pass counts as its ``subsets``
    view updates, from ``offset`` of ``total`` (the stage's count stays that of our passes)."""
    if progress is None:
        return None
    return lambda _volume, number: progress(offset + number * subsets, total)


def _counted(progress: ProgressCallback | None, offset: int, total: int):
    """A ``progress()`` for the registration that counts its views from ``offset`` of ``total``."""
    if progress is None:
        return None
    count = iter(range(offset + 1, total + 1))
    return lambda: progress(next(count), total)


def voxels_at(array: np.ndarray, ceiling: np.ndarray | None) -> int | None:
    """How many voxels of ``array`` are at ``ceiling`` (held by it), or None without one."""
    if ceiling is None:
        return None
    return int(np.count_nonzero(array >= ceiling))
