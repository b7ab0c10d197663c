"""The ``ixgs`` command line: one subcommand per job, progress bars, one-line summaries."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ixgs_engine import __version__
from ixgs_engine.device import resolve_device
from ixgs_engine.errors import IXGSError
from ixgs_engine.progress import progress_bar


def _add_simulate(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate X-rays (line integrals) of a volume or an embedded phantom into a scan folder",
        description="Render DRRs of a CT/attenuation volume or an embedded phantom at C-arm poses and write a "
        "scan folder (float32 TIFF line integrals, scan.json) with the ground-truth attenuation volume.",
    )
    parser.add_argument("volume", nargs="?", help="volume file (NIfTI, NRRD, MHA, DICOM folder); default: --phantom")
    parser.add_argument("-o", "--output", required=True, help="scan folder to write")
    parser.add_argument("--phantom", choices=("spine", "shepp-logan"), default="spine", help="embedded phantom (default spine)")
    parser.add_argument("--phantom-size", type=int, default=128, help="phantom voxels per side (default 128)")
    parser.add_argument("--phantom-spacing", type=float, default=1.5, help="phantom voxel size in mm (default 1.5)")
    parser.add_argument(
        "--units", choices=("auto", "hu", "mu"), default="auto",
        help="values of a volume file: Hounsfield units or attenuation 1/mm (auto: HU when its minimum is below -500)",
    )
    parser.add_argument("--views", type=int, default=25, help="number of X-rays (default 25)")
    parser.add_argument("--orbit", choices=("arbitrary", "circular"), default="arbitrary", help="pose pattern (default arbitrary)")
    parser.add_argument("--primary-range", type=float, nargs=2, default=(-100.0, 100.0), metavar=("MIN", "MAX"),
                        help="arbitrary orbit: LAO(+)/RAO(-) primary angles in deg (default -100 100)")
    parser.add_argument("--secondary-range", type=float, nargs=2, default=(-30.0, 30.0), metavar=("MIN", "MAX"),
                        help="arbitrary orbit: cranial(+)/caudal(-) secondary angles in deg (default -30 30)")
    parser.add_argument("--isocenter-jitter", type=float, default=0.0, help="arbitrary orbit: random isocentre shift up to this (mm)")
    parser.add_argument("--arc", type=float, nargs=2, default=(0.0, 360.0), metavar=("START", "STOP"),
                        help="circular orbit: primary-angle arc in deg (default 0 360)")
    parser.add_argument("--isocenter", type=float, nargs=3, metavar=("X", "Y", "Z"), help="world mm (default: volume centre)")
    parser.add_argument("--sid", type=float, default=600.0, help="source-to-isocentre distance in mm (default 600)")
    parser.add_argument("--sdd", type=float, default=1000.0, help="source-to-detector distance in mm (default 1000)")
    parser.add_argument("--detector-pixels", type=int, nargs=2, default=(256, 256), metavar=("W", "H"), help="default 256 256")
    parser.add_argument("--pixel-size", type=float, nargs="+", default=[1.6], metavar="MM", help="detector pixel size (su [sv]) in mm, default 1.6")
    parser.add_argument("--detector-offset", type=float, nargs=2, default=(0.0, 0.0), metavar=("U", "V"), help="panel offset in mm")
    parser.add_argument("--photons", type=float, help="add Poisson noise for this many unattenuated photons per pixel")
    parser.add_argument("--seed", type=int, default=0, help="random seed for poses and noise (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing scan in the output folder")
    parser.set_defaults(run=_run_simulate)


def _load_attenuation(args) -> tuple:
    from ixgs_engine.io.volumes import read_volume
    from ixgs_engine.phantoms import hu_to_attenuation, make_phantom

    if args.volume is None:
        size = args.phantom_size
        hu = make_phantom(args.phantom, (size, size, size), args.phantom_spacing)
        return hu_to_attenuation(hu), f"{args.phantom} phantom {size}^3 at {args.phantom_spacing} mm"
    volume = read_volume(args.volume)
    units = args.units
    if units == "auto":
        units = "hu" if float(np.min(volume.array)) < -500 else "mu"
    if units == "hu":
        volume = hu_to_attenuation(volume)
    return volume, f"{args.volume} ({'HU' if units == 'hu' else 'attenuation 1/mm'})"


def _run_simulate(args) -> int:
    from ixgs_engine.geometry.carm import Detector
    from ixgs_engine.simulate import CarmSetup, arbitrary_poses, circular_poses, simulate_scan

    started = time.perf_counter()
    output = Path(args.output)
    if (output / "scan.json").exists() and not args.overwrite:
        raise IXGSError(f"{output} already holds a scan; pass --overwrite to replace it or choose another folder")
    if args.views < 1:
        raise IXGSError("--views must be at least 1")
    if len(args.pixel_size) not in (1, 2):
        raise IXGSError("--pixel-size takes one value (square pixels) or two (su sv)")
    attenuation, source = _load_attenuation(args)
    isocenter = tuple(args.isocenter) if args.isocenter else tuple(attenuation.center())
    spacing = tuple(args.pixel_size) * (2 // len(args.pixel_size))
    setup = CarmSetup(args.sid, args.sdd, Detector(tuple(args.detector_pixels), spacing, tuple(args.detector_offset)))
    if args.orbit == "circular":
        poses = circular_poses(args.views, tuple(args.arc), isocenter)
    else:
        poses = arbitrary_poses(args.views, tuple(args.primary_range), tuple(args.secondary_range),
                                args.isocenter_jitter, isocenter, args.seed)
    path = simulate_scan(
        output, attenuation, poses, setup, str(resolve_device(args.device)), progress_bar("projecting"),
        args.photons, args.seed, circular=args.orbit == "circular",
    )
    width, height = setup.detector.pixels
    print(
        f"simulated {args.views} {args.orbit} views {width}x{height} of {source} in "
        f"{time.perf_counter() - started:.1f} s -> {path}"
    )
    return 0


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="summarize a scan folder and list its problems",
        description="Show a scan's views, geometry and ROI, and every problem found; exit code 1 if any.",
    )
    parser.add_argument("scan", help="scan folder (holding scan.json)")
    parser.set_defaults(run=_run_info)


def _run_info(args) -> int:
    from ixgs_engine.geometry.carm import carm_angles
    from ixgs_engine.geometry.projection import decompose_projection_matrix
    from ixgs_engine.io.scan import inspect_scan

    report = inspect_scan(args.scan)
    scan = report.scan
    if scan is not None:
        size = f"{report.image_shape[1]}x{report.image_shape[0]}" if report.image_shape else "unknown size"
        print(f"scan      {scan.folder}")
        print(f"images    {len(scan.views)} views, {scan.image_kind}, {size} pixels")
        print("geometry  " + ("circular orbit (expanded)" if scan.geometry else "per-view projection matrices"))
        print("  view  image                     primary  second.  source-ROI  SDD(px)  mirrored")
        roi_center = report.roi.center if report.roi is not None else np.zeros(3)
        for index, view in enumerate(scan.views):
            pose = decompose_projection_matrix(view.projection_matrix)
            primary, secondary = carm_angles(pose.viewing_direction)
            distance = np.linalg.norm(pose.source - roi_center)
            print(
                f"  {index:4d}  {view.image[:24]:24s}  {primary:7.1f}  {secondary:7.1f}  {distance:8.1f}mm"
                f"  {pose.intrinsics[0, 0]:7.1f}  {'yes' if pose.mirrored else 'no'}"
            )
        if report.roi is not None:
            roi = report.roi
            origin = "derived: the region every view sees" if report.roi_is_default else "from scan.json"
            print(
                f"roi       centre {np.round(roi.center, 2).tolist()} mm, size {np.round(roi.size, 2).tolist()} mm ({origin})"
            )
    if report.problems:
        print(f"problems  {len(report.problems)}")
        for problem in report.problems:
            print(f"  - {problem}")
        return 1
    print("problems  none")
    return 0


def _add_reconstruct_options(parser: argparse.ArgumentParser, default_preset: str) -> None:
    """Options shared by ``reconstruct`` and ``demo``."""
    from ixgs_engine.reconstruct.config import DEFAULT_PRESET, PRESETS

    parser.add_argument("--preset", choices=(DEFAULT_PRESET, *PRESETS), default=default_preset,
                        help=f"settings bundle (default {default_preset}): auto = cpu on a CPU and default on a "
                        "CUDA GPU; cpu = minutes on a CPU (tuned on a real CT); default = R2-Gaussian's recipe; "
                        "quality = SART start + 2 views a step; fast = the demo's, a few minutes")
    parser.add_argument("--iterations", type=int, help="optimization steps (overrides the preset)")
    parser.add_argument("--init", choices=("random", "volume"), help="random (the paper's) or volume (a few SART iterations)")
    parser.add_argument("--gaussians", type=int, help="number of Gaussians to start with")
    parser.add_argument("--seed", type=int, help="random seed (same seed, same result)")
    parser.add_argument("--holdout-every", type=int, metavar="K",
                        help="keep every K-th view out of training (recorded in summary.json) for `ixgs evaluate`")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--voxel-size", type=float, help="output voxel size in mm (default: detector pixel at the ROI centre)")
    parser.add_argument("--format", choices=("nrrd", "nii.gz", "mha"), default="nrrd", help="volume file format")
    parser.add_argument("--threshold", type=float, help="also write a label map of attenuation >= this (1/mm)")


def _preset_name(args) -> str:
    """The preset ``--preset`` names on the run's device (``auto`` resolved, e.g. ``auto -> cpu``)."""
    from ixgs_engine.reconstruct.config import resolve_preset

    resolved = resolve_preset(args.preset, resolve_device(args.device))
    return resolved if resolved == args.preset else f"{resolved} ({args.preset})"


def _config_from(args):
    from ixgs_engine.reconstruct.config import preset, resolve_preset

    try:
        return preset(resolve_preset(args.preset, resolve_device(args.device)), iterations=args.iterations,
                      init=args.init, num_gaussians=args.gaussians, seed=args.seed, holdout_every=args.holdout_every)
    except ValueError as error:  # e.g. --iterations 0 or --holdout-every 1
        raise IXGSError(f"invalid reconstruction options: {error}") from None


def _add_reconstruct(subparsers) -> None:
    parser = subparsers.add_parser(
        "reconstruct", help="reconstruct a scan folder into an attenuation volume (radiative Gaussian splatting)",
        description="Fit radiative Gaussians to a scan's views and write volume.<fmt> (1/mm, world geometry), "
        "gaussians.npz, log.jsonl, summary.json and a checkpoint for --resume.",
    )
    parser.add_argument("scan", help="scan folder (holding scan.json)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue from the output folder's checkpoint")
    _add_reconstruct_options(parser, "auto")
    parser.set_defaults(run=_run_reconstruct)


def _run_reconstruct(args) -> int:
    from ixgs_engine.reconstruct.pipeline import reconstruct_scan

    summary, _ = reconstruct_scan(
        args.scan, args.output, _config_from(args), args.device, args.resume, args.voxel_size, args.format,
        args.threshold, progress=progress_bar("reconstructing", "it"), preset_name=_preset_name(args),
    )
    print(summary.line())
    return 0


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="simulate the spine phantom at arbitrary poses, reconstruct it, compare with the truth",
        description="Simulate the embedded lumbar-spine phantom at arbitrary C-arm poses, reconstruct it, and "
        "write the volume, a PNG of orthogonal slices beside the ground truth, and metrics.json.",
    )
    parser.add_argument("-o", "--output", default="out/demo", help="output folder (default out/demo)")
    parser.add_argument("--views", type=int, default=25, help="number of X-rays (default 25)")
    parser.add_argument("--phantom-size", type=int, default=96, help="phantom voxels per side (default 96)")
    parser.add_argument("--detector-pixels", type=int, default=192, help="detector pixels per side (default 192)")
    _add_reconstruct_options(parser, "fast")
    parser.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from ixgs_engine.evaluate.figures import orthogonal_slices_png
    from ixgs_engine.evaluate.metrics import psnr_3d, ssim_3d
    from ixgs_engine.reconstruct.pipeline import reconstruct_scan
    from ixgs_engine.simulate import simulate_phantom_scan

    started = time.perf_counter()
    output = Path(args.output)
    field_of_view = 192.0
    truth = simulate_phantom_scan(
        output / "scan", "spine", args.phantom_size, field_of_view / args.phantom_size, args.views,
        args.detector_pixels, 409.6 / args.detector_pixels, str(resolve_device(args.device)), progress_bar("projecting"),
    )
    summary, volume = reconstruct_scan(
        output / "scan", output / "reconstruction", _config_from(args), args.device,
        voxel_size=field_of_view / args.phantom_size, volume_format=args.format, threshold=args.threshold,
        progress=progress_bar("reconstructing", "it"), preset_name=_preset_name(args),
    )
    metrics = {"psnr_3d_db": psnr_3d(volume, truth), "ssim_3d": ssim_3d(volume, truth),
               "views": args.views, "reconstruction_seconds": summary.total_seconds}
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    picture = orthogonal_slices_png(
        output / "slices.png", [("ground truth", truth), ("IXGS reconstruction", volume)], (0.0, float(truth.array.max()))
    )
    print(
        f"demo: {args.views} views, PSNR {metrics['psnr_3d_db']:.2f} dB, SSIM {metrics['ssim_3d']:.3f}, "
        f"{time.perf_counter() - started:.1f} s total -> {summary.volume_path}, {picture}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ixgs",
        description="IXGS: 3-D volumes from a few X-rays at arbitrary C-arm poses (radiative Gaussian splatting).",
    )
    parser.add_argument("--version", action="version", version=f"ixgs {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_simulate(subparsers)
    _add_info(subparsers)
    _add_reconstruct(subparsers)
    _add_demo(subparsers)
    # Imported here: the evaluation commands reuse this module's reconstruct options.
    from ixgs_engine.evaluate.commands import add_commands as add_evaluation_commands
    from ixgs_engine.poses.commands import add_commands as add_poses_commands
    from ixgs_engine.standardize.commands import add_commands as add_standardize_commands

    add_standardize_commands(subparsers)
    add_poses_commands(subparsers)
    add_evaluation_commands(subparsers)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (not the stream of the first call)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_log_lines() -> None:
    """The engine's INFO log lines (preset and estimated time, render backend) on stderr, once."""
    logger = logging.getLogger("ixgs_engine")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("ixgs: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``ixgs`` subcommand; user errors print one clear line and exit with code 2."""
    args = build_parser().parse_args(argv)
    _show_log_lines()
    try:
        return int(args.run(args))
    except IXGSError as error:
        print(f"ixgs {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ixgs {args.command}: interrupted", file=sys.stderr)
        return 130
