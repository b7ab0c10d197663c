"""Settings of the tiny reconstructions several test files run, kept in one place so that the
runs they compare (an interrupted run against an uninterrupted one, a report against its
evaluation) are made the same way."""

from ixgs_engine.gaussians.densification import DensificationStrategy
from ixgs_engine.reconstruct.config import ReconstructionConfig

TINY = ReconstructionConfig(
    iterations=24,
    views_per_step=2,
    init="random",
    num_gaussians=400,
    tv_size=8,
    tv_grid_size=24,
    densification=DensificationStrategy(start=8, stop=16, interval=8, grad_threshold=1e-6),
    checkpoint_every=10,
)
"""A 24-step trainer config with densification and two periodic checkpoints."""

HOLDOUT_RUN = ["--preset", "fast", "--iterations", "20", "--gaussians", "400", "--holdout-every", "4"]
HOLDOUT_RUN += ["--voxel-size", "8", "--device", "cpu"]
"""``ixgs reconstruct`` options of a 20-step CPU run keeping every 4th view out of training."""
