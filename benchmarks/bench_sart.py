"""Benchmark our SART against RTK's SART on a simulated arbitrary-pose scan of the spine phantom.

The scan is projected by RTK's Joseph projector, so our projector is not grading itself. Both
SARTs run in this process with the same views, iterations, relaxation and subsets; the script
prints 3-D PSNR/SSIM (R²-Gaussian's conventions, see ixgs_engine.evaluate.metrics) and wall
times, and writes a JSON record and a markdown table row to benchmarks/results/.

    python benchmarks/bench_sart.py --size 128 --detector 256 --views 25 --iterations 10
"""

from __future__ import annotations

import argparse

import torch
from common import (
    add_scan_and_sart_arguments,
    host_description,
    load_average,
    save_results,
    set_threads,
    simulate_spine_scan,
    timed,
    utc_now,
)

from ixgs_engine.classical.rtk import rtk_sart
from ixgs_engine.classical.sart import sart
from ixgs_engine.evaluate.metrics import psnr_3d, ssim_3d

TABLE_HEADER = (
    "| date (UTC) | device | volume | detector | views | iterations | ours PSNR / SSIM | RTK PSNR / SSIM "
    "| ours s (CPU s) | RTK s (CPU s) | ours / RTK time |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scan_and_sart_arguments(parser, size=128, detector=256)
    parser.add_argument("--iterations", type=int, default=10, help="full passes over the views, both SARTs")
    parser.add_argument("--device", default="cpu", help="torch device of our SART (RTK runs on the CPU)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    itk_threads = set_threads(args.threads)
    scan = simulate_spine_scan(args.size, args.detector, args.views, args.seed)
    phantom, matrices, projections = scan.phantom, scan.matrices, scan.projections
    options = {
        "iterations": args.iterations,
        "relaxation": args.relaxation,
        "views_per_subset": args.views_per_subset,
        "positivity": True,
    }
    load_at_start = load_average()
    ours, ours_s, ours_cpu = timed(lambda: sart(projections, matrices, phantom.grid, device=args.device, **options))
    rtk, rtk_s, rtk_cpu = timed(lambda: rtk_sart(projections, matrices, phantom.grid, **options))

    scores = {
        name: {
            "psnr_db": psnr_3d(volume, phantom),
            "ssim": ssim_3d(volume, phantom),
            "seconds": wall,
            "cpu_seconds": cpu,
        }
        for name, volume, wall, cpu in (("ours", ours, ours_s, ours_cpu), ("rtk", rtk, rtk_s, rtk_cpu))
    }
    record = {
        "benchmark": "sart",
        "date_utc": utc_now(),
        "config": {
            **{k: v for k, v in vars(args).items() if k != "output"},
            "voxel_mm": scan.voxel_mm,
            "pixel_mm": scan.pixel_mm,
            "simulated_by": "RTK Joseph forward projector",
        },
        "host": host_description(args.device, itk_threads, load_at_start),
        "results": scores,
        "ours_over_rtk_time": ours_s / rtk_s,
        "ours_over_rtk_cpu_time": ours_cpu / rtk_cpu,
        "ours_minus_rtk_psnr_db": scores["ours"]["psnr_db"] - scores["rtk"]["psnr_db"],
    }
    for name, score in scores.items():
        print(
            f"{name:5s} PSNR {score['psnr_db']:6.2f} dB  SSIM {score['ssim']:.4f}  "
            f"{score['seconds']:8.2f} s wall  {score['cpu_seconds']:8.2f} s CPU"
        )
    print(
        f"ours/RTK time {record['ours_over_rtk_time']:.2f}x, PSNR difference {record['ours_minus_rtk_psnr_db']:+.2f} dB"
    )

    o, r = scores["ours"], scores["rtk"]
    row = (
        f"| {record['date_utc']} | {record['host']['device_name']} "
        f"({args.device}, threads={torch.get_num_threads()}) "
        f"| {args.size}³ | {args.detector}² | {args.views} | {args.iterations} "
        f"| {o['psnr_db']:.2f} / {o['ssim']:.4f} | {r['psnr_db']:.2f} / {r['ssim']:.4f} "
        f"| {o['seconds']:.1f} ({o['cpu_seconds']:.1f}) | {r['seconds']:.1f} ({r['cpu_seconds']:.1f}) "
        f"| {record['ours_over_rtk_time']:.2f} |\n"
    )
    stem = f"sart-{args.size}-{args.detector}-{args.views}v-{args.iterations}it-{args.device}"
    head = "# SART: ours vs RTK (spine phantom, arbitrary C-arm poses)\n\n" + TABLE_HEADER
    save_results(args.output, stem, record, "sart.md", head, row)


if __name__ == "__main__":
    main()
