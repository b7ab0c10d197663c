"""Reconstruction settings: R^2-Gaussian's recipe as the default, and named presets.

Settings nest by owner: the densification strategy's are its own dataclass
(``gaussians.densification.DensificationStrategy``), the final SART + TV passes' are
:class:`FinalPasses`, the pose refinement's ``pose_refinement.PoseRefinement``;
``ReconstructionConfig`` holds one of each beside the training's own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ixgs_engine.gaussians.densification import DensificationStrategy
from ixgs_engine.reconstruct.pose_refinement import PoseRefinement
from ixgs_engine.reconstruct.presets import DEFAULT_PRESET, PRESET_SUMMARIES


@dataclass(frozen=True)
class FinalPasses:
    """The SART passes over the full-resolution views after the training, started from the
    voxelized Gaussians, each followed by ``tv_steps`` TV descent steps of ``tv_step`` times the
    pass's change (ASD-POCS, ``reconstruct/final_passes.py``); they restore detail the views
    measure that a short training leaves blurred. ``passes`` 0: the volume is the Gaussians alone.
    ``projector`` "rtk": RTK's SART does the passes' projections (itk-rtk, C++ and multi-threaded:
    about 10x ours on a 2-core CPU) where they run on the ROI alone; a truncated patient's passes,
    which solve a shell around the ROI too, stay ours: ``ours_passes`` of them (and TV step
    ``ours_tv_step``) when given, else as many as RTK's."""

    passes: int = 0
    relaxation: float = 0.8
    tv_steps: int = 10
    tv_step: float = 0.2
    # Each ray's residual is divided by at least this many voxel sizes (``classical.sart.sart``):
    # poses slightly off (real C-arms) otherwise put huge values into the box's corners. Ours
    # only: RTK's SART divides by the ray's length in the grid, and the ceiling bounds its corners.
    min_ray_voxels: float = 4.0
    # The line-integral ceiling (``classical.ceiling``) on every voxel written, passes or none:
    # no voxel holds more than the views' line integrals through it allow.
    ceiling: bool = True
    projector: str = "ours"  # "ours" (torch, any device) or "rtk" (itk-rtk, the CPU)
    ours_passes: int | None = None
    ours_tv_step: float | None = None

    def __post_init__(self) -> None:
        if self.projector not in ("ours", "rtk"):
            raise ValueError(f"the final passes' projector must be 'ours' or 'rtk', got {self.projector!r}")
        if self.passes < 0 or (self.ours_passes is not None and self.ours_passes < 0):
            raise ValueError(f"final passes must be 0 or more, got {self.passes} (ours: {self.ours_passes})")
        if self.ours_tv_step is not None and not self.ours_tv_step >= 0:
            raise ValueError(f"the final passes' ours_tv_step must be 0 or more, got {self.ours_tv_step}")
        if not 0 < self.relaxation <= 2:
            raise ValueError(f"the final passes' relaxation must be in (0, 2], got {self.relaxation}")
        if self.tv_steps < 0 or not self.tv_step >= 0:
            raise ValueError(
                f"the final passes' tv_steps and tv_step must be 0 or more, got {self.tv_steps}, {self.tv_step}"
            )
        if not self.min_ray_voxels >= 0:
            raise ValueError(f"the final passes' min_ray_voxels must be 0 or more, got {self.min_ray_voxels}")


# The flat names of settings that now nest (checkpoints and summaries written before), by group.
_FLAT_NAMES = {
    "densify_from": ("densification", "start"),
    "densify_until": ("densification", "stop"),
    "densify_interval": ("densification", "interval"),
    "densify_grad_threshold": ("densification", "grad_threshold"),
    "max_gaussians": ("densification", "max_gaussians"),
    "prune_min_density": ("densification", "min_density"),
    "final_sart_passes": ("final_passes", "passes"),
    "final_sart_relaxation": ("final_passes", "relaxation"),
    "final_tv_steps": ("final_passes", "tv_steps"),
    "final_tv_step": ("final_passes", "tv_step"),
}


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
    seed: int = 0
    checkpoint_every: int = 1000
    holdout_every: int = 0  # > 1: views k-1, 2k-1, ... are kept out of training, for evaluation
    densification: DensificationStrategy = field(default_factory=DensificationStrategy)
    final_passes: FinalPasses = field(default_factory=FinalPasses)
    poses: PoseRefinement = field(default_factory=PoseRefinement)

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
        if self.holdout_every == 1 or self.holdout_every < 0:
            raise ValueError(f"holdout_every must be 0 (no held-out views) or at least 2, got {self.holdout_every}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ReconstructionConfig:
        """The config ``to_dict`` wrote (flat names of settings that now nest, as checkpoints
        and summaries of earlier versions hold them, are read into their groups)."""
        values = dict(values)
        groups: dict[str, dict] = {
            name: dict(values.pop(name, {})) for name in ("densification", "final_passes", "poses")
        }
        for flat, (group, name) in _FLAT_NAMES.items():
            if flat in values:
                groups[group][name] = values.pop(flat)
        return _built(
            cls,
            {
                **values,
                "densification": _built(DensificationStrategy, groups["densification"]),
                "final_passes": _built(FinalPasses, groups["final_passes"]),
                "poses": _built(PoseRefinement, groups["poses"]),
            },
        )


def _built(kind: type, values: Mapping[str, Any]):
    """``kind(**values)``, lists read back as tuples; an unknown name raises ValueError."""
    unknown = set(values) - {f.name for f in fields(kind)}
    if unknown:
        raise ValueError(f"unknown reconstruction settings: {', '.join(sorted(unknown))}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def with_settings(config: ReconstructionConfig, overrides: Mapping[str, Any]) -> ReconstructionConfig:
    """``config`` with some settings changed: top-level names, or ``group.name`` for a nested
    setting (``final_passes.passes``, ``densification.max_gaussians``); None values are ignored."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        group, dot, setting = name.partition(".")
        if dot:
            nested.setdefault(group, {})[setting] = value
        else:
            top[name] = value
    for group, settings in nested.items():
        current = getattr(config, group, None)
        if not is_dataclass(current):
            raise ValueError(f"unknown settings group {group!r} in {', '.join(f'{group}.{n}' for n in settings)}")
        top[group] = replace(current, **settings)
    return replace(config, **top)


_FAST = ReconstructionConfig(
    iterations=800,
    views_per_step=2,
    image_scale=0.5,
    init="volume",
    num_gaussians=12_000,
    tv_size=24,
    densification=DensificationStrategy(start=200, stop=550, interval=100, max_gaussians=30_000),
    lr_positions=(1e-3, 1e-4),
    lr_densities=(2e-2, 2e-3),
    lr_scales=(1e-2, 1e-3),
    lr_rotations=(2e-3, 2e-4),
    checkpoint_every=250,
)


def rtk_installed() -> bool:
    """Whether itk-rtk (the ``rtk`` extra) is installed, without importing it (slow)."""
    try:
        version("itk-rtk")
    except PackageNotFoundError:
        return False
    return True


# The CPU's final passes: with RTK installed, 30 of RTK's at TV step 0.4, the settings of the RTK
# ASD-POCS bar (benchmarks/results/suite_anchor_tuning.json), in about the time 3 of ours take;
# without it, and for a truncated patient (our passes solve a shell), 12 of ours at TV step 0.2
# (benchmarks/results/real_ct.md, suite.md).
_OURS_ON_A_CPU = FinalPasses(passes=12)
CPU_FINAL_PASSES = (
    FinalPasses(passes=30, tv_step=0.4, projector="rtk", ours_passes=12, ours_tv_step=0.2)
    if rtk_installed()
    else _OURS_ON_A_CPU
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
        densification=DensificationStrategy(start=100, stop=250, interval=50, max_gaussians=100_000),
        final_passes=CPU_FINAL_PASSES,
    ),
}
if set(PRESETS) != set(PRESET_SUMMARIES) - {DEFAULT_PRESET}:  # the names are presets.py's
    raise ImportError(f"config.PRESETS {sorted(PRESETS)} must be the presets named in presets.py")


def preset(name: str, **overrides) -> ReconstructionConfig:
    """A named preset with some settings changed (see :func:`with_settings`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return with_settings(PRESETS[name], overrides)
