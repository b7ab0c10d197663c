"""Adaptive density control (R^2-Gaussian's, after 3DGS) as a strategy, apart from the model.

The model (``model.py``) holds the Gaussians; this module decides when and where they change:

- :class:`GradientStatistics`: the view-space positional gradient norms a training run
  accumulates per Gaussian between two refinements (checkpointed with the run).
- :class:`DensificationStrategy`: when to refine (every ``interval`` steps from ``start`` to
  ``stop``) and how (clone the hot small Gaussians, split the hot large ones, prune the faint
  ones and those outside the domain). It holds its own settings, as gsplat's strategies do:
  ``ReconstructionConfig.densification`` is one, and the trainer uses it as it is.
- :func:`clone`, :func:`split`, :func:`prune`: the operations, each keeping an Adam-like
  optimizer's per-Gaussian state rows with their Gaussians (added rows start at zero) and
  returning which old rows the new model's first rows continue, so statistics can follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ixgs_engine.gaussians.model import (
    BOX_SIZE,
    PARAMETER_NAMES,
    GaussianModel,
    inverse_softplus,
    quaternion_to_rotation,
    scales_to_raw,
)

SPLIT_SCALE_DIVISOR = 1.6  # R^2-Gaussian: scale / (0.8 N) with N = 2 children
SPLIT_DENSITY_FACTOR = 0.5  # R^2-Gaussian: each child gets rho / N

DEFAULT_SCALE_THRESHOLD = 0.1 * BOX_SIZE  # largest scale above which a hot Gaussian is split, not cloned


def _reindex(values: torch.Tensor, kept: torch.Tensor, count: int) -> torch.Tensor:
    """Rows ``kept`` of ``values`` followed by zero rows up to ``count`` rows."""
    extra = values.new_zeros((count - kept.numel(), *values.shape[1:]))
    return torch.cat([values[kept], extra])


# ----------------------------------------------------------------------------- statistics
@dataclass
class GradientStatistics:
    """Per-Gaussian sums of view-space gradient norms and the number of views that saw each."""

    grad_sum: torch.Tensor
    grad_count: torch.Tensor

    @classmethod
    def zeros(cls, model: GaussianModel) -> GradientStatistics:
        """Empty statistics for ``model``'s Gaussians."""
        return cls(model.positions.new_zeros(model.num_gaussians), model.positions.new_zeros(model.num_gaussians))

    @classmethod
    def restored(cls, grad_sum: torch.Tensor, grad_count: torch.Tensor, model: GaussianModel) -> GradientStatistics:
        """Statistics read back from a checkpoint, checked against ``model``'s size."""
        expected = (model.num_gaussians,)
        if grad_sum.shape != expected or grad_count.shape != expected:
            raise ValueError(f"densification state must have {model.num_gaussians} entries")
        return cls(grad_sum.clone(), grad_count.clone())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of (gradient norm sums, view counts), for checkpoints."""
        return self.grad_sum.clone(), self.grad_count.clone()

    def add(self, screen_grad: torch.Tensor, image_shape: tuple[int, int]) -> None:
        """Accumulate the view-space positional gradient norms of one step.

        ``screen_grad`` (V, N, 2) is the gradient of the loss w.r.t. the render's
        ``screen_offsets`` (pixels). It is converted to normalized device coordinates
        (x W/2, x H/2), the unit 3DGS / R^2-Gaussian threshold, and counted for the views in
        which the Gaussian took part (non-zero gradient).
        """
        height, width = image_shape
        to_ndc = screen_grad.new_tensor([width / 2.0, height / 2.0])
        norms = torch.linalg.vector_norm(screen_grad.detach() * to_ndc, dim=2)
        self.grad_sum += norms.sum(dim=0).to(self.grad_sum)
        self.grad_count += (norms > 0).sum(dim=0).to(self.grad_count)

    def mean(self) -> torch.Tensor:
        """Mean accumulated view-space gradient norm per Gaussian (0 where never seen)."""
        return self.grad_sum / self.grad_count.clamp_min(1.0)

    def follow(self, kept: torch.Tensor, count: int) -> None:
        """Keep rows ``kept`` as the first rows of ``count`` (the rest start at zero), as an
        operation below rearranged the Gaussians."""
        self.grad_sum = _reindex(self.grad_sum, kept, count)
        self.grad_count = _reindex(self.grad_count, kept, count)

    def reset(self) -> None:
        self.grad_sum.zero_()
        self.grad_count.zero_()


# ----------------------------------------------------------------------------- operations
def _swap_in_optimizer(
    optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, kept: torch.Tensor
) -> None:
    """Put ``new`` where ``old`` was in the optimizer, carrying per-Gaussian state rows
    (Adam's exp_avg / exp_avg_sq) over for ``kept`` and starting added rows at zero."""
    for group in optimizer.param_groups:
        for position, param in enumerate(group["params"]):
            if param is not old:
                continue
            group["params"][position] = new
            state = optimizer.state.pop(old, None)
            if state is not None:
                optimizer.state[new] = {
                    key: _reindex(value, kept, new.shape[0])
                    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == old.shape[0]
                    else value
                    for key, value in state.items()
                }


def _install(
    model: GaussianModel, values: dict[str, torch.Tensor], kept: torch.Tensor, optimizer: torch.optim.Optimizer | None
) -> torch.Tensor:
    """Give ``model`` the raw ``values`` whose first ``len(kept)`` rows continue its rows
    ``kept``, moving the optimizer's state along; returns ``kept``."""
    previous = model.replace_parameters(values)
    if optimizer is not None:
        current = model.parameters()
        for name in PARAMETER_NAMES:
            _swap_in_optimizer(optimizer, previous[name], current[name], kept)
    return kept


def clone(model: GaussianModel, mask: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
    """Duplicate the masked Gaussians (copies appended); original and copy each keep half the
    density (R^2-Gaussian), so the rendered images are unchanged. Returns the kept rows."""
    with torch.no_grad():
        raw = model.parameters()
        raw_densities = raw["densities"].detach().clone()
        raw_densities[mask] = inverse_softplus(model.densities[mask] / 2.0)
        values = {name: torch.cat([value, value[mask]]) for name, value in raw.items()}
        values["densities"] = torch.cat([raw_densities, raw_densities[mask]])
        return _install(model, values, torch.arange(model.num_gaussians, device=mask.device), optimizer)


def split(
    model: GaussianModel,
    mask: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    density_factor: float = SPLIT_DENSITY_FACTOR,
) -> torch.Tensor:
    """Replace each masked Gaussian by two drawn from it (positions sampled from the parent,
    appended after the unmasked ones), with scales / 1.6 and ``density_factor`` times its
    density each. Returns the kept rows.

    The default 0.5 is R^2-Gaussian's: the peak density is shared, not duplicated, but the
    mass (``rho s^3``, hence the summed line integrals) falls to 2 * 0.5 / 1.6^3 = 0.24 of
    the parent's. ``1.6**3 / 2`` (about 2.05) keeps the mass instead."""
    with torch.no_grad():
        raw = model.parameters()
        chosen = torch.nonzero(mask).squeeze(1)
        scales = model.scales[chosen]
        noise = torch.randn((2, chosen.numel(), 3), generator=generator, dtype=scales.dtype, device=scales.device)
        rotation = quaternion_to_rotation(model.rotations[chosen])
        offsets = ((noise * scales)[..., None, :] * rotation).sum(dim=-1)
        children = {
            "positions": (model.positions[chosen] + offsets).reshape(-1, 3),
            "scales": scales_to_raw(scales / SPLIT_SCALE_DIVISOR, model.scale_bounds).repeat(2, 1),
            "rotations": raw["rotations"][chosen].repeat(2, 1),
            "densities": inverse_softplus(model.densities[chosen] * density_factor).repeat(2),
        }
        kept = torch.nonzero(~mask).squeeze(1)
        values = {name: torch.cat([raw[name][kept], children[name]]) for name in PARAMETER_NAMES}
        return _install(model, values, kept, optimizer)


def prune(model: GaussianModel, mask: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
    """Remove the masked Gaussians. Returns the kept rows."""
    with torch.no_grad():
        kept = torch.nonzero(~mask).squeeze(1)
        return _install(model, {name: value[kept] for name, value in model.parameters().items()}, kept, optimizer)


def within_budget(candidates: torch.Tensor, gradients: torch.Tensor, budget: int) -> torch.Tensor:
    """The candidates with the largest gradients, at most ``budget`` of them (each clone or
    split adds one Gaussian), so the model never grows past its maximum."""
    if int(candidates.sum()) <= max(budget, 0):
        return candidates
    kept = torch.zeros_like(candidates)
    if budget > 0:
        ranked = torch.where(candidates, gradients, torch.full_like(gradients, -1.0))
        kept[torch.topk(ranked, budget).indices] = True
    return kept


# ----------------------------------------------------------------------------- strategy
@dataclass(frozen=True)
class DensificationStrategy:
    """R^2-Gaussian's adaptive control on a schedule (its settings are the defaults).

    Every ``interval`` steps from ``start`` to ``stop`` (inclusive), Gaussians whose mean
    view-space gradient reaches ``grad_threshold`` are cloned when their largest scale is at
    most ``scale_threshold`` and split otherwise (never past ``max_gaussians``, the largest
    gradients first); then Gaussians with density below ``min_density`` or centre outside the
    domain box given to :meth:`refine` are pruned. The statistics restart after each refinement.
    """

    start: int = 500
    stop: int = 15_000
    interval: int = 100
    grad_threshold: float = 5e-5
    max_gaussians: int = 500_000
    min_density: float = 1e-5
    scale_threshold: float = DEFAULT_SCALE_THRESHOLD
    split_density_factor: float = SPLIT_DENSITY_FACTOR

    def __post_init__(self) -> None:
        if self.interval < 1 or self.max_gaussians < 1:
            raise ValueError(f"densification interval and max_gaussians must be at least 1, got {self}")

    def is_due(self, iteration: int) -> bool:
        """Whether the step that just ended as ``iteration`` refines."""
        return self.start <= iteration <= self.stop and iteration % self.interval == 0

    def refine(
        self,
        model: GaussianModel,
        statistics: GradientStatistics,
        optimizer: torch.optim.Optimizer | None,
        generator: torch.Generator | None = None,
        domain: Sequence[float] = (BOX_SIZE / 2,) * 3,
        refined: Sequence[float] | None = None,
    ) -> dict[str, int]:
        """Clone, split and prune ``model`` as the statistics say; returns the counts.
        ``domain``: half-sizes (x, y, z, normalized units) of the box outside which Gaussians
        are pruned; ``refined``: those of a smaller centred box, the only place Gaussians are
        cloned or split (the rest of the domain stays coarse)."""
        with torch.no_grad():
            gradients = statistics.mean()
            candidates = gradients >= self.grad_threshold
            if refined is not None:
                candidates &= (model.positions.abs() <= model.positions.new_tensor(list(refined))).all(dim=1)
            hot = within_budget(candidates, gradients, self.max_gaussians - model.num_gaussians)
            large = model.scales.amax(dim=1) > self.scale_threshold
            clone_mask = hot & ~large
            split_mask = hot & large
            statistics.follow(clone(model, clone_mask, optimizer), model.num_gaussians)
            split_mask = torch.cat([split_mask, split_mask.new_zeros(int(clone_mask.sum()))])
            statistics.follow(
                split(model, split_mask, optimizer, generator, self.split_density_factor), model.num_gaussians
            )
            outside = (model.positions.abs() > model.positions.new_tensor(list(domain))).any(dim=1)
            prune_mask = (model.densities < self.min_density) | outside
            statistics.follow(prune(model, prune_mask, optimizer), model.num_gaussians)
            statistics.reset()
        return {"cloned": int(clone_mask.sum()), "split": int(split_mask.sum()), "pruned": int(prune_mask.sum())}
