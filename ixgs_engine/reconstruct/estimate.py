"""How long a reconstruction will take, before it starts: a cost model whose constants were
measured with ``benchmarks/bench_real_ct.py`` (the 25-view chest case, 2 CPU cores).

A training step renders ``views_per_step`` views (forward and backward) and one TV block.
Measured on the CPU, a rendered view costs about ``SECONDS_PER_VIEW`` at 96 x 96 pixels and
30k Gaussians, growing with the pixels as ``pixels^0.88`` and only weakly with the number of
Gaussians (more Gaussians are smaller, so their footprints shrink): ``N^0.2``. The estimate is
an order of magnitude for the first log line and ``summary.json``, not a promise: other CPUs
differ by 2-3x, and the CUDA constants are R^2-Gaussian's published timings, not measured here.

The SART passes after the training cost a forward and a back projection of every view: about
``SART_SECONDS_PER_SAMPLE`` per ray sample (pixels x the output grid's longest side). Measured:
46 s a pass for 25 views of 192² pixels and 128³ voxels on a run of the same 2-core machine
type whose training was 2.7x slower than the one the constants above come from; scaled by that.
The CUDA value assumes the same speed-up as a rendered view's. RTK's passes (``projector`` "rtk",
on the CPU whatever the device) measured 2.1 s a pass on that case (2 cores), after about
``RTK_START_SECONDS`` of loading itk-rtk and setting up its geometry.
"""

from __future__ import annotations

from ixgs_engine.reconstruct.config import ReconstructionConfig

SECONDS_PER_VIEW = {"cpu": 0.13, "cuda": 0.01}
SECONDS_PER_STEP = {"cpu": 0.05, "cuda": 0.005}  # TV block, loss, optimizer
INITIALIZATION_SECONDS = {"cpu": 20.0, "cuda": 3.0}
SART_SECONDS_PER_SAMPLE = {"cpu": 1.45e-7, "cuda": 1.1e-8}
RTK_SART_SECONDS_PER_SAMPLE = 1.8e-8
RTK_START_SECONDS = 16.0
REFERENCE_PIXELS = 96 * 96
REFERENCE_GAUSSIANS = 30_000


def _step_seconds(config: ReconstructionConfig, pixels: float, kind: str) -> float:
    gaussians = 0.5 * (config.num_gaussians + max(config.num_gaussians, config.densification.max_gaussians))
    per_view = SECONDS_PER_VIEW[kind] * (pixels / REFERENCE_PIXELS) ** 0.88 * (gaussians / REFERENCE_GAUSSIANS) ** 0.2
    return SECONDS_PER_STEP[kind] + config.views_per_step * per_view


def estimated_seconds(
    config: ReconstructionConfig,
    image_shape: tuple[int, int],
    device_type: str,
    views: int,
    output_shape: tuple[int, int, int],
) -> float:
    """Rough wall time (s) of a whole run of ``config`` on ``views`` views of ``image_shape``
    (full resolution) on a device of ``device_type`` (``cpu``, ``cuda``; others as ``cpu``),
    with an output grid of ``output_shape`` (what the SART passes after the training work on)."""
    kind = device_type if device_type in SECONDS_PER_VIEW else "cpu"
    full = float(image_shape[0] * image_shape[1])
    scaled = full * config.image_scale**2
    pyramid = config.image_scale < 1 and config.coarse_iterations > 0
    coarse_steps = min(config.coarse_iterations, config.iterations) if pyramid else config.iterations
    fine_steps = config.iterations - coarse_steps
    passes = config.final_passes
    by_rtk = passes.projector == "rtk" and passes.passes > 0
    per_sample = RTK_SART_SECONDS_PER_SAMPLE if by_rtk else SART_SECONDS_PER_SAMPLE[kind]
    return (
        INITIALIZATION_SECONDS[kind]
        + coarse_steps * _step_seconds(config, scaled, kind)
        + fine_steps * _step_seconds(config, full, kind)
        + (RTK_START_SECONDS if by_rtk else 0.0)
        + passes.passes * views * full * max(output_shape) * per_sample
    )


def describe_duration(seconds: float) -> str:
    """``45 s``, ``8 min`` or ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
