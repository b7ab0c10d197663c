"""Self-calibration: every view's pose refined with the Gaussians, by gradient through the renderer.

Real C-arm poses are never exact (a fiducial calibration leaves tenths of a degree and about
half a millimetre per view, the C-arm's encoders a degree and millimetres). Each training view
gets a rigid correction of the scene as that view sees it: a rotation vector ``omega`` and a
translation ``tau`` about the ROI centre (the origin of the normalized scene), so its matrix
becomes ``P [R(omega) tau; 0 1]``. The correction is torch code in front of the render, so both
backends give its gradient (the splat stage differentiates the matrices).

- **Warm-up**: the poses move only after ``start`` of the iterations, once the volume has its
  coarse structure (before, the gradient would fit poses to a blur).
- **Optimizer**: Adam per view, with its own decaying rates; a view's moments and step count
  move only in the steps that render it (views are seen a few at a time).
- **Gauge**: the whole scene moving with all cameras is unobservable. After every update the
  corrections' mean over the views is removed (rotation vectors and translations alike): the
  refined poses keep the given poses' mean, and the volume stays where the ROI says.
- **Divergence**: a view whose correction exceeds ``max_rotation_deg`` or ``max_translation_mm``
  stops the run with a message naming it (its image may be mislabelled, or the patient moved).
- ``auto``: refine; if the median correction stays below ``exact_rotation_deg`` and
  ``exact_translation_mm`` the given poses were exact, and everything after the training keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ixgs_engine.errors import IXGSError
from ixgs_engine.geometry.normalization import SceneNormalization
from ixgs_engine.geometry.projection import source_position
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.reconstruct.presets import DEFAULT_POSE_MODE, POSE_MODES

# A correction this large and three times the median is named in the summary.
LARGE_ROTATION_DEG = 0.5
LARGE_SHIFT_MM = 1.0
_BETAS = (0.9, 0.999)
_EPSILON = 1e-12


@dataclass(frozen=True)
class PoseRefinement:
    """Settings of the joint pose refinement (see the module). Rates decay exponentially from
    the first value to the second over the steps that move the poses."""

    mode: str = DEFAULT_POSE_MODE
    start: float = 0.2
    lr_rotation_deg: tuple[float, float] = (0.2, 0.01)
    lr_translation_mm: tuple[float, float] = (0.4, 0.02)
    max_rotation_deg: float = 10.0
    max_translation_mm: float = 20.0
    exact_rotation_deg: float = 0.05
    exact_translation_mm: float = 0.1
    # After these many of the final SART passes, every view is registered to the volume
    # (``view_registration``): that many Levenberg-Marquardt steps on views and volume
    # block-averaged by the factor.
    register_after_passes: tuple[int, ...] = (2, 6)
    registration_iterations: int = 3
    registration_factor: int = 2
    # No registration when the volume at the registration's level would have fewer voxels than
    # this along its longest side: a coarse volume fits a view as well with a pose degrees off
    # (measured: a 12^3 level moved a 10-view phantom's poses from 1.2 to 7 deg).
    registration_min_voxels: int = 48

    def __post_init__(self) -> None:
        if self.mode not in POSE_MODES:
            raise ValueError(f"pose refinement mode must be one of {', '.join(POSE_MODES)}, got {self.mode!r}")
        if not 0 <= self.start < 1:
            raise ValueError(f"pose refinement start must be a share of the iterations in [0, 1), got {self.start}")
        rates = (*self.lr_rotation_deg, *self.lr_translation_mm)
        if len(rates) != 4 or not all(r > 0 for r in rates):
            raise ValueError(f"pose learning rates must be two positive (first, last) pairs, got {rates}")
        if not (self.max_rotation_deg > 0 and self.max_translation_mm > 0):
            raise ValueError("the largest pose corrections must be positive")
        if any(int(n) != n or n < 0 for n in self.register_after_passes):
            raise ValueError(f"register_after_passes must be pass counts (0 or more), got {self.register_after_passes}")
        if min(self.registration_iterations, self.registration_factor, self.registration_min_voxels) < 1:
            raise ValueError("registration_iterations, registration_factor and registration_min_voxels must be >= 1")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def registers(self, shape: tuple[int, ...]) -> bool:
        """Whether a volume of ``shape`` is fine enough to register the views to (see above)."""
        return max(shape) // self.registration_factor >= self.registration_min_voxels


def rotation_matrices(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (V, 3, 3) of rotation vectors (V, 3) (radians; the exponential of
    their skew matrices, smooth at zero)."""
    zero = torch.zeros_like(omega[:, 0])
    wx, wy, wz = omega.unbind(dim=1)
    skew = torch.stack(
        [torch.stack([zero, -wz, wy], 1), torch.stack([wz, zero, -wx], 1), torch.stack([-wy, wx, zero], 1)], 1
    )
    return torch.linalg.matrix_exp(skew)


def corrected_matrices(matrices: torch.Tensor, omega: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``P [R(omega) tau; 0 1]`` for each view: matrices (V, 3, 4) acting on the points moved
    by the corrections (rotation vectors and translations (V, 3), normalized units)."""
    rotation = rotation_matrices(omega)
    left = matrices[:, :, :3]
    return torch.cat([left @ rotation, (left @ tau[:, :, None]) + matrices[:, :, 3:]], dim=2)


class ViewCorrections:
    """The corrections of ``num_views`` views and their per-view Adam state, on ``device``."""

    def __init__(self, num_views: int, device: torch.device | str = "cpu") -> None:
        self.omega = torch.zeros((num_views, 3), dtype=torch.float64, device=device, requires_grad=True)
        self.tau = torch.zeros((num_views, 3), dtype=torch.float64, device=device, requires_grad=True)
        self._moments = torch.zeros((2, num_views, 6), dtype=torch.float64, device=device)
        self._steps = torch.zeros(num_views, dtype=torch.float64, device=device)

    def apply(self, matrices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """The corrected matrices of ``views`` (``matrices``: all views', normalized scene)."""
        index = views.to(self.omega.device)
        return corrected_matrices(matrices[index], self.omega[index], self.tau[index])

    def step(self, views: torch.Tensor, lr_rotation: float, lr_translation: float) -> None:
        """One Adam update of ``views`` from the gradients the last backward left (rotation in
        radians, translation in normalized units), then the gauge: zero mean over all views."""
        index = torch.unique(views.to(self.omega.device))
        with torch.no_grad():
            gradient = torch.cat([_grad_of(self.omega)[index], _grad_of(self.tau)[index]], dim=1)
            first, second = self._moments[0], self._moments[1]
            first[index] = _BETAS[0] * first[index] + (1 - _BETAS[0]) * gradient
            second[index] = _BETAS[1] * second[index] + (1 - _BETAS[1]) * gradient**2
            self._steps[index] += 1
            steps = self._steps[index, None]
            update = (first[index] / (1 - _BETAS[0] ** steps)) / (
                torch.sqrt(second[index] / (1 - _BETAS[1] ** steps)) + _EPSILON
            )
            self.omega[index] -= lr_rotation * update[:, :3]
            self.tau[index] -= lr_translation * update[:, 3:]
            self.omega -= self.omega.mean(dim=0)
            self.tau -= self.tau.mean(dim=0)
        self.omega.grad = None
        self.tau.grad = None

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors only, for the checkpoint."""
        return {
            "omega": self.omega.detach().cpu(),
            "tau": self.tau.detach().cpu(),
            "moments": self._moments.cpu(),
            "steps": self._steps.cpu(),
        }

    @classmethod
    def restored(cls, state: dict[str, torch.Tensor], device: torch.device | str) -> ViewCorrections:
        corrections = cls(int(state["omega"].shape[0]), device)
        with torch.no_grad():
            corrections.omega.copy_(state["omega"])
            corrections.tau.copy_(state["tau"])
        corrections._moments = state["moments"].to(device=device, dtype=torch.float64).clone()
        corrections._steps = state["steps"].to(device=device, dtype=torch.float64).clone()
        return corrections

    def sizes(self, scene: SceneNormalization) -> tuple[np.ndarray, np.ndarray]:
        """Each view's rotation (degrees) and translation of the ROI centre (mm)."""
        omega = self.omega.detach().cpu().numpy()
        tau = self.tau.detach().cpu().numpy()
        return np.degrees(np.linalg.norm(omega, axis=1)), np.linalg.norm(tau, axis=1) / scene.scale

    def check(self, settings: PoseRefinement, scene: SceneNormalization, view_ids: list[int]) -> None:
        """Stop with one line naming every view whose correction diverged."""
        degrees, millimetres = self.sizes(scene)
        wrong = np.flatnonzero((degrees > settings.max_rotation_deg) | (millimetres > settings.max_translation_mm))
        if wrong.size:
            named = ", ".join(f"{view_ids[i]} ({degrees[i]:.1f} deg, {millimetres[i]:.1f} mm)" for i in wrong)
            raise IXGSError(
                f"the pose refinement diverged for view(s) {named} (more than {settings.max_rotation_deg:g} deg or "
                f"{settings.max_translation_mm:g} mm): check those images belong to this scan and its poses, "
                "leave them out, or run with `refine_poses` off"
            )

    def world_motions(self, scene: SceneNormalization) -> np.ndarray:
        """Each view's correction as a 4x4 motion of world points (mm): ``N^-1 [R tau; 0 1] N``,
        N the world-to-normalized transform."""
        rotation = rotation_matrices(self.omega.detach().cpu()).numpy()
        motion = np.tile(np.eye(4), (len(rotation), 1, 1))
        motion[:, :3, :3] = rotation
        motion[:, :3, 3] = self.tau.detach().cpu().numpy()
        to_scene = scene.world_to_normalized_matrix()
        return np.einsum("ij,vjk,kl->vil", np.linalg.inv(to_scene), motion, to_scene)

    def world_matrices(self, world_matrices: np.ndarray, scene: SceneNormalization) -> np.ndarray:
        """The views' corrected matrices in world mm (``world_matrices``: theirs as given)."""
        return np.einsum("vij,vjk->vik", world_matrices, self.world_motions(scene))


def reprojection_shift_px(before: np.ndarray, after: np.ndarray, roi: ROI) -> np.ndarray:
    """Per view, the mean shift (pixels) of the ROI's centre and corners on the detector."""
    half = np.asarray(roi.size, dtype=np.float64) / 2.0
    signs = np.array([[0, 0, 0]] + [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    points = roi.center + (signs * half) @ roi.direction.T
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)

    def pixels(matrices: np.ndarray) -> np.ndarray:
        projected = np.einsum("vij,pj->vpi", matrices, homogeneous)
        return projected[..., :2] / projected[..., 2:]

    return np.linalg.norm(pixels(after) - pixels(before), axis=2).mean(axis=1)


def refinement_is_used(motions: np.ndarray, settings: PoseRefinement, centre: np.ndarray) -> bool:
    """Whether the refined poses replace the given ones: always with ``on``; with ``auto`` unless
    the median correction (``motions``: the training's, world) is below the ``exact`` sizes."""
    degrees, millimetres = motion_sizes(motions, centre)
    exact = np.median(degrees) < settings.exact_rotation_deg and np.median(millimetres) < settings.exact_translation_mm
    return settings.mode == "on" or not exact


def motion_sizes(motions: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each 4x4 world motion's rotation (degrees) and shift of ``centre`` (mm)."""
    rotvecs, shifts = _sizes(motions, centre)
    return np.degrees(np.linalg.norm(rotvecs, axis=1)), np.linalg.norm(shifts, axis=1)


def correction_record(
    motions: np.ndarray,
    settings: PoseRefinement,
    before: np.ndarray,
    roi: ROI,
    view_ids: list[int],
    used: bool,
    registrations: int = 0,
) -> dict:
    """For ``summary.json``: each view's correction (``motions``: 4x4 world motions of its given
    world matrix ``before``; degrees, mm at the ROI centre, the shift of the ROI's reprojection in
    pixels), their median and largest, the views whose correction is large (several times the
    median: mislabelled or moved?), whether the refined poses are ``used`` (``auto`` keeps exact
    ones) and how many registrations to the volume they include."""
    degrees, millimetres = motion_sizes(motions, roi.center)
    shifts = reprojection_shift_px(before, np.einsum("vij,vjk->vik", before, motions), roi)
    median_deg, median_mm = float(np.median(degrees)), float(np.median(millimetres))
    large = (degrees > max(3 * median_deg, LARGE_ROTATION_DEG)) | (millimetres > max(3 * median_mm, LARGE_SHIFT_MM))
    return {
        "mode": settings.mode,
        "gauge": "zero mean correction over the training views",
        "used": used,
        "registrations": registrations,
        "median_rotation_deg": round(median_deg, 4),
        "median_translation_mm": round(median_mm, 4),
        "max_rotation_deg": round(float(degrees.max()), 4),
        "max_translation_mm": round(float(millimetres.max()), 4),
        "large_views": [view_ids[i] for i in np.flatnonzero(large)],
        "views": [
            {
                "view": view_ids[i],
                "rotation_deg": round(float(degrees[i]), 4),
                "translation_mm": round(float(millimetres[i]), 4),
                "reprojection_px": round(float(shifts[i]), 3),
            }
            for i in range(len(view_ids))
        ],
    }


def describe(record: dict) -> str:
    """One line for the end of a run: the median and largest corrections, the large ones named."""
    text = (
        f"poses refined: median {record['median_rotation_deg']:.2f} deg / {record['median_translation_mm']:.2f} mm, "
        f"max {record['max_rotation_deg']:.2f} deg / {record['max_translation_mm']:.2f} mm"
    )
    if record["large_views"]:
        text += f"; large corrections (check these views): {', '.join(str(v) for v in record['large_views'])}"
    if not record["used"]:
        text += "; the given poses were exact and are kept"
    return text


def _grad_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)


def _sizes(motions: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation vectors (V, 3, radians) of 4x4 world motions and how far they move ``centre`` (V, 3, mm)."""
    rotvecs = Rotation.from_matrix(motions[:, :3, :3]).as_rotvec()
    return rotvecs, motions[:, :3, :3] @ centre + motions[:, :3, 3] - centre


def residual_pose_error(
    errors: np.ndarray, corrections: np.ndarray, centre: np.ndarray, matrices: np.ndarray | None = None
) -> dict:
    """How far refined poses are from the truth, for experiments on simulated errors: a view
    seen with ``P_true E`` (``errors``: 4x4 world motions) and refined by ``C``
    (``corrections``, :meth:`ViewCorrections.world_motions`) is off by ``E C``. Medians over
    the views of its rotation (degrees) and of its shift of ``centre`` (mm): as given (``E``),
    refined (``E C``) and refined with the views' mean removed (the gauge no view can see).
    With the views' true ``matrices``, the shift is also split into its part across the ray
    from the source to ``centre`` (what moves the image) and along it (only a magnification
    change, a fraction of a pixel per mm: barely observable)."""
    given = _sizes(errors, centre)
    refined = _sizes(np.einsum("vij,vjk->vik", errors, corrections), centre)
    gauge = (refined[0] - refined[0].mean(axis=0), refined[1] - refined[1].mean(axis=0))
    axes = None
    if matrices is not None:
        axes = centre - np.stack([source_position(P) for P in matrices])
        axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    out = {}
    for name, (rotvecs, shifts) in {"given": given, "refined": refined, "gauge_removed": gauge}.items():
        out[f"median_rotation_deg_{name}"] = float(np.median(np.degrees(np.linalg.norm(rotvecs, axis=1))))
        out[f"median_translation_mm_{name}"] = float(np.median(np.linalg.norm(shifts, axis=1)))
        if axes is not None:
            along = np.einsum("vi,vi->v", shifts, axes)
            across = np.linalg.norm(shifts - along[:, None] * axes, axis=1)
            out[f"median_translation_mm_{name}_across"] = float(np.median(across))
            out[f"median_translation_mm_{name}_along"] = float(np.median(np.abs(along)))
    return out
