"""One call from a scan folder to written outputs: what the CLI, the demo and the Slicer
module run."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ixgs_engine.device import resolve_device
from ixgs_engine.errors import IXGSError
from ixgs_engine.interrupts import EXIT_CODES, InterruptRequest, deferred_interrupts
from ixgs_engine.io.scan import Scan, check_output_apart, load_projections, read_scan
from ixgs_engine.io.scan_poses import write_scan_with_poses
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.reconstruct import run_files
from ixgs_engine.reconstruct.config import ReconstructionConfig, rtk_installed
from ixgs_engine.reconstruct.data import TrainingData, detector_voxel_size
from ixgs_engine.reconstruct.estimate import describe_duration, estimated_seconds
from ixgs_engine.reconstruct.output import final_volume, output_grid, write_outputs, write_preview
from ixgs_engine.reconstruct.pose_refinement import correction_record, describe, refinement_is_used
from ixgs_engine.reconstruct.trainer import ReconstructionCancelled, Trainer
from ixgs_engine.render.backend import select_backend
from ixgs_engine.volume import Volume

_log = logging.getLogger(__name__)


@dataclass
class ReconstructionSummary:
    scan: str
    views: int
    iterations: int
    gaussians: int
    final_loss: float
    train_seconds: float
    total_seconds: float
    voxel_size_mm: float
    volume_path: str
    gaussians_path: str
    label_path: str | None
    device: str
    backend: str
    config: dict
    heldout_views: list[int] = field(default_factory=list)
    preset: str = "custom"
    estimated_seconds: float | None = None
    # What the final SART passes found around the ROI (final_passes.PassesResult.record).
    refinement: dict | None = None
    # The views' pose corrections, when refined (pose_refinement.correction_record), and the refined scan.
    poses: dict | None = None
    # The preview (the classical start on the output grid) and when it was written, in seconds
    # from the start of the run (None: a random start, or a resumed run, writes none).
    preview_path: str | None = None
    preview_seconds: float | None = None

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        return (
            f"reconstructed {self.views} views in {self.total_seconds:.1f} s ({self.iterations} iterations, "
            f"{self.gaussians} Gaussians, final loss {self.final_loss:.4g}, {self.device}) -> {self.volume_path}"
        )

    def poses_line(self) -> str | None:
        """One line on the refined poses, or None when they were not refined."""
        return describe(self.poses) if self.poses is not None else None


def check_output_folder(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace a run without ``overwrite``: a finished run (summary.json) or an
    unfinished one (a checkpoint, then resuming it is suggested). The folder is created here,
    so a path under a file or in a read-only place fails before the long work."""
    if output_dir.exists() and not output_dir.is_dir():
        raise IXGSError(f"the output folder {output_dir} is a file; give a folder for the run")
    output_dir.mkdir(parents=True, exist_ok=True)
    if resume or overwrite:
        return
    if (output_dir / run_files.SUMMARY_FILE).is_file():
        raise IXGSError(
            f"{output_dir} holds a finished run: replace it (`overwrite`), continue it with more iterations "
            "(`resume` with `resume_iterations`), or choose another folder"
        )
    if run_files.has_checkpoint(output_dir):
        raise IXGSError(f"{output_dir} holds an unfinished run; continue it (`resume`), or start over (`overwrite`)")


def resumed_config(output_dir: Path, iterations: int | None) -> ReconstructionConfig:
    """The checkpoint's settings, with ``iterations`` (more than were done) to extend the run;
    the learning rates then follow the schedule of the new total from the resumed step."""
    if not run_files.has_checkpoint(output_dir):
        raise IXGSError(f"`resume`: no checkpoint in {output_dir}; run without `resume` to start")
    state = run_files.load_checkpoint(output_dir)
    try:
        stored = ReconstructionConfig.from_dict(state["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise IXGSError(
            f"{output_dir / run_files.CHECKPOINT_FILE}: unusable settings ({error}); delete it to start over"
        ) from None
    if iterations is None or iterations == stored.iterations:
        return stored
    done = int(state["iteration"])
    if iterations < done:
        raise IXGSError(f"`resume_iterations` {iterations}: the run in {output_dir} has already done {done}; give more")
    return replace(stored, iterations=iterations)


def _stop_check(
    should_cancel: Callable[[], bool] | None, interrupt: InterruptRequest, output_dir: Path
) -> Callable[[], None]:
    """Raises ``ReconstructionCancelled`` once Cancel, Ctrl-C or SIGTERM asked to stop the
    stage after the training (voxelization, SART refinement). The training's last state is in
    the checkpoint by then, so a resumed run only redoes that stage."""

    def stop() -> None:
        cancelled = should_cancel is not None and should_cancel()
        if cancelled or interrupt.requested:
            how = f"interrupted ({interrupt.name})" if interrupt.requested else "cancelled"
            raise ReconstructionCancelled(
                f"{how} after the training, before the volume was written; resume with `resume` to write it "
                f"(the training is saved in {output_dir})",
                EXIT_CODES.get(interrupt.signal, 130),
            )

    return stop


def _stage(stage_progress: Callable[[str], ProgressCallback] | None, stop: Callable[[], None]) -> ProgressCallback:
    """Progress of the SART refinement (a stage of its own) that stops it on request."""
    shown = stage_progress("SART refinement") if stage_progress is not None else None

    def update(done: int, total: int, info: dict | None = None) -> None:
        if shown is not None:
            shown(done, total)
        stop()

    return update


def write_refined_scan(output_dir: Path, scan: Scan, training: list[int], refined: np.ndarray) -> Path:
    """The scan with the refined matrices of its training views (held-out views keep theirs), as
    a scan folder in the run (``refined_scan/``: scan.json and a copy of its images)."""
    matrices = list(scan.matrices)
    for index, matrix in zip(training, refined, strict=True):
        matrices[index] = matrix
    extra = {"refined_from": str(scan.folder.resolve()), "refined_views": list(training)}
    return write_scan_with_poses(scan, output_dir / run_files.REFINED_SCAN_FOLDER, matrices, extra)


def heldout_views(num_views: int, every: int) -> list[int]:
    """Views kept out of training with ``holdout_every = every``: k-1, 2k-1, ... (none for 0)."""
    return list(range(every - 1, num_views, every)) if every > 1 else []


def reconstruct_scan(
    scan_dir: str | Path,
    output_dir: str | Path,
    config: ReconstructionConfig,
    device: str = "auto",
    resume: bool = False,
    voxel_size: float | None = None,
    volume_format: str = "nrrd",
    threshold: float | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_trainer: Callable[[Trainer], None] | None = None,
    preset_name: str = "custom",
    overwrite: bool = False,
    resume_iterations: int | None = None,
    stage_progress: Callable[[str], ProgressCallback] | None = None,
) -> tuple[ReconstructionSummary, Volume]:
    """Reconstruct a scan into ``output_dir`` (volume, Gaussians, log, checkpoint, summary).

    A folder holding a run is replaced only with ``overwrite``. With ``resume`` the run
    continues from the folder's checkpoint with the checkpoint's settings (``config`` is not
    used), run to ``resume_iterations`` when given. Everything that can be checked (the output
    folder, the voxel size, the output volume's memory, the threshold) is checked before the
    training. ``on_trainer`` receives the Trainer before it trains, so a progress callback can
    read its model. ``stage_progress(name)`` makes a progress callback for a stage before the
    training (the SART start). ``preset_name`` (what ``config`` came from) is logged first, with
    the estimated run time, and kept in the summary."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    check_output_apart(output_dir, scan_dir)
    check_output_folder(output_dir, resume, overwrite)
    if threshold is not None and not math.isfinite(threshold):
        raise IXGSError(f"`threshold` must be a finite attenuation in 1/mm, got {threshold}")
    if resume:
        config = resumed_config(output_dir, resume_iterations)
    if config.final_passes.passes > 0 and config.final_passes.projector == "rtk" and not rtk_installed():
        raise IXGSError(
            "the final SART passes are RTK's (`final_passes.projector rtk`) and itk-rtk is not installed: "
            "pip install 'ixgs-engine[rtk]', or set final_passes.projector=ours (slower on a CPU)"
        )
    scan = read_scan(scan_dir)
    projections = load_projections(scan)
    voxel = voxel_size if voxel_size is not None else detector_voxel_size(projections.matrices, projections.roi)
    grid = output_grid(projections.roi, voxel)
    heldout = heldout_views(len(projections.values), config.holdout_every)
    training = [v for v in range(len(projections.values)) if v not in heldout]
    if heldout:
        projections = replace(projections, values=projections.values[training], matrices=projections.matrices[training])
    torch_device = resolve_device(device)
    data = TrainingData.from_projections(projections, config.image_scale, torch_device)
    full_shape = (int(projections.values.shape[1]), int(projections.values.shape[2]))
    estimate = estimated_seconds(config, full_shape, torch_device.type, data.num_views, grid.shape)
    _log.info(
        "preset %s on %s: %d iterations, %d views of %dx%d pixels, about %s (estimated)",
        "from the checkpoint" if resume else preset_name,
        torch_device,
        config.iterations,
        data.num_views,
        full_shape[1],
        full_shape[0],
        describe_duration(estimate),
    )
    backend = select_backend(torch_device)
    fine = None
    if config.image_scale < 1 and config.coarse_iterations > 0:
        fine = TrainingData.from_projections(projections, 1.0, torch_device)

    previewed: dict = {}

    def preview(start: Volume) -> None:
        previewed["path"] = str(write_preview(output_dir, start, grid))
        previewed["seconds"] = round(time.perf_counter() - started, 1)
        _log.info("preview (the SART start) written after %.0f s: %s", previewed["seconds"], previewed["path"])

    trainer = Trainer(
        data,
        config,
        backend,
        output_dir,
        progress=progress,
        should_cancel=should_cancel,
        fine_data=fine,
        stage_progress=stage_progress,
        view_ids=training,
        on_start_volume=preview,
    )
    if on_trainer is not None:
        on_trainer(trainer)
    if not resume:
        for stale in (run_files.SUMMARY_FILE, run_files.PREVIEW_FILE):  # a replaced run's no longer hold
            (output_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(output_dir / run_files.REFINED_SCAN_FOLDER, ignore_errors=True)
    result = trainer.run(resume=resume)
    given = projections.matrices
    used = False
    if result.corrections is not None:
        trained = result.corrections.world_motions(data.scene)
        used = refinement_is_used(trained, config.poses, projections.roi.center)
        if used:
            projections = replace(projections, matrices=result.corrections.world_matrices(given, data.scene))
            data = TrainingData.from_projections(projections, config.image_scale, torch_device)
            fine = TrainingData.from_projections(projections, 1.0, torch_device) if fine is not None else None
    if config.final_passes.passes > 0 and fine is None and config.image_scale < 1:
        fine = TrainingData.from_projections(projections, 1.0, torch_device)
    with deferred_interrupts() as interrupt:
        stop = _stop_check(should_cancel, interrupt, output_dir)
        refinement = final_volume(
            result.model,
            fine if fine is not None else data,
            grid,
            backend,
            config,
            _stage(stage_progress, stop),
            register=used,
        )
        stop()
    poses = None
    if result.corrections is not None:
        motions = trained if refinement.motions is None else np.einsum("vij,vjk->vik", trained, refinement.motions)
        poses = correction_record(
            motions, config.poses, given, projections.roi, training, used, refinement.registrations
        )
        if used:
            refined = np.einsum("vij,vjk->vik", given, motions)
            poses["refined_scan"] = str(write_refined_scan(output_dir, scan, training, refined))
    volume = refinement.volume
    written = write_outputs(output_dir, volume, result.model, volume_format, threshold)
    summary = ReconstructionSummary(
        scan=str(Path(scan_dir).resolve()),
        views=data.num_views,
        iterations=result.iterations,
        gaussians=result.model.num_gaussians,
        final_loss=result.final_loss,
        train_seconds=result.elapsed_s,
        total_seconds=time.perf_counter() - started,
        voxel_size_mm=voxel,
        volume_path=str(written.volume),
        gaussians_path=str(written.gaussians),
        label_path=str(written.label) if written.label else None,
        device=str(torch_device),
        backend=backend.name,
        config=config.to_dict(),
        heldout_views=heldout,
        preset=preset_name,
        estimated_seconds=round(estimate, 1),
        refinement=refinement.record(),
        poses=poses,
        preview_path=previewed.get("path"),
        preview_seconds=previewed.get("seconds"),
    )
    run_files.write_summary(output_dir, asdict(summary))
    return summary, volume
