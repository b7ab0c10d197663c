"""Radiative Gaussians in the normalized scene [-1, 1]^3: parameters and activations,
initialization, and the file format.

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


class GaussianModel:
    """Leaf tensors (``nn.Parameter``) of N Gaussians, their activations and file format
    (densification, which changes their number, is ``densification.py``)."""

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

    def replace_parameters(self, values: Mapping[str, torch.Tensor]) -> dict[str, nn.Parameter]:
        """Install new raw values (any number of Gaussians) as new leaf tensors and return the
        previous ones, so the caller can move an optimizer's state from old to new."""
        if set(values) != set(PARAMETER_NAMES):
            raise ValueError(f"replace_parameters needs exactly {PARAMETER_NAMES}, got {sorted(values)}")
        previous = dict(self._params)
        self._params = {name: nn.Parameter(values[name].detach().clone()) for name in PARAMETER_NAMES}
        return previous

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
