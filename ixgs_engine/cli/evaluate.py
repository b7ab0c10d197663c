"""Evaluation commands: ``evaluate`` (metrics of a volume), ``report`` (an HTML page of a run)
and ``ratings`` (merged rating sheets)."""

from __future__ import annotations

import time
from pathlib import Path

from ixgs_engine.cli.options import count, finite
from ixgs_engine.device import resolve_device
from ixgs_engine.errors import IXGSError
from ixgs_engine.progress import progress_bar


def add_commands(subparsers) -> None:
    """Register ``evaluate``, ``report`` and ``ratings``."""
    _add_evaluate(subparsers)
    _add_report(subparsers)
    _add_ratings(subparsers)


def _check_output_file(output: str | None) -> None:
    if output is not None and Path(output).is_dir():
        raise IXGSError(f"-o {output} is a folder; give a file name")


# ---------------------------------------------------------------- evaluate
def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a reconstruction against a reference volume and/or its X-rays",
        description="3-D PSNR/SSIM (R2-Gaussian's definitions) and bone Dice / surface distances (mm) against a "
        "reference CT or volume resampled by world geometry, and 2-D PSNR/SSIM of the volume re-rendered at the "
        "scan's views (held-out views by default). Writes metrics JSON.",
    )
    parser.add_argument("recon", help="reconstructed volume file, or an `ixgs reconstruct` output folder")
    parser.add_argument("--reference", help="reference CT (HU) or attenuation volume (default: the scan's truth)")
    parser.add_argument(
        "--reference-units",
        choices=("auto", "hu", "mu"),
        default="auto",
        help="reference values: HU or 1/mm (auto: HU when its minimum is below -500)",
    )
    parser.add_argument("--scan", help="scan folder for the 2-D metrics (default: the run's scan)")
    parser.add_argument("--views", help="heldout (default when the run held views out), training, all, or 0,5,10")
    parser.add_argument("--bone-hu", type=finite, default=200.0, help="bone threshold in HU for Dice/surface distances")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("-o", "--output", help="metrics JSON (default: metrics.json in the run folder)")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from ixgs_engine.evaluate.evaluation import (
        METRICS_FILE,
        evaluate_reconstruction,
        load_reconstruction,
        write_metrics,
    )

    started = time.perf_counter()
    _check_output_file(args.output)
    recon = load_reconstruction(args.recon)
    evaluation = evaluate_reconstruction(
        recon,
        args.reference,
        args.reference_units,
        args.scan,
        args.views,
        args.bone_hu,
        str(resolve_device(args.device)),
        progress_bar("re-rendering"),
    )
    default = (recon.run_dir or recon.volume_path.parent) / (
        METRICS_FILE if recon.run_dir else f"{recon.volume_path.name.split('.')[0]}-metrics.json"
    )
    path = write_metrics(args.output or default, evaluation.metrics)
    m = evaluation.metrics
    parts = []
    if "psnr_3d_db" in m:
        parts.append(
            f"3-D PSNR {m['psnr_3d_db']:.2f} dB, SSIM {m['ssim_3d']:.3f}, bone Dice {m['bone']['dice']:.3f}, "
            f"MSD {m['bone']['mean_surface_distance_mm']:.2f} mm"
        )
    if "psnr_2d_db_mean" in m:
        parts.append(
            f"2-D PSNR {m['psnr_2d_db_mean']:.2f} dB, SSIM {m['ssim_2d_mean']:.3f} on {len(m['views'])} "
            f"{m['view_set']} views"
        )
    print(f"evaluated in {time.perf_counter() - started:.1f} s: {'; '.join(parts)} -> {path}")
    return 0


# ---------------------------------------------------------------- report / ratings
def _add_report(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run (pictures, metrics, rating sheet)",
        description="One HTML page (inline images, no network): settings, timing, metrics, slices and MIPs beside "
        "the reference, input vs re-rendered X-rays with residuals, loss curves, per-view errors, and a rating "
        "sheet for clinical evaluators that saves a CSV in the browser.",
    )
    parser.add_argument("run_dir", help="output folder of `ixgs reconstruct` (or `ixgs baseline`)")
    parser.add_argument("--reference", help="reference CT (HU) or attenuation volume (default: the scan's truth)")
    parser.add_argument("--reference-units", choices=("auto", "hu", "mu"), default="auto")
    parser.add_argument("--scan", help="scan folder (default: the run's scan)")
    parser.add_argument(
        "--max-views", type=count, default=6, help="X-rays shown as pictures (held-out first; default 6)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("-o", "--output", help="HTML file (default RUN_DIR/report.html)")
    parser.set_defaults(run=_run_report)


def _run_report(args) -> int:
    from ixgs_engine.report.html import build_report

    started = time.perf_counter()
    if args.max_views < 1:
        raise IXGSError("--max-views must be at least 1")
    _check_output_file(args.output)
    path, metrics = build_report(
        args.run_dir,
        args.reference,
        args.reference_units,
        args.scan,
        args.output,
        args.max_views,
        str(resolve_device(args.device)),
        progress_bar("re-rendering"),
    )
    shown = [f"3-D PSNR {metrics['psnr_3d_db']:.2f} dB"] if "psnr_3d_db" in metrics else []
    if "psnr_2d_db_mean" in metrics:
        shown.append(f"2-D PSNR {metrics['psnr_2d_db_mean']:.2f} dB over {len(metrics['views'])} views")
    print(f"report in {time.perf_counter() - started:.1f} s ({', '.join(shown)}) -> {path}")
    return 0


def _add_ratings(subparsers) -> None:
    parser = subparsers.add_parser(
        "ratings",
        help="merge rating-sheet CSVs saved from reports into one summary table",
        description="Merge the CSV files clinical evaluators saved from `ixgs report` pages: per case and "
        "criterion, the number of raters, mean, standard deviation, median and range of the 1-5 scores.",
    )
    parser.add_argument("csv", nargs="+", help="rating CSV files")
    parser.add_argument("-o", "--output", required=True, help="summary table: .csv, or .md for markdown")
    parser.set_defaults(run=_run_ratings)


def _run_ratings(args) -> int:
    from ixgs_engine.report.ratings import read_ratings, summarize_ratings, write_rating_summary

    _check_output_file(args.output)
    rows = read_ratings(args.csv)
    summary = summarize_ratings(rows)
    path = write_rating_summary(args.output, summary)
    cases = sorted({s.case for s in summary})
    print(
        f"merged {len(rows)} ratings from {len(args.csv)} files: {len(cases)} cases, "
        f"{len(summary)} case/criterion rows -> {path}"
    )
    return 0
