"""Benchmark our SART against RTK's SART on a simulated arbitrary-pose scan of the spine phantom.

The scan is projected by RTK's Joseph projector, so our projector is not grading itself. Both
SARTs run in this process with the same views, iterations, relaxation and subsets; the script
prints 3-D PSNR/SSIM (R²-Gaussian's conventions, see ixgs_engine.evaluate.metrics) and wall
times, and writes a JSON record and a markdown table row to benchmarks/results/.

    python benchmarks/bench_sart.py --size 128 --detector 256 --views 25 --iterations 10
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ixgs_engine.evaluate.metrics import psnr_3d, ssim_3d
from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.phantoms import hu_to_attenuation, make_phantom
from ixgs_engine.projector.rtk_bridge import rtk_forward_project, rtk_sart
from ixgs_engine.projector.sart import sart
from ixgs_engine.volume import Volume

RESULTS = Path(__file__).resolve().parent / "results"
FIELD_OF_VIEW_MM = 192.0  # the spine phantom's reference field of view, whatever the grid size
PANEL_MM = 440.0  # wide enough that the whole torso is in every view
TABLE_HEADER = (
    "| date (UTC) | device | volume | detector | views | iterations | ours PSNR / SSIM | RTK PSNR / SSIM "
    "| ours s (CPU s) | RTK s (CPU s) | ours / RTK time |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="voxels along each axis (cube)")
    parser.add_argument("--detector", type=int, default=256, help="detector pixels along each axis (square)")
    parser.add_argument("--views", type=int, default=25)
    parser.add_argument("--iterations", type=int, default=10, help="full passes over the views, both SARTs")
    parser.add_argument("--relaxation", type=float, default=0.3, help="both SARTs (RTK's default)")
    parser.add_argument("--views-per-subset", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random C-arm poses")
    parser.add_argument("--device", default="cpu", help="torch device of our SART (RTK runs on the CPU)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and ITK/RTK (default: all cores)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    return parser.parse_args()


def arbitrary_poses(views: int, detector: Detector, seed: int) -> np.ndarray:
    """(views, 3, 4) C-arm matrices at random angles, distances and isocentre shifts."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            carm_projection_matrix(
                primary_deg=rng.uniform(-100.0, 100.0),
                secondary_deg=rng.uniform(-35.0, 35.0),
                source_to_isocenter=rng.uniform(650.0, 750.0),
                source_to_detector=rng.uniform(1000.0, 1200.0),
                detector=detector,
                isocenter=rng.uniform(-10.0, 10.0, 3),
            )
            for _ in range(views)
        ]
    )


def device_name(device: str) -> str:
    """The GPU's name for a CUDA device, else the CPU model."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def timed_reconstruction(run) -> tuple[Volume, float, float]:
    """The volume, wall seconds, and CPU seconds of this process (all threads): on a shared
    machine the CPU time is the less disturbed of the two."""
    wall, cpu = time.perf_counter(), time.process_time()
    volume = run()
    return volume, time.perf_counter() - wall, time.process_time() - cpu


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads in torch and in ITK/RTK (None: their defaults); returns
    ITK's count. Fewer threads than cores keeps timings steadier on a shared machine."""
    import itk

    if threads is not None:
        torch.set_num_threads(threads)
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    return int(itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads())


def main() -> None:
    args = parse_args()
    itk_threads = set_threads(args.threads)
    phantom = hu_to_attenuation(make_phantom("spine", (args.size,) * 3, FIELD_OF_VIEW_MM / args.size))
    detector = Detector((args.detector, args.detector), (PANEL_MM / args.detector,) * 2)
    matrices = arbitrary_poses(args.views, detector, args.seed)
    image_shape = (args.detector, args.detector)
    projections = rtk_forward_project(phantom, matrices, image_shape)
    options = dict(
        iterations=args.iterations,
        relaxation=args.relaxation,
        views_per_subset=args.views_per_subset,
        positivity=True,
    )
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ours, ours_s, ours_cpu = timed_reconstruction(
        lambda: sart(projections, matrices, phantom.grid, device=args.device, **options)
    )
    rtk, rtk_s, rtk_cpu = timed_reconstruction(lambda: rtk_sart(projections, matrices, phantom.grid, **options))

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
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {**{k: v for k, v in vars(args).items() if k != "output"}, "voxel_mm": FIELD_OF_VIEW_MM / args.size,
                   "pixel_mm": PANEL_MM / args.detector, "simulated_by": "RTK Joseph forward projector"},
        "host": {
            "device": args.device,
            "device_name": device_name(args.device),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "torch_threads": torch.get_num_threads(),
            "itk_threads": itk_threads,
            "torch": torch.__version__,
            "itk_rtk": importlib.metadata.version("itk-rtk"),
            "python": platform.python_version(),
        },
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
        f"ours/RTK time {record['ours_over_rtk_time']:.2f}x, "
        f"PSNR difference {record['ours_minus_rtk_psnr_db']:+.2f} dB"
    )

    args.output.mkdir(parents=True, exist_ok=True)
    stamp = record["date_utc"].replace(":", "").replace("+0000", "Z")
    name = f"sart-{args.size}-{args.detector}-{args.views}v-{args.iterations}it-{args.device}-{stamp}.json"
    (args.output / name).write_text(json.dumps(record, indent=2) + "\n")
    table = args.output / "sart.md"
    if not table.exists():
        table.write_text("# SART: ours vs RTK (spine phantom, arbitrary C-arm poses)\n\n" + TABLE_HEADER)
    o, r = scores["ours"], scores["rtk"]
    with table.open("a") as out:
        out.write(
            f"| {record['date_utc']} | {record['host']['device_name']} "
            f"({args.device}, threads={torch.get_num_threads()}) "
            f"| {args.size}³ | {args.detector}² | {args.views} | {args.iterations} "
            f"| {o['psnr_db']:.2f} / {o['ssim']:.4f} | {r['psnr_db']:.2f} / {r['ssim']:.4f} "
            f"| {o['seconds']:.1f} ({o['cpu_seconds']:.1f}) | {r['seconds']:.1f} ({r['cpu_seconds']:.1f}) "
            f"| {record['ours_over_rtk_time']:.2f} |\n"
        )
    print(f"wrote {args.output / name} and a row of {table}")


if __name__ == "__main__":
    main()
