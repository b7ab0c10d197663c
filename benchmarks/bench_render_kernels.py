"""Benchmark the Triton render backend against the torch reference on the same GPU: forward and
forward + backward time and peak GPU memory of ``render`` (10k / 100k / 500k Gaussians, 256² and
512² views) and ``voxelize`` (the full 128³ grid and a 32³ TV sub-volume), with the largest
difference between the two backends' outputs as a check.

    python benchmarks/bench_render_kernels.py          # on a CUDA GPU, about a minute

The scene is training-like: Gaussians filling the central 80 % of the normalized box, sized like
a random initialization's neighbours (scale about the mean spacing, anisotropic, rotated), seen by
C-arm views of that box. Writes ``results/render-kernels-<device>-<date>.json`` and rows of
``results/render-kernels.md``. A smoke test on a CPU runs the kernels in Triton's interpreter:
``TRITON_INTERPRET=1 python benchmarks/bench_render_kernels.py --device cpu --counts 300 --sizes 32 --grids 12 8
--repeats 1 --output /tmp/smoke``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, device_name, save_results, utc_now

from ixgs_engine.gaussians import GaussianModel
from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.geometry.normalization import SceneNormalization
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.render.backend import RenderBackend, get_backend
from ixgs_engine.volume import VolumeGrid

ROI_MM = 200.0
TABLE_HEAD = (
    "# Render kernels: Triton vs torch backend (same GPU, same process)\n\n"
    "Median wall time of forward and forward + backward (gradients w.r.t. means, covariances, densities; "
    "screen offsets too for render), peak GPU memory above the inputs, largest output difference relative "
    "to the largest value.\n\n"
    "| date (UTC) | device | op | Gaussians | grid | torch fwd ms | triton fwd ms | torch fwd+bwd ms "
    "| triton fwd+bwd ms | speed-up fwd+bwd | torch peak MiB | triton peak MiB | max rel diff |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with TRITON_INTERPRET=1: smoke test)")
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000, 500_000], help="Gaussian counts")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square view sizes (pixels)")
    parser.add_argument("--views", type=int, default=2, help="views rendered together (views per step)")
    parser.add_argument("--grids", type=int, nargs="+", default=[128, 32], help="cubic voxel grids (full, TV block)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (Triton compiles on the first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    return parser.parse_args()


def training_like_scene(count: int, seed: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Means and densities (float32) and covariances (float64), as the trainer passes them."""
    generator = torch.Generator().manual_seed(seed)
    spacing = 1.6 / count ** (1.0 / 3.0)
    positions = torch.rand(count, 3, generator=generator, dtype=torch.float64) * 1.6 - 0.8
    scales = spacing * torch.exp(0.3 * torch.randn(count, 3, generator=generator, dtype=torch.float64))
    rotations = torch.randn(count, 4, generator=generator, dtype=torch.float64)
    densities = 0.05 + 0.2 * torch.rand(count, generator=generator, dtype=torch.float64)
    model = GaussianModel.from_values(positions, scales, rotations, densities, dtype=torch.float64)
    with torch.no_grad():
        return (
            model.positions.float().to(device),
            model.covariances().to(device),
            model.densities.float().to(device),
        )


def carm_views(views: int, size: int, seed: int) -> torch.Tensor:
    """``views`` C-arm matrices (random angles) whose ``size``² detector covers the ROI, on normalized points."""
    rng = np.random.default_rng(seed)
    normalization = SceneNormalization.from_roi(ROI(center=[0.0, 0.0, 0.0], size=[ROI_MM] * 3))
    pixel_mm = 1.6 * ROI_MM / size  # the ROI's shadow (magnification 1.6) fills the panel
    detector = Detector((size, size), (pixel_mm, pixel_mm))
    matrices = [
        carm_projection_matrix(rng.uniform(-100, 100), rng.uniform(-35, 35), 750.0, 1200.0, detector)
        for _ in range(views)
    ]
    return torch.tensor(np.stack([normalization.projection_to_normalized(P) for P in matrices]))


def measure(run: Callable[[bool], torch.Tensor], device: torch.device, repeats: int, warmup: int) -> dict:
    """Median forward and forward + backward milliseconds, peak memory above the current
    allocation (MiB, CUDA only), and the output of the last forward."""

    def timed(backward: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run(backward)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return 1e3 * (time.perf_counter() - start)

    for _ in range(warmup):
        run(True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    forward = statistics.median(timed(False) for _ in range(repeats))
    both = statistics.median(timed(True) for _ in range(repeats))
    peak = (torch.cuda.max_memory_allocated(device) - baseline) / 2**20 if device.type == "cuda" else math.nan
    return {"forward_ms": forward, "forward_backward_ms": both, "peak_mib": peak, "output": run(False)}


def render_case(
    backend: RenderBackend, scene: tuple, matrices: torch.Tensor, size: int
) -> Callable[[bool], torch.Tensor]:
    means, covariances, densities = scene
    leaves = [t.detach().requires_grad_() for t in (means, covariances, densities)]
    offsets = torch.zeros(matrices.shape[0], means.shape[0], 2, dtype=torch.float64, device=means.device)
    weights = torch.rand(matrices.shape[0], size, size, generator=torch.Generator().manual_seed(1)).to(means.device)

    def run(backward: bool) -> torch.Tensor:
        screen = offsets.clone().requires_grad_(backward)
        images = backend.render(*leaves, matrices, (size, size), screen)
        if backward:
            torch.autograd.grad((images * weights).sum(), [*leaves, screen])
        return images.detach()

    return run


def voxelize_case(backend: RenderBackend, scene: tuple, grid: VolumeGrid) -> Callable[[bool], torch.Tensor]:
    leaves = [t.detach().requires_grad_() for t in scene]
    weights = torch.rand(grid.shape, generator=torch.Generator().manual_seed(2)).to(scene[0].device)

    def run(backward: bool) -> torch.Tensor:
        volume = backend.voxelize(*leaves, grid)
        if backward:
            torch.autograd.grad((volume * weights).sum(), leaves)
        return volume.detach()

    return run


def compare(op: str, count: int, grid: str, make: Callable, backends: dict, device, args) -> dict:
    """Both backends on one case: times, memory, their largest difference; prints a line."""
    result = {key: measure(make(backend), device, args.repeats, args.warmup) for key, backend in backends.items()}
    reference, fast = result["torch"].pop("output"), result["triton"].pop("output")
    difference = float((fast - reference).abs().max() / reference.abs().max().clamp_min(1e-30))
    speedup = result["torch"]["forward_backward_ms"] / result["triton"]["forward_backward_ms"]
    print(
        f"{op:16s} {count:>7d} {grid:>5s}  torch {result['torch']['forward_backward_ms']:9.2f} ms  "
        f"triton {result['triton']['forward_backward_ms']:9.2f} ms  x{speedup:.1f}  peak "
        f"{result['torch']['peak_mib']:.0f} / {result['triton']['peak_mib']:.0f} MiB  diff {difference:.1e}",
        flush=True,
    )
    return {
        "op": op,
        "gaussians": count,
        "grid": grid,
        **result,
        "speedup_forward_backward": speedup,
        "max_relative_difference": difference,
    }


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    backends = {name: get_backend(name) for name in ("torch", "triton")}
    date = utc_now()
    name = device_name(str(device))
    cases = []
    for count in args.counts:
        scene = training_like_scene(count, args.seed, device)
        for size in args.sizes:
            matrices = carm_views(args.views, size, args.seed).to(device)
            make = functools.partial(render_case, scene=scene, matrices=matrices, size=size)
            cases.append(compare(f"render {args.views} views", count, f"{size}²", make, backends, device, args))
        for side in args.grids:
            step = 1.6 / side
            grid = VolumeGrid((side,) * 3, origin=np.full(3, -0.8 + step / 2), spacing=np.full(3, step))
            make = functools.partial(voxelize_case, scene=scene, grid=grid)
            cases.append(compare("voxelize", count, f"{side}³", make, backends, device, args))
    record = {
        "benchmark": "render-kernels",
        "date_utc": date,
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "host": {
            "device": str(device),
            "device_name": name,
            "torch": torch.__version__,
            "triton": importlib.metadata.version("triton"),
            "cuda": torch.version.cuda,
        },
        "cases": cases,
    }
    rows = "".join(
        f"| {date} | {name} | {c['op']} | {c['gaussians']} | {c['grid']} "
        f"| {c['torch']['forward_ms']:.2f} | {c['triton']['forward_ms']:.2f} "
        f"| {c['torch']['forward_backward_ms']:.2f} | {c['triton']['forward_backward_ms']:.2f} "
        f"| {c['speedup_forward_backward']:.1f} | {c['torch']['peak_mib']:.0f} | {c['triton']['peak_mib']:.0f} "
        f"| {c['max_relative_difference']:.1e} |\n"
        for c in cases
    )
    save_results(args.output, f"render-kernels-{device.type}", record, "render-kernels.md", TABLE_HEAD, rows)


if __name__ == "__main__":
    main()
