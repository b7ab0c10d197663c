"""Experiment commands: ``baseline`` (RTK SART/FDK of a scan), ``experiment`` (the paper's
sweeps on simulated phantoms) and ``batch`` (several scans, resumable)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ixgs_engine.cli.options import add_reconstruct_options, config_from, count, positive
from ixgs_engine.device import resolve_device
from ixgs_engine.errors import IXGSError
from ixgs_engine.progress import progress_bar
from ixgs_engine.reconstruct.presets import POSE_MODES


def add_commands(subparsers) -> None:
    """Register ``baseline``, ``experiment`` and ``batch``."""
    _add_baseline(subparsers)
    _add_experiment(subparsers)
    _add_batch(subparsers)


# ---------------------------------------------------------------- baseline
def _add_baseline(subparsers) -> None:
    parser = subparsers.add_parser(
        "baseline",
        help="classical reconstruction of a scan with RTK: SART (any poses) or FDK (circular orbits)",
        description="Reconstruct a scan folder with RTK (optional dependency itk-rtk) on the same ROI grid as "
        "`ixgs reconstruct`: volume.<fmt> (1/mm, world geometry) and summary.json. FDK refuses non-circular scans.",
    )
    parser.add_argument("method", choices=("sart", "fdk"))
    parser.add_argument("scan", help="scan folder (holding scan.json)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--iterations", type=count, default=10, help="SART passes over all views (default 10)")
    parser.add_argument(
        "--voxel-size", type=positive, help="voxel size in mm (default: detector pixel at the ROI centre)"
    )
    parser.add_argument("--format", choices=("nrrd", "nii.gz", "mha"), default="nrrd", help="volume file format")
    parser.set_defaults(run=_run_baseline)


def _run_baseline(args) -> int:
    from ixgs_engine.experiments.baselines import run_baseline

    if args.iterations < 1:
        raise IXGSError("--iterations must be at least 1")
    summary, volume = run_baseline(args.method, args.scan, args.output, args.iterations, args.voxel_size, args.format)
    print(
        f"rtk {args.method}: {summary['views']} views -> {'x'.join(map(str, volume.shape[::-1]))} voxels of "
        f"{summary['voxel_size_mm']:.2f} mm in {summary['total_seconds']:.1f} s -> {summary['volume_path']}"
    )
    return 0


# ---------------------------------------------------------------- experiment / batch
def _add_cluster_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        help="run tasks on a cluster: ray://HOST:PORT, ray:auto, or tcp://HOST:PORT "
        "(Dask scheduler); one GPU per task with --device cuda (default: here, one after another)",
    )


def _add_experiment(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="the paper's experiments on simulated phantom scans, IXGS vs RTK SART (resumable)",
        description="Each row simulates a scan of an embedded phantom, reconstructs it with IXGS and RTK SART and "
        "scores both against the truth. Finished rows are kept in OUT/results.json and skipped on a re-run. "
        "Writes OUT/<kind>.md, .csv and .png.",
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    views = kinds.add_parser("views", help="view-count sweep (where is the knee?)")
    views.add_argument("--counts", type=count, nargs="+", default=[5, 10, 15, 20, 25, 30, 50], help="view counts")
    views.add_argument("--orbit", choices=("arbitrary", "circular"), default="arbitrary")
    views.add_argument("--init", choices=("random", "volume"), default="volume", help="IXGS initialization")
    poses = kinds.add_parser("poses", help="pose robustness: orbits, initializations, pose errors")
    poses.add_argument("--views", type=count, default=25, help="views per scan (default 25)")
    poses.add_argument("--orbits", nargs="+", choices=("circular", "arbitrary"), default=["circular", "arbitrary"])
    poses.add_argument("--inits", nargs="+", choices=("random", "volume"), default=["random", "volume"])
    poses.add_argument(
        "--noise",
        nargs="+",
        default=["0:0", "0.5:1", "1:2.5", "2:5"],
        metavar="DEG:MM",
        help="pose errors: rotation (deg) about the isocentre : shift (mm)",
    )
    poses.add_argument(
        "--refine-poses",
        nargs="+",
        choices=POSE_MODES,
        default=["off", "on"],
        help="IXGS's pose refinement per row (default: off and on, side by side)",
    )
    ablation = kinds.add_parser(
        "standardization",
        help="does radiographic standardization help? raw vs standardized vs ideal inputs",
        description="Train a standardization model on phantom variants (or use --model), image an unseen variant "
        "with realistic radiographs and reconstruct it from raw, -log, standardized and ideal DRR inputs "
        "(ixgs_engine.experiments.standardization, docs/standardization.md).",
    )
    ablation.add_argument("-o", "--output", required=True, help="output folder (results.json, tables, plot, work/)")
    ablation.add_argument("--size", type=count, default=64, help="phantom voxels per side (192 mm; default 64)")
    ablation.add_argument("--detector", type=count, default=128, help="detector pixels per side (default 128)")
    ablation.add_argument("--views", type=count, default=25, help="views of the test scan (default 25)")
    ablation.add_argument("--train-steps", type=count, default=1500, help="standardization training steps")
    ablation.add_argument("--iterations", type=count, default=400, help="IXGS iterations per reconstruction")
    ablation.add_argument("--model", help="a trained standardization model (default: train one)")
    ablation.add_argument("--seed", type=int, default=0)
    ablation.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    for sub in (views, poses):
        sub.add_argument("-o", "--output", required=True, help="output folder (results.json, tables, plot, rows/)")
        sub.add_argument("--phantom", choices=("spine", "shepp-logan"), default="spine")
        sub.add_argument("--size", type=count, default=64, help="phantom voxels per side (192 mm; default 64)")
        sub.add_argument("--detector", type=count, default=128, help="detector pixels per side (409.6 mm; default 128)")
        sub.add_argument("--preset", default="fast", help="IXGS preset (default fast)")
        sub.add_argument("--iterations", type=count, help="IXGS iterations (default: the preset's)")
        sub.add_argument("--gaussians", type=count, help="initial Gaussians (default: the preset's)")
        sub.add_argument("--sart-iterations", type=count, default=10, help="RTK SART passes (default 10)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        _add_cluster_option(sub)
    parser.set_defaults(run=_run_experiment)


def _parse_noise(values: list[str]) -> list[tuple[float, float]]:
    out = []
    for value in values:
        try:
            degrees, millimetres = (float(v) for v in value.split(":"))
        except ValueError:
            raise IXGSError(f"--noise takes DEG:MM pairs such as 1:2.5, got {value!r}") from None
        out.append((degrees, millimetres))
    return out


def _run_standardization(args) -> int:
    from dataclasses import replace

    from ixgs_engine.experiments.runner import ResultStore
    from ixgs_engine.experiments.standardization import AblationSettings, run_ablation
    from ixgs_engine.experiments.tables import write_generic_tables

    started = time.perf_counter()
    output = Path(args.output)
    settings = replace(
        AblationSettings(),
        size=args.size,
        detector_pixels=args.detector,
        views=args.views,
        train_steps=args.train_steps,
        iterations=args.iterations,
        seed=args.seed,
        pixel_mm=AblationSettings().pixel_mm * AblationSettings().detector_pixels / args.detector,
    )
    store = ResultStore(output / "results.json", "standardization", settings.to_dict() | {"model": args.model})
    if not store.rows:  # one task: the ablation trains once and reconstructs every input
        rows = run_ablation(
            output / "work", settings, args.model, str(resolve_device(args.device)), progress_bar("ablation", "step")
        )
        for row in rows:
            store.add(row["input"], row)
    rows = list(store.rows.values())
    title = f"Standardization ablation: spine variant {args.size}^3, {args.views} views, IXGS {settings.iterations} it"
    paths = write_generic_tables(output, "standardization", rows, title, "input")
    summary = ", ".join(f"{r['input']} {r['psnr_3d_db']:.2f} dB" for r in rows)
    print(f"experiment standardization in {time.perf_counter() - started:.1f} s: {summary} -> {paths['markdown']}")
    return 0


def _run_experiment(args) -> int:
    from ixgs_engine.experiments.sweeps import Settings, pose_rows, run_experiment, view_rows
    from ixgs_engine.experiments.tables import write_tables
    from ixgs_engine.reconstruct.config import PRESETS

    if args.kind == "standardization":
        return _run_standardization(args)
    started = time.perf_counter()
    if args.preset not in PRESETS:
        raise IXGSError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.sart_iterations < 1:
        raise IXGSError("--sart-iterations must be at least 1")
    if args.kind == "poses" and args.views < 2:
        raise IXGSError("--views must be at least 2")
    settings = Settings(
        args.phantom,
        args.size,
        args.detector,
        args.preset,
        args.iterations,
        args.gaussians,
        args.sart_iterations,
        args.seed,
        args.device,
    )
    if args.kind == "views":
        if min(args.counts) < 2:
            raise IXGSError("--counts must be at least 2 views each")
        rows = view_rows(sorted(set(args.counts)), args.orbit, args.init)
        title = (
            f"View-count sweep: {args.phantom} {args.size}^3, {args.orbit} orbit, IXGS {args.preset} ({args.init} init)"
        )
    else:
        rows = pose_rows(args.views, args.orbits, args.inits, _parse_noise(args.noise), args.refine_poses)
        title = f"Pose robustness: {args.phantom} {args.size}^3, {args.views} views, IXGS {args.preset}"
    store = run_experiment(
        args.kind, rows, settings, args.output, args.cluster, progress_bar(f"experiment {args.kind}", "row")
    )
    results = [store.rows[r.key] for r in rows]
    paths = write_tables(args.output, args.kind, results, title)
    best = max(results, key=lambda r: r["ixgs_psnr_db"])
    print(
        f"experiment {args.kind}: {len(results)} rows in {time.perf_counter() - started:.1f} s, best IXGS PSNR "
        f"{best['ixgs_psnr_db']:.2f} dB ({best['key']}) -> {paths['markdown']}"
    )
    return 0


def _add_batch(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="reconstruct several scan folders (locally or on a Ray/Dask cluster), resumable",
        description="Reconstruct each scan folder into OUT/<scan name>/ with one configuration; cases already "
        "finished (OUT/batch.json) are skipped. Writes OUT/batch.md (with 3-D metrics where a scan records its "
        "ground truth).",
    )
    parser.add_argument("scans", nargs="+", help="scan folders")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    add_reconstruct_options(parser, "auto")
    _add_cluster_option(parser)
    parser.set_defaults(run=_run_batch)


def _run_batch(args) -> int:
    from ixgs_engine.experiments.batch import run_batch

    started = time.perf_counter()
    result = run_batch(
        args.scans,
        args.output,
        config_from(args),
        args.device,
        args.cluster,
        progress_bar("batch", "case"),
        args.voxel_size,
        args.format,
        args.threshold,
    )
    for name, message in result.failures.items():
        print(f"ixgs batch: error: case {name}: {message}", file=sys.stderr)
    failed = f", {len(result.failures)} failed (retried by the next run)" if result.failures else ""
    print(
        f"batch: {len(result.rows)} of {len(args.scans)} cases reconstructed{failed} in "
        f"{time.perf_counter() - started:.1f} s -> {result.table}"
    )
    return 2 if result.failures else 0
