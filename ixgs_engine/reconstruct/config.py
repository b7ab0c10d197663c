"""Reconstruction settings: R^2-Gaussian's recipe as the default, and named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class ReconstructionConfig:
    """Every knob of a reconstruction. Learning rates decay exponentially from the first to
    the second value over the run. Densities are per normalized length unit."""

    iterations: int = 30_000
    views_per_step: int = 1
    image_scale: float = 1.0  # < 1 trains on block-averaged (downsampled) projections
    init: str = "random"  # "random" (the IXGS paper's) or "volume" (a few SART iterations)
    num_gaussians: int = 50_000
    init_sart_iterations: int = 2
    init_grid_size: int = 64
    lr_positions: tuple[float, float] = (2e-4, 2e-5)
    lr_densities: tuple[float, float] = (1e-2, 1e-3)
    lr_scales: tuple[float, float] = (5e-3, 5e-4)
    lr_rotations: tuple[float, float] = (1e-3, 1e-4)
    lambda_dssim: float = 0.25
    lambda_tv: float = 0.05
    tv_size: int = 32
    tv_grid_size: int = 128  # voxels across the ROI's longest side for the TV sub-volumes
    densify_from: int = 500
    densify_until: int = 15_000
    densify_interval: int = 100
    densify_grad_threshold: float = 5e-5
    max_gaussians: int = 500_000
    prune_min_density: float = 1e-5
    seed: int = 0
    checkpoint_every: int = 1000
    holdout_every: int = 0  # > 1: views k-1, 2k-1, ... are kept out of training, for evaluation

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.views_per_step < 1 or self.num_gaussians < 1:
            raise ValueError("iterations, views_per_step and num_gaussians must be at least 1")
        if self.init not in ("random", "volume"):
            raise ValueError(f"init must be 'random' or 'volume', got {self.init!r}")
        if not 0 < self.image_scale <= 1:
            raise ValueError(f"image_scale must be in (0, 1], got {self.image_scale}")
        if self.holdout_every == 1 or self.holdout_every < 0:
            raise ValueError(f"holdout_every must be 0 (no held-out views) or at least 2, got {self.holdout_every}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ReconstructionConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown reconstruction settings: {', '.join(sorted(unknown))}")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**converted)


PRESETS: dict[str, ReconstructionConfig] = {
    # R^2-Gaussian's published recipe (one view a step, 30k steps), random initialization.
    "default": ReconstructionConfig(),
    # A GPU-length run from a SART start with two views a step.
    "quality": ReconstructionConfig(init="volume", views_per_step=2, iterations=30_000),
    # Minutes on a laptop CPU: half-resolution views, a SART start, a shorter schedule.
    "fast": ReconstructionConfig(
        iterations=800,
        views_per_step=2,
        image_scale=0.5,
        init="volume",
        num_gaussians=12_000,
        tv_size=24,
        densify_from=200,
        densify_until=550,
        densify_interval=100,
        max_gaussians=30_000,
        lr_positions=(1e-3, 1e-4),
        lr_densities=(2e-2, 2e-3),
        lr_scales=(1e-2, 1e-3),
        lr_rotations=(2e-3, 2e-4),
        checkpoint_every=250,
    ),
}


def preset(name: str, **overrides) -> ReconstructionConfig:
    """A named preset with some settings changed (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
