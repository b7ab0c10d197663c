"""Benchmark IXGS Gaussian reconstruction against RTK's SART on a simulated arbitrary-pose scan
of the spine phantom.

The scan is projected by RTK's Joseph projector and written as an ixgs-scan/1 folder (ROI =
the phantom's box), which the reconstruction reads like any user's scan. Every
``--eval-every`` iterations the current Gaussians are voxelized on the ground-truth grid and
scored (3-D PSNR/SSIM, R²-Gaussian's conventions); the time spent scoring is kept out of the
recorded times. RTK's SART and our SART then run on the same views and grid. The script prints
the scores, times and time-to-quality (when IXGS first beat RTK SART's final PSNR and SSIM) and
writes a JSON record (with the PSNR/SSIM-vs-time curve) and a markdown table row to
benchmarks/results/.

    python benchmarks/bench_reconstruct.py --device auto
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import (
    SimulatedScan,
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
from ixgs_engine.device import resolve_device
from ixgs_engine.evaluate.metrics import psnr_3d, ssim_3d
from ixgs_engine.io.scan import write_scan
from ixgs_engine.io.volumes import write_volume
from ixgs_engine.reconstruct.config import PRESETS, ReconstructionConfig, preset
from ixgs_engine.reconstruct.output import voxelize_volume
from ixgs_engine.reconstruct.pipeline import reconstruct_scan
from ixgs_engine.reconstruct.trainer import Trainer
from ixgs_engine.simulate import GROUND_TRUTH_FILE, roi_of_volume
from ixgs_engine.volume import Volume

DEFAULT_PANEL_MM = 409.6  # the engine's default simulated panel (256 x 1.6 mm): 192 pixels of 2.13 mm
TABLE_HEAD = (
    "# Reconstruction: IXGS vs RTK SART (spine phantom, arbitrary C-arm poses, RTK-projected)\n\n"
    "Times exclude the mid-run scoring; IXGS's include reading the scan, its initialization and the "
    'final voxelization. "to RTK PSNR / SSIM": IXGS time (iteration) when it first beat RTK SART\'s '
    "final score.\n\n"
    "| date (UTC) | device | torch | volume | detector | views | IXGS preset (iterations) "
    "| IXGS PSNR / SSIM | RTK SART PSNR / SSIM (iterations) | IXGS − RTK PSNR / SSIM | IXGS s | RTK SART s "
    "| our SART s | IXGS / RTK time | to RTK PSNR | to RTK SSIM |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scan_and_sart_arguments(parser, size=96, detector=192)
    parser.add_argument("--panel-mm", type=float, default=DEFAULT_PANEL_MM, help="detector width and height (mm)")
    parser.add_argument("--preset", default="fast", choices=sorted(PRESETS), help="IXGS reconstruction preset")
    parser.add_argument("--iterations", type=int, help="IXGS iterations (default: the preset's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one reconstruction setting (repeatable), e.g. --set image_scale=1.0",
    )
    parser.add_argument("--eval-every", type=int, default=100, help="score IXGS every N iterations (and at the end)")
    parser.add_argument("--sart-iterations", type=int, default=20, help="full passes over the views, both SARTs")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="IXGS and our SART (RTK runs on the CPU)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the scan and the reconstruction here (default: a temporary folder)"
    )
    args = parser.parse_args()
    if args.eval_every < 1:
        parser.error("--eval-every must be at least 1")
    return args


class QualityTrace:
    """Trainer progress callback: every ``every`` iterations and at the last one, voxelizes the
    Gaussians on the ground-truth grid and scores them. Times are counted from :meth:`start`
    with the scoring time taken out."""

    def __init__(self, truth: Volume, every: int) -> None:
        self.truth = truth
        self.every = every
        self.trainer: Trainer | None = None
        self.points: list[dict] = []
        self.started = time.perf_counter()
        self.evaluation_s = 0.0

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def start(self) -> None:
        self.started = time.perf_counter()
        self.evaluation_s = 0.0

    def __call__(self, iteration: int, total: int, entry: dict) -> None:
        if iteration % self.every and iteration != total:
            return
        if self.trainer is None:
            raise RuntimeError("QualityTrace needs the trainer (attach) before training starts")
        began = time.perf_counter()
        trainer = self.trainer
        volume = voxelize_volume(trainer.model, trainer.data.scene, trainer.data.roi, self.truth.grid, trainer.backend)
        voxelized = time.perf_counter()
        point = {
            "iteration": iteration,
            "seconds": began - self.started - self.evaluation_s,
            "train_loop_seconds": entry["elapsed_s"] - self.evaluation_s,
            "psnr_db": psnr_3d(volume, self.truth),
            "ssim": ssim_3d(volume, self.truth),
            "voxelize_seconds": voxelized - began,
            "loss": entry["loss"],
            "gaussians": entry["gaussians"],
        }
        self.points.append(point)
        self.evaluation_s += time.perf_counter() - began
        print(
            f"IXGS it {iteration:5d}/{total}  {point['seconds']:7.1f} s  PSNR {point['psnr_db']:6.2f} dB  "
            f"SSIM {point['ssim']:.4f}  {point['gaussians']} Gaussians",
            flush=True,
        )


def write_benchmark_scan(folder: Path, scan: SimulatedScan) -> Path:
    """The simulated views as an ixgs-scan/1 folder (ROI = the phantom's box) with the ground
    truth beside them; returns the folder."""
    write_volume(folder / GROUND_TRUTH_FILE, scan.phantom)
    write_scan(
        folder,
        list(scan.projections),
        list(scan.matrices),
        roi=roi_of_volume(scan.phantom),
        pixel_spacing=(scan.pixel_mm, scan.pixel_mm),
        extra={"ground_truth": GROUND_TRUTH_FILE, "simulation": "benchmarks/bench_reconstruct.py (RTK Joseph)"},
    )
    return folder


def train_ixgs(
    scan_dir: Path, output_dir: Path, config: ReconstructionConfig, device: torch.device, trace: QualityTrace
) -> None:
    """Reconstruct through the engine's entry point with ``trace`` scoring the model mid-run;
    the volume is written on the ground-truth grid."""
    reconstruct_scan(
        scan_dir,
        output_dir,
        config,
        device=str(device),
        voxel_size=float(trace.truth.spacing[0]),
        progress=trace,
        on_trainer=trace.attach,
    )


def first_reaching(curve: list[dict], key: str, target: float) -> dict | None:
    """Iteration and times of the first curve point whose ``key`` exceeds ``target``."""
    for point in curve:
        if point[key] > target:
            return {name: point[name] for name in ("iteration", "seconds", "train_loop_seconds")}
    return None


def describe_reach(reach: dict | None) -> str:
    """A time-to-quality for the table: seconds and iteration, or "not reached"."""
    return "not reached" if reach is None else f"{reach['seconds']:.1f} s (it {reach['iteration']})"


def parse_overrides(pairs: list[str]) -> dict:
    """``NAME=VALUE`` strings to config overrides, values read as JSON (numbers, lists, strings)."""
    overrides = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    return overrides


def main() -> None:
    args = parse_args()
    itk_threads = set_threads(args.threads)
    device = resolve_device(args.device)
    config = preset(args.preset, iterations=args.iterations, **parse_overrides(args.set))
    scan = simulate_spine_scan(args.size, args.detector, args.views, args.seed, args.panel_mm)
    truth = scan.phantom
    load_at_start = load_average()

    with tempfile.TemporaryDirectory(prefix="bench-reconstruct-") as temporary:
        workdir = args.workdir or Path(temporary)
        scan_dir = write_benchmark_scan(workdir / "scan", scan)
        trace = QualityTrace(truth, args.eval_every)
        trace.start()
        train_ixgs(scan_dir, workdir / "ixgs", config, device, trace)

    options = {
        "iterations": args.sart_iterations,
        "relaxation": args.relaxation,
        "views_per_subset": args.views_per_subset,
        "positivity": True,
    }
    rtk, rtk_s, rtk_cpu = timed(lambda: rtk_sart(scan.projections, scan.matrices, truth.grid, **options))
    ours, ours_s, ours_cpu = timed(lambda: sart(scan.projections, scan.matrices, truth.grid, device=device, **options))
    load_at_end = load_average()

    final = trace.points[-1]
    ixgs_s = final["seconds"] + final["voxelize_seconds"]
    results = {
        "ixgs": {
            "psnr_db": final["psnr_db"],
            "ssim": final["ssim"],
            "seconds": ixgs_s,
            "iterations": final["iteration"],
        },
        **{
            name: {
                "psnr_db": psnr_3d(volume, truth),
                "ssim": ssim_3d(volume, truth),
                "seconds": wall,
                "cpu_seconds": cpu,
            }
            for name, volume, wall, cpu in (("rtk_sart", rtk, rtk_s, rtk_cpu), ("ours_sart", ours, ours_s, ours_cpu))
        },
    }
    ixgs, reference = results["ixgs"], results["rtk_sart"]
    reach_psnr = first_reaching(trace.points, "psnr_db", reference["psnr_db"])
    reach_ssim = first_reaching(trace.points, "ssim", reference["ssim"])
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "workdir")}
    record = {
        "benchmark": "reconstruct",
        "date_utc": utc_now(),
        "config": {
            **settings,
            "iterations": config.iterations,
            "voxel_mm": scan.voxel_mm,
            "pixel_mm": scan.pixel_mm,
            "simulated_by": "RTK Joseph forward projector",
            "entry_point": "ixgs_engine.reconstruct.pipeline.reconstruct_scan",
            "reconstruction": config.to_dict(),
        },
        "host": {**host_description(str(device), itk_threads, load_at_start), "load_average_at_end": load_at_end},
        "results": results,
        "ixgs_minus_rtk_psnr_db": ixgs["psnr_db"] - reference["psnr_db"],
        "ixgs_minus_rtk_ssim": ixgs["ssim"] - reference["ssim"],
        "ixgs_over_rtk_time": ixgs_s / rtk_s,
        "time_to_rtk_psnr": reach_psnr,
        "time_to_rtk_ssim": reach_ssim,
        "curve": trace.points,
    }

    for name, score in results.items():
        print(f"{name:9s} PSNR {score['psnr_db']:6.2f} dB  SSIM {score['ssim']:.4f}  {score['seconds']:8.1f} s")
    print(
        f"IXGS - RTK SART: PSNR {record['ixgs_minus_rtk_psnr_db']:+.2f} dB, SSIM {record['ixgs_minus_rtk_ssim']:+.4f}, "
        f"time {record['ixgs_over_rtk_time']:.2f}x; time to RTK's PSNR: {describe_reach(reach_psnr)}, "
        f"to its SSIM: {describe_reach(reach_ssim)}"
    )

    host = record["host"]
    row = (
        f"| {record['date_utc']} | {host['device_name']} ({device}, threads={host['torch_threads']}) | {host['torch']} "
        f"| {args.size}³ | {args.detector}² | {args.views} | {args.preset}{' + ' + ', '.join(args.set) if args.set else ''} ({config.iterations}) "
        f"| {ixgs['psnr_db']:.2f} / {ixgs['ssim']:.4f} "
        f"| {reference['psnr_db']:.2f} / {reference['ssim']:.4f} ({args.sart_iterations}) "
        f"| {record['ixgs_minus_rtk_psnr_db']:+.2f} / {record['ixgs_minus_rtk_ssim']:+.4f} "
        f"| {ixgs_s:.1f} | {rtk_s:.1f} | {ours_s:.1f} | {record['ixgs_over_rtk_time']:.2f} "
        f"| {describe_reach(reach_psnr)} | {describe_reach(reach_ssim)} |\n"
    )
    stem = f"reconstruct-{args.size}-{args.detector}-{args.views}v-{args.preset}-{config.iterations}it-{device.type}"
    save_results(args.output, stem, record, "reconstruct.md", TABLE_HEAD, row)


if __name__ == "__main__":
    main()
