"""Radiative Gaussians in the normalized scene [-1, 1]^3: parameters and activations,
initialization, densify / prune (with the optimizer's state kept in step), and the file format.

Activations (R^2-Gaussian's):
- positions: raw (N, 3).
- scales: ``lo + (hi - lo) * sigmoid(raw)`` with (lo, hi) = 0.0005 and 0.5 of the box size
  (box side 2, so 0.001 .. 1.0 normalized units).
- rotations: unit quaternions (w, x, y, z) = raw (N, 4) normalized.
- densities: ``softplus(raw)``, the peak value rho per normalized length unit.
``Sigma = R S S^T R^T``; ``G(x) = rho exp(-1/2 (x - p)^T Sigma^-1 (x - p))``.

File format ``ixgs-gaussians/1``: a NumPy ``.npz`` archive (no pickles) with
``format`` (the string ``ixgs-gaussians/1``), ``positions`` (N, 3), ``scales`` (N, 3, activated),
``rotations`` (N, 4, unit quaternions w, x, y, z), ``densities`` (N,, activated, per normalized
length unit), ``scale_bounds`` (2,), and, when the scene normalization is known,
``normalization_center`` (3,), ``normalization_direction`` (3, 3) and ``normalization_scale`` ()
(see ``geometry/normalization.py``; densities times ``normalization_scale`` are 1/mm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import nn

from ixgs_engine.geometry.normalization import SceneNormalization
from ixgs_engine.volume import VolumeGrid

FORMAT = "ixgs-gaussians/1"
BOX_SIZE = 2.0
SCALE_BOUNDS = (0.0005 * BOX_SIZE, 0.5 * BOX_SIZE)
KNN_NEIGHBOURS = 3
SPLIT_SCALE_DIVISOR = 1.6  # R^2-Gaussian: scale / (0.8 N) with N = 2 children
SPLIT_DENSITY_FACTOR = 0.5  # R^2-Gaussian: each child gets rho / N
PARAMETER_NAMES = ("positions", "scales", "rotations", "densities")
_LOGIT_MARGIN = 1e-6


def inverse_softplus(values: torch.Tensor) -> torch.Tensor:
    """Raw value whose softplus is ``values`` (> 0)."""
    return values + torch.log(-torch.expm1(-values))


def scales_to_raw(scales: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Raw value whose scale activation is ``scales`` (clipped just inside the bounds)."""
    lo, hi = bounds
    return torch.logit(((scales - lo) / (hi - lo)).clamp(_LOGIT_MARGIN, 1.0 - _LOGIT_MARGIN))


def quaternion_to_rotation(quaternions: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) of unit quaternions (N, 4) ordered (w, x, y, z)."""
    w, x, y, z = quaternions.unbind(dim=1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=1).reshape(-1, 3, 3)


def knn_scales(positions: np.ndarray, neighbours: int = KNN_NEIGHBOURS) -> np.ndarray:
    """Root mean square distance (N,) from each point to its ``neighbours`` nearest others
    (3DGS / R^2-Gaussian's isotropic initial scale)."""
    points = np.asarray(positions, dtype=np.float64)
    distances, _ = cKDTree(points).query(points, k=neighbours + 1)
    return np.sqrt(np.mean(distances[:, 1:] ** 2, axis=1))


def _reindex(values: torch.Tensor, kept: torch.Tensor, count: int) -> torch.Tensor:
    """Rows ``kept`` of ``values`` followed by zero rows up to ``count`` rows."""
    extra = values.new_zeros((count - kept.numel(), *values.shape[1:]))
    return torch.cat([values[kept], extra])


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


class GaussianModel:
    """Leaf tensors (``nn.Parameter``) of N Gaussians plus the densification statistics."""

    def __init__(
        self,
        positions: torch.Tensor,
        raw_scales: torch.Tensor,
        raw_rotations: torch.Tensor,
        raw_densities: torch.Tensor,
        scale_bounds: tuple[float, float] = SCALE_BOUNDS,
        normalization: SceneNormalization | None = None,
    ) -> None:
        raw = dict(zip(PARAMETER_NAMES, (positions, raw_scales, raw_rotations, raw_densities), strict=True))
        self._params = {name: nn.Parameter(value.detach().clone()) for name, value in raw.items()}
        self.scale_bounds = (float(scale_bounds[0]), float(scale_bounds[1]))
        self.normalization = normalization
        self._grad_sum = positions.new_zeros(positions.shape[0])
        self._grad_count = positions.new_zeros(positions.shape[0])

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_values(
        cls,
        positions: np.ndarray | torch.Tensor,
        scales: np.ndarray | torch.Tensor,
        rotations: np.ndarray | torch.Tensor,
        densities: np.ndarray | torch.Tensor,
        scale_bounds: tuple[float, float] = SCALE_BOUNDS,
        normalization: SceneNormalization | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> GaussianModel:
        """A model from activated values (scales clipped into the bounds)."""

        def tensor(values: np.ndarray | torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(values, dtype=torch.float64, device=device)

        raw = (
            tensor(positions),
            scales_to_raw(tensor(scales), scale_bounds),
            F.normalize(tensor(rotations), dim=1),
            inverse_softplus(tensor(densities).clamp_min(1e-30)),
        )
        return cls(*(value.to(dtype) for value in raw), scale_bounds=scale_bounds, normalization=normalization)

    @classmethod
    def random(
        cls,
        n: int,
        *,
        density: float,
        seed: int = 0,
        normalization: SceneNormalization | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> GaussianModel:
        """``n`` isotropic Gaussians uniform in [-1, 1]^3 with peak ``density`` (see
        :meth:`at_points`)."""
        positions = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 3))
        return cls.at_points(positions, density=density, normalization=normalization, device=device, dtype=dtype)

    @classmethod
    def at_points(
        cls,
        positions: np.ndarray,
        *,
        density: float,
        normalization: SceneNormalization | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> GaussianModel:
        """Isotropic Gaussians at ``positions`` (N, 3) with peak ``density``, scales from the RMS
        distance to the 3 nearest neighbours (as R^2-Gaussian / 3DGS), no rotation."""
        positions = np.asarray(positions, dtype=np.float64)
        scales = np.clip(knn_scales(positions), *SCALE_BOUNDS)
        return cls._isotropic(positions, scales, np.full(len(positions), float(density)), normalization, device, dtype)

    @classmethod
    def from_volume(
        cls,
        values: np.ndarray,
        grid: VolumeGrid,
        n: int,
        *,
        seed: int = 0,
        normalization: SceneNormalization | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> GaussianModel:
        """``n`` Gaussians sampled from a volume (nz, ny, nx) of densities per normalized unit
        on ``grid`` (normalized coordinates, e.g. a few SART iterations).

        Voxels are drawn with probability proportional to their (clipped >= 0) value, with a
        uniform sub-voxel jitter; scales come from the 3 nearest neighbours. Each Gaussian
        gets ``rho_i = gamma * v_i`` (``v_i`` its voxel's value) with one factor ``gamma``
        chosen so the Gaussians' total mass ``sum rho_i (2 pi)^3/2 s_i^3`` equals the
        volume's ``sum v * voxel volume``. Where the point density is locally uniform,
        ``lambda s^3`` is a constant, so this also reproduces the values locally (roughly:
        Poisson noise in the neighbour distances).
        """
        volume = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
        if volume.shape != tuple(grid.shape):
            raise ValueError(f"values shape {volume.shape} does not match the grid {grid.shape}")
        flat = volume.reshape(-1)
        total = flat.sum()
        if not total > 0:
            raise ValueError("the volume has no positive value to sample Gaussians from")
        rng = np.random.default_rng(seed)
        picks = rng.choice(flat.size, size=n, p=flat / total)
        k, j, i = np.unravel_index(picks, volume.shape)
        index = np.stack([i, j, k], axis=1) + rng.uniform(-0.5, 0.5, size=(n, 3))
        affine = grid.index_to_world_matrix()
        positions = index @ affine[:3, :3].T + affine[:3, 3]
        scales = np.clip(knn_scales(positions), *SCALE_BOUNDS)
        mass = total * abs(np.linalg.det(affine[:3, :3]))
        sampled = flat[picks]
        gamma = mass / np.sum(sampled * (2.0 * math.pi) ** 1.5 * scales**3)
        return cls._isotropic(positions, scales, gamma * sampled, normalization, device, dtype)

    @classmethod
    def concatenate(
        cls,
        models: Sequence[GaussianModel],
        normalization: SceneNormalization | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> GaussianModel:
        """One model holding the Gaussians of ``models`` in order (activated values, the first
        model's scale bounds)."""
        with torch.no_grad():
            values = [torch.cat([getattr(m, name).to(device) for m in models]) for name in PARAMETER_NAMES]
        return cls.from_values(
            *values, scale_bounds=models[0].scale_bounds, normalization=normalization, device=device, dtype=dtype
        )

    @classmethod
    def _isotropic(
        cls,
        positions: np.ndarray,
        scales: np.ndarray,
        densities: np.ndarray,
        normalization: SceneNormalization | None,
        device: str | torch.device,
        dtype: torch.dtype,
    ) -> GaussianModel:
        """Unrotated Gaussians with one scale (N,) along every axis."""
        rotations = np.tile([1.0, 0.0, 0.0, 0.0], (positions.shape[0], 1))
        scales = np.repeat(scales[:, None], 3, axis=1)
        return cls.from_values(
            positions, scales, rotations, densities, normalization=normalization, device=device, dtype=dtype
        )

    # ----------------------------------------------------------------- parameters
    @property
    def num_gaussians(self) -> int:
        return int(self._params["positions"].shape[0])

    def parameters(self) -> dict[str, nn.Parameter]:
        """The raw leaf tensors by name (``PARAMETER_NAMES``)."""
        return dict(self._params)

    def param_groups(self, learning_rates: Mapping[str, float]) -> list[dict]:
        """One optimizer param group per parameter, named, e.g. for ``torch.optim.Adam``."""
        return [
            {"params": [self._params[name]], "lr": float(learning_rates[name]), "name": name}
            for name in PARAMETER_NAMES
        ]

    @property
    def positions(self) -> torch.Tensor:
        return self._params["positions"]

    @property
    def scales(self) -> torch.Tensor:
        lo, hi = self.scale_bounds
        return lo + (hi - lo) * torch.sigmoid(self._params["scales"])

    @property
    def rotations(self) -> torch.Tensor:
        return F.normalize(self._params["rotations"], dim=1)

    @property
    def densities(self) -> torch.Tensor:
        return F.softplus(self._params["densities"])

    def covariances(self) -> torch.Tensor:
        """``Sigma = R S S^T R^T`` (N, 3, 3) in float64: in float32 the small eigenvalues of a
        thin Gaussian (scale ratios up to 1000) drown in the rounding of the large ones."""
        rotation = quaternion_to_rotation(self.rotations.to(torch.float64)).reshape(-1, 9).unbind(dim=1)
        variances = (self.scales.to(torch.float64) ** 2).unbind(dim=1)

        def entry(i: int, j: int) -> torch.Tensor:
            return sum(rotation[3 * i + k] * rotation[3 * j + k] * variances[k] for k in range(3))

        upper = {(i, j): entry(i, j) for i in range(3) for j in range(i, 3)}
        return torch.stack([upper[min(i, j), max(i, j)] for i in range(3) for j in range(3)], dim=1).reshape(-1, 3, 3)

    # ----------------------------------------------------------------- file format
    def save(self, path: str | Path) -> None:
        """Write the ``ixgs-gaussians/1`` file (see the module docstring)."""
        with torch.no_grad():
            arrays: dict[str, np.ndarray] = {
                "format": np.array(FORMAT),
                "positions": self.positions.cpu().numpy(),
                "scales": self.scales.cpu().numpy(),
                "rotations": self.rotations.cpu().numpy(),
                "densities": self.densities.cpu().numpy(),
                "scale_bounds": np.array(self.scale_bounds),
            }
        if self.normalization is not None:
            arrays["normalization_center"] = self.normalization.center
            arrays["normalization_direction"] = self.normalization.direction
            arrays["normalization_scale"] = np.array(self.normalization.scale)
        with open(path, "wb") as stream:
            np.savez(stream, **arrays)

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> GaussianModel:
        """Read an ``ixgs-gaussians/1`` file."""
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data or str(data["format"]) != FORMAT:
                raise ValueError(f"{path} is not an {FORMAT} file")
            normalization = None
            if "normalization_scale" in data:
                normalization = SceneNormalization(
                    center=data["normalization_center"],
                    direction=data["normalization_direction"],
                    scale=float(data["normalization_scale"]),
                )
            return cls.from_values(
                data["positions"],
                data["scales"],
                data["rotations"],
                data["densities"],
                scale_bounds=tuple(data["scale_bounds"].tolist()),
                normalization=normalization,
                device=device,
                dtype=dtype,
            )

    # ----------------------------------------------------------------- densify / prune
    def add_densification_stats(self, screen_grad: torch.Tensor, image_shape: tuple[int, int]) -> None:
        """Accumulate the view-space positional gradient norms of one step.

        ``screen_grad`` (V, N, 2) is the gradient of the loss w.r.t. the render's
        ``screen_offsets`` (pixels). It is converted to normalized device coordinates
        (x W/2, x H/2), the unit 3DGS / R^2-Gaussian threshold, and counted for the views in
        which the Gaussian took part (non-zero gradient).
        """
        height, width = image_shape
        to_ndc = screen_grad.new_tensor([width / 2.0, height / 2.0])
        norms = torch.linalg.vector_norm(screen_grad.detach() * to_ndc, dim=2)
        self._grad_sum += norms.sum(dim=0).to(self._grad_sum)
        self._grad_count += (norms > 0).sum(dim=0).to(self._grad_count)

    def densification_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The accumulated (gradient norm sums, view counts), for checkpoints."""
        return self._grad_sum.clone(), self._grad_count.clone()

    def load_densification_state(self, grad_sum: torch.Tensor, grad_count: torch.Tensor) -> None:
        """Restore what :meth:`densification_state` returned."""
        if grad_sum.shape != (self.num_gaussians,) or grad_count.shape != (self.num_gaussians,):
            raise ValueError(f"densification state must have {self.num_gaussians} entries")
        self._grad_sum = grad_sum.clone()
        self._grad_count = grad_count.clone()

    def mean_screen_gradients(self) -> torch.Tensor:
        """Mean accumulated view-space gradient norm per Gaussian (0 where never seen)."""
        return self._grad_sum / self._grad_count.clamp_min(1.0)

    def densify_and_prune(
        self,
        optimizer: torch.optim.Optimizer | None,
        grad_threshold: float = 5e-5,
        scale_threshold: float = 0.1 * BOX_SIZE,
        min_density: float = 1e-5,
        max_gaussians: int = 500_000,
        split_density_factor: float = SPLIT_DENSITY_FACTOR,
        generator: torch.Generator | None = None,
        domain: Sequence[float] = (BOX_SIZE / 2,) * 3,
        refined: Sequence[float] | None = None,
    ) -> dict[str, int]:
        """R^2-Gaussian's adaptive control: Gaussians whose mean view-space gradient reaches
        ``grad_threshold`` are cloned when their largest scale is at most ``scale_threshold``
        and split otherwise (see :meth:`split` for ``split_density_factor``; never past
        ``max_gaussians``, the largest gradients first); then Gaussians with density below
        ``min_density`` or centre outside the ``domain`` box (half-sizes along x, y, z; default
        [-1, 1]^3) are pruned. With ``refined`` (half-sizes of a smaller centred box), only
        Gaussians inside it are cloned or split: the rest of the domain stays coarse. The
        statistics restart. Returns the counts."""
        with torch.no_grad():
            gradients = self.mean_screen_gradients()
            candidates = gradients >= grad_threshold
            if refined is not None:
                candidates &= (self.positions.abs() <= self.positions.new_tensor(list(refined))).all(dim=1)
            hot = self._within_budget(candidates, gradients, max_gaussians - self.num_gaussians)
            large = self.scales.amax(dim=1) > scale_threshold
            clone_mask = hot & ~large
            split_mask = hot & large
            self.clone(clone_mask, optimizer)
            split_mask = torch.cat([split_mask, split_mask.new_zeros(int(clone_mask.sum()))])
            self.split(split_mask, optimizer, generator, split_density_factor)
            outside = (self.positions.abs() > self.positions.new_tensor(list(domain))).any(dim=1)
            prune_mask = (self.densities < min_density) | outside
            self.prune(prune_mask, optimizer)
            self._grad_sum.zero_()
            self._grad_count.zero_()
        return {"cloned": int(clone_mask.sum()), "split": int(split_mask.sum()), "pruned": int(prune_mask.sum())}

    @staticmethod
    def _within_budget(candidates: torch.Tensor, gradients: torch.Tensor, budget: int) -> torch.Tensor:
        """The candidates with the largest gradients, at most ``budget`` of them (each clone
        or split adds one Gaussian), so the model never grows past its maximum."""
        if int(candidates.sum()) <= max(budget, 0):
            return candidates
        kept = torch.zeros_like(candidates)
        if budget > 0:
            ranked = torch.where(candidates, gradients, torch.full_like(gradients, -1.0))
            kept[torch.topk(ranked, budget).indices] = True
        return kept

    def clone(self, mask: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Duplicate the masked Gaussians; original and copy each keep half the density
        (R^2-Gaussian), so the rendered images are unchanged."""
        with torch.no_grad():
            raw_densities = self._params["densities"].detach().clone()
            raw_densities[mask] = inverse_softplus(self.densities[mask] / 2.0)
            new = {name: torch.cat([value, value[mask]]) for name, value in self._params.items()}
            new["densities"] = torch.cat([raw_densities, raw_densities[mask]])
            self._replace(new, torch.arange(self.num_gaussians, device=mask.device), optimizer)

    def split(
        self,
        mask: torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
        generator: torch.Generator | None = None,
        density_factor: float = SPLIT_DENSITY_FACTOR,
    ) -> None:
        """Replace each masked Gaussian by two drawn from it (positions sampled from the
        parent), with scales / 1.6 and ``density_factor`` times its density each.

        The default 0.5 is R^2-Gaussian's: the peak density is shared, not duplicated, but the
        mass (``rho s^3``, hence the summed line integrals) falls to 2 * 0.5 / 1.6^3 = 0.24 of
        the parent's. ``1.6**3 / 2`` (about 2.05) keeps the mass instead."""
        with torch.no_grad():
            chosen = torch.nonzero(mask).squeeze(1)
            scales = self.scales[chosen]
            noise = torch.randn((2, chosen.numel(), 3), generator=generator, dtype=scales.dtype, device=scales.device)
            rotation = quaternion_to_rotation(self.rotations[chosen])
            offsets = ((noise * scales)[..., None, :] * rotation).sum(dim=-1)
            children = {
                "positions": (self.positions[chosen] + offsets).reshape(-1, 3),
                "scales": scales_to_raw(scales / SPLIT_SCALE_DIVISOR, self.scale_bounds).repeat(2, 1),
                "rotations": self._params["rotations"][chosen].repeat(2, 1),
                "densities": inverse_softplus(self.densities[chosen] * density_factor).repeat(2),
            }
            kept = torch.nonzero(~mask).squeeze(1)
            new = {name: torch.cat([self._params[name][kept], children[name]]) for name in PARAMETER_NAMES}
            self._replace(new, kept, optimizer)

    def prune(self, mask: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Remove the masked Gaussians."""
        with torch.no_grad():
            kept = torch.nonzero(~mask).squeeze(1)
            self._replace({name: value[kept] for name, value in self._params.items()}, kept, optimizer)

    def _replace(
        self, new: dict[str, torch.Tensor], kept: torch.Tensor, optimizer: torch.optim.Optimizer | None
    ) -> None:
        """Install new parameter tensors whose first ``len(kept)`` rows continue the old rows
        ``kept`` (statistics and optimizer state follow them; added rows start at zero)."""
        count = int(new["positions"].shape[0])
        for name, values in new.items():
            param = nn.Parameter(values.detach().clone())
            if optimizer is not None:
                _swap_in_optimizer(optimizer, self._params[name], param, kept)
            self._params[name] = param
        self._grad_sum = _reindex(self._grad_sum, kept, count)
        self._grad_count = _reindex(self._grad_count, kept, count)
