"""Total variation for ASD-POCS: its gradient, computed directly, and the steepest-descent steps
taken on it between SART passes, sized by how much the pass changed the volume."""

from __future__ import annotations

from collections.abc import Callable

import torch

# The TV's smoothing of |grad x| near 0, relative to the volume's largest value: small enough to
# keep edges, large enough that flat regions get no division by zero.
TV_SMOOTHING = 1e-3


def tv_gradient(volume: torch.Tensor) -> torch.Tensor:
    """Gradient of the isotropic total variation ``sum_v |D x|_v`` (forward differences, none
    across the far faces) of a volume (nz, ny, nx), computed directly (no autograd)."""
    smoothing = (TV_SMOOTHING * float(volume.abs().max())) ** 2 + 1e-30
    differences = [torch.diff(volume, dim=axis, append=volume.narrow(axis, -1, 1)) for axis in range(3)]
    norm = torch.sqrt(sum(d * d for d in differences) + smoothing)
    gradient = torch.zeros_like(volume)
    for axis, difference in enumerate(differences):
        unit = difference / norm
        gradient -= unit
        length = volume.shape[axis] - 1
        gradient.narrow(axis, 1, length).add_(unit.narrow(axis, 0, length))
    return gradient


def tv_steps(steps: int, step_size: float) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """ASD-POCS's regularization between SART passes: ``steps`` steepest-descent steps on the
    TV, each of length ``step_size`` times the norm of the pass's change, kept non-negative."""

    def regularize(volume: torch.Tensor, before: torch.Tensor) -> None:
        change = float(torch.linalg.vector_norm(volume - before))
        for _ in range(steps):
            gradient = tv_gradient(volume)
            norm = float(torch.linalg.vector_norm(gradient))
            if norm == 0.0:
                return
            volume.sub_(gradient, alpha=step_size * change / norm).clamp_(min=0.0)

    return regularize
