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
    # With image_scale < 1 and coarse_iterations > 0: a two-level pyramid, the downsampled views
    # for the first coarse_iterations steps, the full-resolution ones after (0: downsampled throughout).
    coarse_iterations: int = 0
    init: str = "random"  # "random" (the IXGS paper's) or "volume" (a few SART iterations)
    num_gaussians: int = 50_000
    init_sart_iterations: int = 2
    init_grid_size: int = 64  # SART start: voxels across the ROI's longest side (the domain at the same pitch)
    # The model's domain: the ROI grown by this factor per side. Every ray also crosses anatomy
    # outside the ROI (and a specimen's tissue reaches its faces); Gaussians there, coarser,
    # carry that attenuation where it is instead of piling it into (or cutting it from) the ROI.
    domain_scale: float = 2.5
    outside_share: float = 0.2  # share of the starting Gaussians outside the ROI
    refine_scale: float = 1.5  # Gaussians are cloned / split within the ROI grown by this factor
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
    # After training: SART passes over the full-resolution views started from the voxelized
    # Gaussians, each followed by TV descent steps (ASD-POCS, reconstruct/refinement.py); they
    # restore detail the views measure that a short training leaves blurred. 0: the volume is
    # the Gaussians alone. final_tv_step: each TV step's length over the pass's change.
    final_sart_passes: int = 0
    final_sart_relaxation: float = 0.8
    final_tv_steps: int = 10
    final_tv_step: float = 0.2

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.views_per_step < 1 or self.num_gaussians < 1:
            raise ValueError("iterations, views_per_step and num_gaussians must be at least 1")
        if self.init not in ("random", "volume"):
            raise ValueError(f"init must be 'random' or 'volume', got {self.init!r}")
        if self.coarse_iterations < 0:
            raise ValueError(f"coarse_iterations must be 0 or more, got {self.coarse_iterations}")
        if not 0 < self.image_scale <= 1:
            raise ValueError(f"image_scale must be in (0, 1], got {self.image_scale}")
        if not self.domain_scale >= 1:
            raise ValueError(f"domain_scale must be at least 1 (the ROI itself), got {self.domain_scale}")
        if not 1 <= self.refine_scale <= self.domain_scale:
            raise ValueError(f"refine_scale must be between 1 and domain_scale, got {self.refine_scale}")
        if not 0 <= self.outside_share < 1:
            raise ValueError(f"outside_share must be in [0, 1), got {self.outside_share}")
        if self.final_sart_passes < 0:
            raise ValueError(f"final_sart_passes must be 0 or more, got {self.final_sart_passes}")
        if not 0 < self.final_sart_relaxation <= 2:
            raise ValueError(f"final_sart_relaxation must be in (0, 2], got {self.final_sart_relaxation}")
        if self.final_tv_steps < 0 or not self.final_tv_step >= 0:
            raise ValueError(
                f"final_tv_steps and final_tv_step must be 0 or more, got {self.final_tv_steps}, {self.final_tv_step}"
            )
        if self.holdout_every == 1 or self.holdout_every < 0:
            raise ValueError(f"holdout_every must be 0 (no held-out views) or at least 2, got {self.holdout_every}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ReconstructionConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown reconstruction settings: {', '.join(sorted(unknown))}")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**converted)


_FAST = ReconstructionConfig(
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
)

PRESETS: dict[str, ReconstructionConfig] = {
    # R^2-Gaussian's published recipe (one view a step, 30k steps), random initialization.
    "default": ReconstructionConfig(),
    # A GPU-length run from a SART start with two views a step.
    "quality": ReconstructionConfig(init="volume", views_per_step=2, iterations=30_000),
    # Minutes on a laptop CPU: half-resolution views, a SART start, a shorter schedule (the demo's).
    "fast": _FAST,
    # The default on a CPU (``auto``), tuned on DRRs of a real chest CT (benchmarks/bench_real_ct.py):
    # more Gaussians (cheap: they get smaller), a short training on half-resolution views (its
    # PSNR curve flattens after ~300 steps), then SART + TV passes over the full-resolution views
    # from the Gaussians' volume (12 passes after 300 steps beat 6 after 800, in a third of the
    # time; see benchmarks/results/real_ct.md).
    "cpu": replace(
        _FAST,
        num_gaussians=40_000,
        iterations=300,
        densify_from=100,
        densify_until=250,
        densify_interval=50,
        max_gaussians=100_000,
        final_sart_passes=12,
    ),
}


# What a plain ``ixgs reconstruct`` runs: the preset that fits the device (resolve_preset).
DEFAULT_PRESET = "auto"
DEVICE_PRESETS = {"cpu": "cpu", "cuda": "default"}
# One line per preset name, for the command line's help and the Slicer module's tooltip.
PRESET_SUMMARIES = {
    DEFAULT_PRESET: "cpu on a CPU, default on a CUDA GPU",
    "cpu": "minutes on a CPU (tuned on a real CT)",
    "fast": "the demo's, a few minutes",
    "default": "R2-Gaussian's recipe",
    "quality": "SART start + 2 views a step, for a GPU",
}


def resolve_preset(name: str, device) -> str:
    """``auto`` becomes the preset for the device's type (``cpu`` on a CPU, R^2-Gaussian's full
    recipe on a CUDA GPU, ``cpu`` elsewhere); any other name is returned as is."""
    if name != DEFAULT_PRESET:
        return name
    return DEVICE_PRESETS.get(getattr(device, "type", str(device)), "cpu")


def preset(name: str, **overrides) -> ReconstructionConfig:
    """A named preset with some settings changed (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
