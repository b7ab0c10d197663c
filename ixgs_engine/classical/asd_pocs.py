"""ASD-POCS (Sidky & Pan 2008): SART passes with positivity, each followed by TV descent steps
sized by that pass's change, so the data term and the regularization alternate; the classical
bar IXGS is measured against, and the passes its reconstructions end with."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ixgs_engine.classical.sart import Shell, sart
from ixgs_engine.classical.tv import tv_steps as tv_descent
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.volume import Volume, VolumeGrid


def asd_pocs(
    projections: np.ndarray,
    matrices: Sequence[np.ndarray] | np.ndarray,
    grid: VolumeGrid,
    iterations: int,
    relaxation: float = 0.8,
    tv_steps: int = 10,
    tv_step: float = 0.2,
    initial: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    after_pass: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    shell: Shell | None = None,
    min_ray_mm: float = 0.0,
    ceiling: np.ndarray | None = None,
) -> Volume:
    """``iterations`` SART passes (``relaxation``, from ``initial`` or zero, with a ``shell``
    when given: see :func:`~ixgs_engine.classical.sart.sart`), each followed by ``tv_steps``
    TV steps of ``tv_step`` times the pass's change; ``after_pass(volume, before)`` after
    those (a score curve); ``min_ray_mm`` damps the corner voxels (see
    :func:`~ixgs_engine.classical.sart.sart`) and ``ceiling`` bounds each voxel (after the TV
    steps too). No TV steps: plain SART."""
    regularize = tv_descent(tv_steps, tv_step) if tv_steps > 0 else None
    hooks = [hook for hook in (regularize, after_pass) if hook is not None]

    def each_pass(volume: torch.Tensor, before: torch.Tensor) -> None:
        for hook in hooks:
            hook(volume, before)

    return sart(
        projections,
        matrices,
        grid,
        iterations,
        relaxation=relaxation,
        initial=initial,
        device=device,
        progress=progress,
        after_pass=each_pass if hooks else None,
        shell=shell,
        min_ray_mm=min_ray_mm,
        ceiling=ceiling,
    )
