"""Reconstruction commands: ``reconstruct`` (a scan folder into a volume) and ``demo`` (the
embedded phantom simulated, reconstructed and scored)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ixgs_engine.cli.options import add_reconstruct_options, config_from, count, preset_name
from ixgs_engine.device import check_memory, resolve_device
from ixgs_engine.io import atomic_output
from ixgs_engine.progress import progress_bar

_log = logging.getLogger("ixgs_engine.cli")


def add_commands(subparsers) -> None:
    """Register ``reconstruct`` and ``demo``."""
    _add_reconstruct(subparsers)
    _add_demo(subparsers)


def _add_reconstruct(subparsers) -> None:
    parser = subparsers.add_parser(
        "reconstruct",
        help="reconstruct a scan folder into an attenuation volume (radiative Gaussian splatting)",
        description="Fit radiative Gaussians to a scan's views and write volume.<fmt> (1/mm, world geometry), "
        "gaussians.npz, log.jsonl, summary.json and a checkpoint for --resume. Ctrl-C, SIGTERM or --cancel-file "
        "stop after the current step with its state saved; --resume then continues to the same result.",
    )
    parser.add_argument("scan", help="scan folder (holding scan.json)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the output folder with its settings (more --iterations extend it)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    add_reconstruct_options(parser, "auto")
    add_cancel_file_option(parser)
    parser.set_defaults(run=_run_reconstruct)


def add_cancel_file_option(parser) -> None:
    parser.add_argument(
        "--cancel-file",
        metavar="PATH",
        help="stop as Ctrl-C does (state saved for --resume) once this file exists: a cancel channel "
        "for front ends that cannot send signals (the Slicer module on Windows)",
    )


def cancel_requested(args) -> Callable[[], bool] | None:
    """``should_cancel`` for ``--cancel-file``: true once the file exists."""
    if not args.cancel_file:
        return None
    path = Path(args.cancel_file)
    return path.exists


def _stage_progress(name: str):
    return progress_bar(name, "update", stage=True)


def _warn_ignored_on_resume(args, default_preset: str) -> None:
    """``--resume`` keeps the checkpoint's settings: say which given options it ignores."""
    given = {
        "--preset": args.preset if args.preset != default_preset else None,
        "--init": args.init,
        "--gaussians": args.gaussians,
        "--seed": args.seed,
        "--holdout-every": args.holdout_every,
        "--sart-passes": args.sart_passes,
        "--refine-poses": args.refine_poses,
    }
    ignored = [f"{flag} {value}" for flag, value in given.items() if value is not None]
    if ignored:
        _log.warning(
            "--resume keeps the checkpoint's settings; ignored: %s (only --iterations can extend a run)",
            ", ".join(ignored),
        )


def _run_reconstruct(args) -> int:
    from ixgs_engine.reconstruct.pipeline import reconstruct_scan

    if args.resume:
        _warn_ignored_on_resume(args, "auto")
    summary, _ = reconstruct_scan(
        args.scan,
        args.output,
        config_from(args),
        args.device,
        args.resume,
        args.voxel_size,
        args.format,
        args.threshold,
        progress=progress_bar("reconstructing", "it"),
        should_cancel=cancel_requested(args),
        preset_name="resumed" if args.resume else preset_name(args),
        overwrite=args.overwrite,
        resume_iterations=args.iterations,
        stage_progress=_stage_progress,
    )
    if summary.poses_line() is not None:
        print(summary.poses_line())
    print(summary.line())
    return 0


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="simulate the spine phantom at arbitrary poses, reconstruct it, compare with the truth",
        description="Simulate the embedded lumbar-spine phantom at arbitrary C-arm poses, reconstruct it, and "
        "write the volume (OUT/reconstruction/volume.nrrd), a PNG of orthogonal slices beside the ground truth "
        "(OUT/slices.png), and OUT/metrics.json. A re-run replaces the demo folder; an interrupted demo "
        "continues with --resume.",
    )
    parser.add_argument("-o", "--output", default="out/demo", help="output folder (default out/demo)")
    parser.add_argument("--views", type=count, default=25, help="number of X-rays (default 25)")
    parser.add_argument("--phantom-size", type=count, default=96, help="phantom voxels per side (default 96)")
    parser.add_argument("--detector-pixels", type=count, default=192, help="detector pixels per side (default 192)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo in the output folder")
    add_reconstruct_options(parser, "fast")
    add_cancel_file_option(parser)
    parser.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from ixgs_engine.evaluate.figures import orthogonal_slices_png
    from ixgs_engine.evaluate.metrics import psnr_3d, ssim_3d
    from ixgs_engine.phantoms import hu_to_attenuation, make_phantom
    from ixgs_engine.reconstruct.pipeline import reconstruct_scan
    from ixgs_engine.reconstruct.trainer import ReconstructionCancelled
    from ixgs_engine.simulate import simulate_phantom_scan, simulation_bytes

    started = time.perf_counter()
    output = Path(args.output)
    field_of_view = 192.0
    spacing = field_of_view / args.phantom_size
    if args.resume and (output / "scan" / "scan.json").is_file():  # the scan is kept; only its truth is rebuilt
        truth = hu_to_attenuation(make_phantom("spine", (args.phantom_size,) * 3, spacing))
    else:
        check_memory(
            simulation_bytes(args.views, args.detector_pixels, args.detector_pixels, args.phantom_size**3),
            f"a demo of {args.views} views of {args.detector_pixels}^2 pixels and a {args.phantom_size}^3 phantom",
            "give fewer --views, --detector-pixels or --phantom-size",
        )
        truth = simulate_phantom_scan(
            output / "scan",
            "spine",
            args.phantom_size,
            spacing,
            args.views,
            args.detector_pixels,
            409.6 / args.detector_pixels,
            str(resolve_device(args.device)),
            progress_bar("projecting"),
        )
    try:
        summary, volume = reconstruct_scan(
            output / "scan",
            output / "reconstruction",
            config_from(args),
            args.device,
            resume=args.resume,
            voxel_size=spacing,
            volume_format=args.format,
            threshold=args.threshold,
            progress=progress_bar("reconstructing", "it"),
            should_cancel=cancel_requested(args),
            preset_name=preset_name(args),
            overwrite=True,
            stage_progress=_stage_progress,
        )
    except ReconstructionCancelled as stopped:
        raise ReconstructionCancelled(
            f"{stopped}; for the demo: ixgs demo -o {output} --resume (with the same options)", stopped.exit_code
        ) from None
    metrics = {
        "psnr_3d_db": psnr_3d(volume, truth),
        "ssim_3d": ssim_3d(volume, truth),
        "views": args.views,
        "reconstruction_seconds": summary.total_seconds,
    }
    with atomic_output(output / "metrics.json") as temp:
        temp.write_text(json.dumps(metrics, indent=1))
    picture = orthogonal_slices_png(
        output / "slices.png",
        [("ground truth", truth), ("IXGS reconstruction", volume)],
        (0.0, float(truth.array.max())),
    )
    print(
        f"demo: {args.views} views, PSNR {metrics['psnr_3d_db']:.2f} dB, SSIM {metrics['ssim_3d']:.3f}, "
        f"{time.perf_counter() - started:.1f} s total -> {summary.volume_path}, {picture}"
    )
    return 0
