"""The optimization loop: Adam over the Gaussians' parameters with exponential learning-rate
decay, loss L1 + D-SSIM + 3-D TV, densification (``gaussians/densification.py``), the views'
poses refined with them when asked (``pose_refinement.py``), progress, cancel, checkpoint and resume.

The Gaussians live in the model's domain (the ROI and its surroundings, see
``initialization.ModelDomain``); every render and TV block parts them at the ROI's faces
(``support``), densification refines only near the ROI, and pruning keeps the whole domain.
With ``coarse_iterations`` the first steps train on downsampled views, the rest on full ones.

A run is a pure function of its data, config and seed: the view order, the TV sub-volumes and
the split samples all come from one generator whose state is checkpointed with the model and
the optimizer, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ixgs_engine.errors import IXGSError
from ixgs_engine.gaussians.densification import GradientStatistics
from ixgs_engine.gaussians.model import PARAMETER_NAMES, GaussianModel
from ixgs_engine.geometry.roi import roi_grid
from ixgs_engine.interrupts import EXIT_CODES, deferred_interrupts
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.reconstruct import run_files
from ixgs_engine.reconstruct.config import ReconstructionConfig
from ixgs_engine.reconstruct.data import TrainingData
from ixgs_engine.reconstruct.initialization import ModelDomain, initial_model
from ixgs_engine.reconstruct.losses import dssim_loss, l1_loss, tv_3d_loss
from ixgs_engine.reconstruct.pose_refinement import ViewCorrections
from ixgs_engine.render.backend import RenderBackend
from ixgs_engine.volume import Volume

LEARNING_RATES = {
    "positions": "lr_positions",
    "scales": "lr_scales",
    "rotations": "lr_rotations",
    "densities": "lr_densities",
}


class ReconstructionCancelled(IXGSError):
    """The run stopped early (Cancel, Ctrl-C, SIGTERM) after a whole step; that step's state is
    in the checkpoint. ``exit_code``: what a command line exits with (130 Ctrl-C/Cancel, 143 SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exponential_schedule(step: int, total: int, start: float, end: float) -> float:
    """Log-linear interpolation from ``start`` (step 0) to ``end`` (last step)."""
    t = min(max(step / max(total - 1, 1), 0.0), 1.0)
    return math.exp((1.0 - t) * math.log(start) + t * math.log(end))


@dataclass
class TrainingResult:
    model: GaussianModel
    iterations: int
    final_loss: float
    elapsed_s: float
    history: list[dict] = field(default_factory=list)
    corrections: ViewCorrections | None = None  # the views' pose corrections, when refined


class Trainer:
    """Fits Gaussians to one scan's views. ``output_dir`` holds the checkpoint and the log."""

    def __init__(
        self,
        data: TrainingData,
        config: ReconstructionConfig,
        backend: RenderBackend,
        output_dir: str | Path,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        fine_data: TrainingData | None = None,
        stage_progress: Callable[[str], ProgressCallback] | None = None,
        view_ids: list[int] | None = None,
        on_start_volume: Callable[[Volume], None] | None = None,
    ) -> None:
        """``data``: the views at ``config.image_scale``; ``fine_data``: the same views at full
        resolution, trained on from step ``config.coarse_iterations`` (a two-level pyramid);
        ``stage_progress(name)``: a progress callback for each stage of the start (SART);
        ``on_start_volume``: receives a volume start (SART, 1/mm) as soon as it exists;
        ``view_ids``: the views' numbers in the scan, for messages (default 0, 1, ...)."""
        self.data = data
        self.fine_data = fine_data
        self.config = config
        self.backend = backend
        self.output_dir = Path(output_dir)
        self.progress = progress
        self.should_cancel = should_cancel
        self.stage_progress = stage_progress
        self.on_start_volume = on_start_volume
        self.view_ids = list(view_ids) if view_ids is not None else list(range(data.num_views))
        self.pose_start = int(config.poses.start * config.iterations)
        self.data_range = float(data.targets.max().clamp_min(1e-6))  # D-SSIM's range, fixed for the run
        tv_voxel = float(data.roi.size.max()) / config.tv_grid_size
        self.tv_grid = data.scene.grid_to_normalized(roi_grid(data.roi, tv_voxel))
        self.domain = ModelDomain.of(data, config)
        self.densification = config.densification
        # Pruned outside the model's domain, refined only near the ROI (half-sizes, normalized units).
        self.refinement_boxes = {
            "domain": tuple(self.domain.domain.tolist()),
            "refined": tuple((self.domain.roi * config.refine_scale).tolist()),
        }

    # ------------------------------------------------------------------ state
    def _fresh_state(self) -> None:
        self.model = initial_model(self.data, self.config, self.backend, self.stage_progress, self.on_start_volume)
        self.statistics = GradientStatistics.zeros(self.model)
        self.optimizer = torch.optim.Adam(self.model.param_groups(self._learning_rates(0)), eps=1e-15)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.view_queue: list[int] = []
        self.iteration = 0
        self.elapsed = 0.0
        self.corrections = (
            ViewCorrections(self.data.num_views, self.data.targets.device) if self.config.poses.enabled else None
        )

    def _learning_rates(self, step: int) -> dict[str, float]:
        return {
            name: exponential_schedule(step, self.config.iterations, *getattr(self.config, attribute))
            for name, attribute in LEARNING_RATES.items()
        }

    def save_checkpoint(self) -> Path:
        """Write the full training state atomically (tensors and plain values only, see
        ``run_files``); returns its path."""
        return run_files.save_checkpoint(
            self.output_dir,
            {
                "config": self.config.to_dict(),
                "num_views": self.data.num_views,
                "image_shape": list(self.data.image_shape),
                "iteration": self.iteration,
                "elapsed": self.elapsed,
                "parameters": {name: p.detach().cpu() for name, p in self.model.parameters().items()},
                "scale_bounds": list(self.model.scale_bounds),
                "densification": [t.cpu() for t in self.statistics.tensors()],
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "view_queue": list(self.view_queue),
                "poses": self.corrections.state() if self.corrections is not None else None,
            },
        )

    def _load_checkpoint(self) -> None:
        state = run_files.load_checkpoint(self.output_dir)
        path = self.output_dir / run_files.CHECKPOINT_FILE
        if state["num_views"] != self.data.num_views or tuple(state["image_shape"]) != self.data.image_shape:
            raise IXGSError(
                f"{path} belongs to a run with {state['num_views']} views of {tuple(state['image_shape'])} pixels, "
                f"not this scan ({self.data.num_views} views of {self.data.image_shape}); use another output folder"
            )
        device = self.data.targets.device
        raw = [state["parameters"][name].to(device) for name in PARAMETER_NAMES]
        self.model = GaussianModel(*raw, scale_bounds=tuple(state["scale_bounds"]), normalization=self.data.scene)
        self.statistics = GradientStatistics.restored(*(t.to(device) for t in state["densification"]), self.model)
        self.optimizer = torch.optim.Adam(self.model.param_groups(self._learning_rates(state["iteration"])), eps=1e-15)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator = torch.Generator()
        self.generator.set_state(state["generator"])
        self.view_queue = list(state["view_queue"])
        self.iteration = int(state["iteration"])
        self.elapsed = float(state["elapsed"])
        poses = state.get("poses")
        self.corrections = ViewCorrections.restored(poses, device) if poses is not None else None

    # ------------------------------------------------------------------ log
    def _open_log(self, resumed: bool) -> list[dict]:
        """Entries already logged up to the current iteration (later ones, from after the last
        checkpoint of a run killed hard, are dropped) and a log file holding exactly them."""
        kept = (
            [entry for entry in run_files.read_log(self.output_dir) if entry["iteration"] <= self.iteration]
            if resumed
            else []
        )
        run_files.write_log(self.output_dir, kept)
        return kept

    # ------------------------------------------------------------------ loop
    def _next_views(self) -> torch.Tensor:
        while len(self.view_queue) < self.config.views_per_step:
            self.view_queue += torch.randperm(self.data.num_views, generator=self.generator).tolist()
        views, self.view_queue = (
            self.view_queue[: self.config.views_per_step],
            self.view_queue[self.config.views_per_step :],
        )
        return torch.tensor(views)

    def _tv_block(self):
        size = min(self.config.tv_size, *self.tv_grid.shape)
        start = [int(torch.randint(0, n - size + 1, (1,), generator=self.generator)) for n in self.tv_grid.shape]
        return self.tv_grid.block(start, (size, size, size))

    def _views_at(self, step: int) -> TrainingData:
        """The views step ``step`` trains on: full resolution once the coarse steps are done."""
        coarse = self.config.coarse_iterations
        return self.fine_data if self.fine_data is not None and 0 < coarse <= step else self.data

    def _pose_rates(self, step: int) -> tuple[float, float]:
        """Rotation (radians) and translation (normalized units) rates of the poses at ``step``."""
        settings, total = self.config.poses, self.config.iterations - self.pose_start
        rotation = exponential_schedule(step - self.pose_start, total, *settings.lr_rotation_deg)
        translation = exponential_schedule(step - self.pose_start, total, *settings.lr_translation_mm)
        return math.radians(rotation), translation * self.data.scene.scale

    def _step(self) -> dict:
        config = self.config
        step = self.iteration
        rates = self._learning_rates(step)
        for group in self.optimizer.param_groups:
            group["lr"] = rates[group["name"]]
        views = self._next_views()
        track = step < config.densification.stop
        model = self.model
        data = self._views_at(step)
        means, covariances, densities = model.positions, model.covariances(), model.densities
        offsets = None
        if track:
            offsets = torch.zeros(
                (len(views), model.num_gaussians, 2), dtype=torch.float64, device=means.device, requires_grad=True
            )
        moving = self.corrections is not None and step >= self.pose_start
        matrices = self.corrections.apply(data.matrices, views) if moving else data.matrices[views]
        rendered = self.backend.render(
            means, covariances, densities, matrices, data.image_shape, offsets, self.domain.support
        )
        target = data.targets[views]
        terms = {"l1": l1_loss(rendered, target)}
        if config.lambda_dssim > 0:
            terms["dssim"] = dssim_loss(rendered, target, self.data_range)
        if config.lambda_tv > 0:
            block = self.backend.voxelize(means, covariances, densities, self._tv_block(), self.domain.support)
            terms["tv"] = tv_3d_loss(block)
        loss = terms["l1"] + config.lambda_dssim * terms.get("dssim", 0.0) + config.lambda_tv * terms.get("tv", 0.0)
        if not torch.isfinite(loss):  # stop before the NaN reaches the parameters; the last checkpoint stays
            raise IXGSError(
                f"the training diverged at iteration {step + 1} (the loss is {loss.item()}); the run's last "
                "checkpoint is kept. Check that the scan's images are line integrals (ixgs info) and their "
                "values are plausible, or lower the learning rates"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if moving:
            self.corrections.step(views, *self._pose_rates(step))
            self.corrections.check(config.poses, self.data.scene, self.view_ids)
        if track:
            self.statistics.add(offsets.grad, data.image_shape)
        self.iteration += 1
        entry = {"iteration": self.iteration, "loss": loss.item()} | {k: v.item() for k, v in terms.items()}
        if self.densification.is_due(self.iteration):
            entry |= self.densification.refine(
                model, self.statistics, self.optimizer, self.generator, **self.refinement_boxes
            )
        entry["gaussians"] = model.num_gaussians
        return entry

    def run(self, resume: bool = False) -> TrainingResult:
        """Train to ``config.iterations``; with ``resume``, continue from the checkpoint in the
        output folder. Cancel (``should_cancel``), Ctrl-C and SIGTERM stop after the step in
        progress, whose state is checkpointed, and raise ``ReconstructionCancelled``: resuming
        then reproduces the uninterrupted run exactly."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if not run_files.has_checkpoint(self.output_dir):
                raise IXGSError(f"`resume`: no checkpoint in {self.output_dir}; run without `resume` to start")
            self._load_checkpoint()
        else:
            self._fresh_state()
        history = self._open_log(resume)
        total = self.config.iterations
        started = time.perf_counter() - self.elapsed
        whole = True  # False while a step is half done: its state must not be checkpointed
        try:
            with deferred_interrupts() as interrupt, open(self.output_dir / run_files.LOG_FILE, "a") as log:
                while self.iteration < total:
                    cancelled = self.should_cancel is not None and self.should_cancel()
                    if cancelled or interrupt.requested:
                        checkpoint = self.save_checkpoint()
                        how = f"interrupted ({interrupt.name})" if interrupt.requested else "cancelled"
                        raise ReconstructionCancelled(
                            f"{how} at iteration {self.iteration}; resume with `resume` (of {total} iterations; "
                            f"state saved in {checkpoint})",
                            EXIT_CODES.get(interrupt.signal, 130),
                        )
                    whole = False
                    entry = self._step()
                    self.elapsed = time.perf_counter() - started
                    entry["elapsed_s"] = round(self.elapsed, 3)
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
                    history.append(entry)
                    whole = True
                    if self.progress is not None:
                        self.progress(self.iteration, total, entry)
                    if self.iteration % self.config.checkpoint_every == 0 and self.iteration < total:
                        self.save_checkpoint()
                self.save_checkpoint()
        except KeyboardInterrupt:  # raised by a callback, or a second Ctrl-C: keep what is whole
            if whole:
                self.save_checkpoint()
            raise
        final = history[-1]["loss"] if history else float("nan")
        return TrainingResult(self.model, self.iteration, final, self.elapsed, history, self.corrections)
