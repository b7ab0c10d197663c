"""Ablation of radiographic standardization: reconstruct an unseen spine-phantom variant from
raw radiographs (plain normalization), raw -log detector data, standardized images and ideal
bone-enhanced DRRs, and score images (2-D) and volumes (3-D).

The logic is ``ixgs_engine.experiments.standardization.run_ablation`` (also behind
``ixgs experiment standardization``); this script sets threads, runs it, prints the table and
the standardized-minus-raw differences, and writes a JSON record and a markdown row to
benchmarks/results/.

    OMP_NUM_THREADS=1 python benchmarks/bench_standardization.py --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import RESULTS, host_description, load_average, save_results, set_threads, timed, utc_now

from ixgs_engine.device import resolve_device
from ixgs_engine.experiments.standardization import AblationSettings, run_ablation
from ixgs_engine.progress import progress_bar

TABLE_HEAD = (
    "# Radiographic standardization ablation (unseen spine-phantom variant, realistic radiographs)\n\n"
    "3-D: reconstruction vs the bone-enhanced attenuation map; 2-D: input images vs the ideal bone-enhanced DRRs. "
    'Raw inputs get an oracle scene-wide scale (docs/standardization.md). "vs plain": each volume, scaled by '
    "its least-squares factor, against the plain attenuation map (bone weight 1).\n\n"
    "| date (UTC) | device | volume | detector | views | model steps | recon iterations "
    "| raw radiograph 3-D PSNR / SSIM | raw -log 3-D PSNR / SSIM | standardized 3-D PSNR / SSIM "
    "| ideal DRR 3-D PSNR / SSIM | raw / standardized 2-D PSNR | standardized − raw 3-D PSNR "
    "| vs plain PSNR: raw / raw -log / standardized / ideal | total s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def parse_args() -> argparse.Namespace:
    defaults = AblationSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=defaults.size, help="phantom voxels per side (192 mm)")
    parser.add_argument("--detector", type=int, default=defaults.detector_pixels, help="detector pixels per side")
    parser.add_argument("--pixel-mm", type=float, default=defaults.pixel_mm, help="detector pixel size (mm)")
    parser.add_argument("--views", type=int, default=defaults.views)
    parser.add_argument("--train-views", type=int, default=defaults.train_views, help="simulated training pairs")
    parser.add_argument("--train-steps", type=int, default=defaults.train_steps)
    parser.add_argument("--model-config", default=defaults.model_config, choices=("light", "paper"))
    parser.add_argument("--iterations", type=int, default=defaults.iterations, help="reconstruction iterations")
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--model", type=Path, help="use this trained model instead of training one")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, help="CPU threads for torch and ITK (default: all cores)")
    parser.add_argument("--workdir", type=Path, help="keep pairs, model, scans and volumes here")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    return parser.parse_args()


def _pair(row: dict, a: str, b: str, digits: tuple[int, int] = (2, 3)) -> str:
    return f"{row[a]:.{digits[0]}f} / {row[b]:.{digits[1]}f}"


def main() -> None:
    args = parse_args()
    load_at_start = load_average()
    itk_threads = set_threads(args.threads)
    device = str(resolve_device(args.device))
    settings = AblationSettings(
        size=args.size,
        detector_pixels=args.detector,
        pixel_mm=args.pixel_mm,
        views=args.views,
        train_views=args.train_views,
        train_steps=args.train_steps,
        model_config=args.model_config,
        iterations=args.iterations,
        preset=args.preset,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="ixgs-bench-standardization-") as temp:
        work = args.workdir or Path(temp)
        rows, seconds, cpu_seconds = timed(
            lambda: run_ablation(work, settings, args.model, device, progress_bar("ablation", "step"))
        )
    by_input = {row["input"]: row for row in rows}
    print(
        f"{'input':16s} {'2-D PSNR':>9s} {'2-D SSIM':>9s} {'3-D PSNR':>9s} {'3-D SSIM':>9s}"
        f" {'plain PSNR':>11s} {'plain SSIM':>11s}"
    )
    for row in rows:
        psnr_2d = "ideal" if row["psnr_2d_db"] is None else f"{row['psnr_2d_db']:.2f}"
        print(
            f"{row['input']:16s} {psnr_2d:>9s} {row['ssim_2d']:9.3f} {row['psnr_3d_db']:9.2f} {row['ssim_3d']:9.3f}"
            f" {row['psnr_3d_plain_db']:11.2f} {row['ssim_3d_plain']:11.3f}"
        )
    raw, standardized = by_input["raw radiograph"], by_input["standardized"]
    gain_psnr = standardized["psnr_3d_db"] - raw["psnr_3d_db"]
    gain_ssim = standardized["ssim_3d"] - raw["ssim_3d"]
    verdict = "beats" if gain_psnr > 0 and gain_ssim > 0 else "does not beat"
    print(
        f"standardized − raw radiograph: 3-D PSNR {gain_psnr:+.2f} dB, SSIM {gain_ssim:+.3f} "
        f"(standardized {verdict} raw); total {seconds:.0f} s"
    )
    record = {
        "benchmark": "standardization",
        "date_utc": utc_now(),
        "settings": settings.to_dict(),
        "model": str(args.model) if args.model else "trained in this run",
        "host": host_description(device, itk_threads, load_at_start),
        "rows": rows,
        "standardized_minus_raw": {"psnr_3d_db": gain_psnr, "ssim_3d": gain_ssim},
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }
    plain_psnrs = " / ".join(f"{r['psnr_3d_plain_db']:.2f}" for r in rows)
    row = (
        f"| {record['date_utc']} | {record['host']['device_name']} | {args.size}³ | {args.detector}² | {args.views} "
        f"| {args.train_steps if args.model is None else 'given'} | {args.iterations} "
        f"| {_pair(by_input['raw radiograph'], 'psnr_3d_db', 'ssim_3d')} "
        f"| {_pair(by_input['raw -log'], 'psnr_3d_db', 'ssim_3d')} "
        f"| {_pair(standardized, 'psnr_3d_db', 'ssim_3d')} | {_pair(by_input['ideal DRR'], 'psnr_3d_db', 'ssim_3d')} "
        f"| {raw['psnr_2d_db']:.2f} / {standardized['psnr_2d_db']:.2f} | {gain_psnr:+.2f} dB "
        f"| {plain_psnrs} | {seconds:.0f} |\n"
    )
    save_results(args.output, "standardization", record, "standardization.md", TABLE_HEAD, row)


if __name__ == "__main__":
    main()
