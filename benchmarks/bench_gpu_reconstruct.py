"""End-to-end GPU benchmark: time-to-quality of a 25-view 256² arbitrary-pose scan reconstructed
to a 128³ volume, with the Triton render backend and with the torch reference backend, same
settings, same process, same GPU.

    python benchmarks/bench_gpu_reconstruct.py         # on a CUDA GPU

The scan is bench_reconstruct.py's (spine phantom, 128³ here, RTK-projected at 25 random C-arm
poses onto a 256² panel), reconstructed through the engine's entry point (``reconstruct_scan``)
once per backend (``IXGS_RENDER_BACKEND``), scored every ``--eval-every`` iterations on the
ground-truth grid (scoring time excluded). Reported per backend: final PSNR / SSIM, wall time,
peak GPU memory and the time to reach the target PSNR (``--target-psnr``, else the torch run's
final PSNR minus ``--target-margin`` dB); the goal of issue 4 is <= 30 s with Triton at no loss
of quality. Writes ``results/gpu-reconstruct-<...>.json`` and rows of ``results/gpu-reconstruct.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_reconstruct import (
    QualityTrace,
    describe_reach,
    first_reaching,
    parse_overrides,
    train_ixgs,
    write_benchmark_scan,
)
from common import (
    PANEL_MM,
    RESULTS,
    host_description,
    load_average,
    save_results,
    set_threads,
    simulate_spine_scan,
    utc_now,
)

from ixgs_engine.reconstruct.config import PRESETS, preset
from ixgs_engine.render.backend import BACKEND_VARIABLE

TABLE_HEAD = (
    "# GPU reconstruction: Triton vs torch render backend (25-view arbitrary-pose scan)\n\n"
    "Same settings and GPU for both backends; times exclude the mid-run scoring and include reading the scan, "
    'the initialization and the final voxelization. "to target": first scored time at or above the target PSNR.\n\n'
    "| date (UTC) | device | volume | detector | views | preset (iterations) | backend | PSNR / SSIM | wall s "
    "| target PSNR | to target | peak GPU MiB |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="phantom voxels along each axis (192 mm field of view)")
    parser.add_argument("--detector", type=int, default=256, help="detector pixels along each axis (square)")
    parser.add_argument("--views", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random C-arm poses")
    parser.add_argument("--panel-mm", type=float, default=PANEL_MM, help="detector width and height (mm)")
    parser.add_argument("--preset", default="quality", choices=sorted(PRESETS), help="reconstruction preset")
    parser.add_argument("--iterations", type=int, help="iterations (default: the preset's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one reconstruction setting (repeatable), e.g. --set views_per_step=4",
    )
    parser.add_argument("--backends", nargs="+", default=["triton", "torch"], choices=("triton", "torch"))
    parser.add_argument("--eval-every", type=int, default=250, help="score every N iterations (and at the end)")
    parser.add_argument("--target-psnr", type=float, help="PSNR (dB) for time-to-quality")
    parser.add_argument(
        "--target-margin", type=float, default=0.1, help="default target: the torch run's final PSNR minus this (dB)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch and ITK/RTK (default: all cores)")
    parser.add_argument("--workdir", type=Path, help="keep the scan and the reconstructions here")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    args = parser.parse_args()
    if args.target_psnr is None and "torch" not in args.backends:
        parser.error("without the torch run, give --target-psnr")
    return args


def run_backend(name: str, scan_dir: Path, output_dir: Path, config, truth, eval_every: int) -> dict:
    """One reconstruction with render backend ``name``: its quality curve, wall time and peak memory."""
    os.environ[BACKEND_VARIABLE] = name
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trace = QualityTrace(truth, eval_every)
    trace.start()
    started = time.perf_counter()
    train_ixgs(scan_dir, output_dir, config, torch.device("cuda"), trace)
    wall = time.perf_counter() - started - trace.evaluation_s
    final = trace.points[-1]
    return {
        "psnr_db": final["psnr_db"],
        "ssim": final["ssim"],
        "seconds": wall,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20,
        "curve": trace.points,
    }


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu_reconstruct.py needs a CUDA GPU (bench_reconstruct.py runs on a CPU)")
    itk_threads = set_threads(args.threads)
    config = preset(args.preset, iterations=args.iterations, **parse_overrides(args.set))
    scan = simulate_spine_scan(args.size, args.detector, args.views, args.seed, args.panel_mm)
    load_at_start = load_average()
    previous = os.environ.get(BACKEND_VARIABLE)
    runs: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-gpu-reconstruct-") as temporary:
            workdir = args.workdir or Path(temporary)
            scan_dir = write_benchmark_scan(workdir / "scan", scan)
            for name in args.backends:
                print(f"--- render backend {name}", flush=True)
                runs[name] = run_backend(name, scan_dir, workdir / name, config, scan.phantom, args.eval_every)
    finally:
        if previous is None:
            os.environ.pop(BACKEND_VARIABLE, None)
        else:
            os.environ[BACKEND_VARIABLE] = previous

    target = args.target_psnr if args.target_psnr is not None else runs["torch"]["psnr_db"] - args.target_margin
    for name, run in runs.items():
        run["to_target"] = first_reaching(run["curve"], "psnr_db", target - 1e-9)
        print(
            f"{name:6s} PSNR {run['psnr_db']:6.2f} dB  SSIM {run['ssim']:.4f}  {run['seconds']:7.1f} s  "
            f"peak {run['peak_gpu_mib']:.0f} MiB  to {target:.2f} dB: {describe_reach(run['to_target'])}"
        )
    if {"triton", "torch"} <= runs.keys():
        print(
            f"triton / torch wall time: {runs['triton']['seconds'] / runs['torch']['seconds']:.2f}, "
            f"PSNR difference {runs['triton']['psnr_db'] - runs['torch']['psnr_db']:+.2f} dB"
        )

    record = {
        "benchmark": "gpu-reconstruct",
        "date_utc": utc_now(),
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("output", "workdir")},
            "iterations": config.iterations,
            "reconstruction": config.to_dict(),
            "entry_point": "ixgs_engine.reconstruct.pipeline.reconstruct_scan",
        },
        "host": {**host_description("cuda", itk_threads, load_at_start), "load_average_at_end": load_average()},
        "target_psnr_db": target,
        "runs": runs,
    }
    host = record["host"]
    settings = f"{args.preset}{' + ' + ', '.join(args.set) if args.set else ''} ({config.iterations})"
    rows = "".join(
        f"| {record['date_utc']} | {host['device_name']} | {args.size}³ | {args.detector}² | {args.views} | {settings} "
        f"| {name} | {run['psnr_db']:.2f} / {run['ssim']:.4f} | {run['seconds']:.1f} | {target:.2f} "
        f"| {describe_reach(run['to_target'])} | {run['peak_gpu_mib']:.0f} |\n"
        for name, run in runs.items()
    )
    stem = f"gpu-reconstruct-{args.size}-{args.detector}-{args.views}v-{args.preset}-{config.iterations}it"
    save_results(args.output, stem, record, "gpu-reconstruct.md", TABLE_HEAD, rows)


if __name__ == "__main__":
    main()
