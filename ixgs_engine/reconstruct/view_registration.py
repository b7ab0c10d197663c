"""Each view's pose registered to the current volume, between the final SART passes.

The joint refinement during the training moves a view's pose only in the steps that render it
(a few dozen on a CPU schedule), at the training's coarse resolution, so a pose off by a degree
ends the training still a few tenths off. The final passes then hold a voxel volume that
explains all the views; registering each view to it (2D/3D registration: the rigid correction
about the ROI centre that makes the volume's projection match the view) finishes the job in a
few Gauss-Newton steps, and the passes after it use the better poses.

- **Model**: the view's matrix becomes ``P M``, ``M`` a world motion ``x -> R(omega)(x - c) + c +
  t`` about the ROI centre ``c`` (the training's corrections are motions of the same kind), ``t``
  across the view's ray through ``c``: along it a shift only changes the magnification (a fraction
  of a pixel per mm), which one view barely sees and a volume whose box cuts its specimen (or
  misses a little of it) mimics, so it is left to the training, where all views see it.
- **Solver**: Levenberg-Marquardt on the sum of squared differences between the view and the
  volume's Joseph projection, the Jacobian by forward differences of the projection (0.05 deg,
  0.05 mm): a voxel volume's projection is not differentiated with respect to its matrix.
- **Level**: the volume and the views block-averaged by ``factor`` (2: a 13x cheaper projection;
  the views keep sub-pixel precision there).
- **Gauge**: the registrations' mean motion is removed, as during the training (zero mean
  correction): the volume stays where the ROI says.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ixgs_engine.geometry.projection import rigid_motion, source_position
from ixgs_engine.projector.joseph import JosephProjector
from ixgs_engine.reconstruct.data import block_averaged
from ixgs_engine.volume import Volume, VolumeGrid

STEP_ROTATION_DEG = 0.05  # the finite differences' steps
STEP_TRANSLATION_MM = 0.05
DAMPING = 1e-3  # Levenberg-Marquardt's first damping, relative to the normal matrix's diagonal


def coarse_level(volume: Volume, factor: int) -> Volume:
    """``volume`` on voxels ``factor`` times larger spanning the same outermost voxel centres (the
    projector's box), smoothed over ``factor`` voxels before it is sampled (no aliasing)."""
    if factor <= 1:
        return volume
    counts = [max(2, int(round((n - 1) / factor)) + 1) for n in volume.shape]
    array = torch.as_tensor(volume.array, dtype=torch.float32)[None, None]
    width = factor + 1 - factor % 2  # odd, so the smoothing keeps the voxels in place
    smooth = F.avg_pool3d(array, width, stride=1, padding=width // 2, count_include_pad=False)
    coarse = F.interpolate(smooth, size=counts, mode="trilinear", align_corners=True)[0, 0].numpy()
    spacing = volume.spacing * (np.array(volume.size_ijk) - 1) / (np.array(coarse.shape[::-1]) - 1)
    return Volume.on_grid(VolumeGrid(coarse.shape, volume.origin, spacing, volume.direction), coarse)


def coarse_views(projections: np.ndarray, matrices: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The views (N, H, W) and their matrices block-averaged by ``factor``."""
    values = torch.as_tensor(np.asarray(projections, dtype=np.float32))
    pooled, coarse = block_averaged(values, np.asarray(matrices, dtype=np.float64), factor)
    return pooled.numpy(), coarse


def register_views(
    volume: Volume,
    projections: np.ndarray,
    matrices: np.ndarray,
    centre: np.ndarray,
    iterations: int = 3,
    factor: int = 2,
    device: str | torch.device = "cpu",
    progress: Callable[[], None] | None = None,
) -> np.ndarray:
    """Each view's world motion (V, 4, 4) registering it to ``volume`` (1/mm): ``matrices[v] @
    motions[v]`` projects ``volume`` closest to ``projections[v]`` (line integrals), found by
    ``iterations`` Levenberg-Marquardt steps at the level ``factor``; the motions' mean removed
    (see the module). ``progress()`` after each view."""
    level = coarse_level(volume, factor)
    views, level_matrices = coarse_views(projections, matrices, factor)
    array = torch.as_tensor(level.array, dtype=torch.float32, device=device)
    steps = np.array([math.radians(STEP_ROTATION_DEG)] * 3 + [STEP_TRANSLATION_MM] * 2)
    found = np.zeros((len(views), 6))
    for view, (image, P) in enumerate(zip(views, level_matrices, strict=True)):
        target = torch.as_tensor(image, dtype=torch.float32, device=device).reshape(-1)
        basis = _motion_basis(P, centre)
        problem = _Problem(array, level.grid, P, target, image.shape, centre, basis, device)
        found[view] = basis @ _levenberg_marquardt(problem, steps, iterations)
        if progress is not None:
            progress()
    found -= found.mean(axis=0)
    return np.stack([rigid_motion(p[:3], p[3:], centre) for p in found])


def _motion_basis(matrix: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(6, 5): the registration's parameters (omega, two shifts across the ray from the view's
    source to ``centre``) as motion parameters (omega, t)."""
    axis = centre - source_position(matrix)
    axis /= np.linalg.norm(axis)
    helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
    first = np.cross(axis, helper)
    first /= np.linalg.norm(first)
    basis = np.zeros((6, 5))
    basis[:3, :3] = np.eye(3)
    basis[3:, 3] = first
    basis[3:, 4] = np.cross(axis, first)
    return basis


class _Problem:
    """One view's registration: the squared residual of the volume's projection for parameters
    in ``basis`` (several candidates projected at once)."""

    def __init__(self, volume, grid, matrix, target, image_shape, centre, basis, device) -> None:
        self.volume, self.grid, self.matrix, self.target = volume, grid, matrix, target
        self.image_shape, self.centre, self.basis, self.device = image_shape, centre, basis, device

    def residuals(self, candidates: list[np.ndarray]) -> torch.Tensor:
        """``target`` less each candidate's projection (C, pixels)."""
        stacked = np.stack([self.matrix @ rigid_motion(*np.split(self.basis @ p, 2), self.centre) for p in candidates])
        projector = JosephProjector(self.grid, stacked, self.image_shape, device=self.device)
        return self.target - projector.forward(self.volume).reshape(len(candidates), -1)


def _levenberg_marquardt(problem: _Problem, steps: np.ndarray, iterations: int) -> np.ndarray:
    """Parameters minimizing ``problem``'s squared residual from zero: damped Gauss-Newton steps,
    each kept only when it lowers it (the damping grows tenfold otherwise, shrinks after a success)."""
    count = len(steps)
    parameters = np.zeros(count)
    residual = problem.residuals([parameters])[0].double()
    cost = float(residual.square().sum())
    damping = DAMPING
    for _ in range(iterations):
        shifted = problem.residuals([parameters + np.eye(count)[k] * steps[k] for k in range(count)]).double()
        jacobian = (residual - shifted) / torch.as_tensor(steps, dtype=torch.float64)[:, None]
        normal = (jacobian @ jacobian.T).cpu().numpy()
        gradient = (jacobian @ residual).cpu().numpy()
        while True:
            damped = normal + damping * np.diag(np.diag(normal) + 1e-12)
            candidate = parameters + np.linalg.solve(damped, gradient)
            trial = problem.residuals([candidate])[0].double()
            trial_cost = float(trial.square().sum())
            if trial_cost < cost:
                parameters, residual, cost = candidate, trial, trial_cost
                damping = max(damping / 10.0, 1e-6)
                break
            damping *= 10.0
            if damping > 1e4:
                return parameters
    return parameters
