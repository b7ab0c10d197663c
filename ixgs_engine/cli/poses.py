"""``ixgs poses make-phantom | detect | estimate``: the command-line face of the pose tools
(``poses.calibrate``), which it only words."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ixgs_engine.cli.options import count, finite, positive
from ixgs_engine.errors import IXGSError
from ixgs_engine.io.scan import read_scan
from ixgs_engine.progress import progress_bar


def add_commands(subparsers) -> None:
    """Register ``ixgs poses ...``."""
    parser = subparsers.add_parser(
        "poses",
        help="C-arm poses from a calibration phantom's beads (detect, estimate, make-phantom)",
        description="Find the beads of a calibration phantom in each X-ray and compute every view's projection "
        "matrix (docs/poses.md).",
    )
    commands = parser.add_subparsers(dest="poses_command", required=True)

    make = commands.add_parser(
        "make-phantom",
        help="write a helix bead phantom JSON",
        description="Write a helix phantom: beads on a helix about z, two sizes in a de Bruijn "
        "code so that their order is unambiguous.",
    )
    make.add_argument("-o", "--output", required=True, help="phantom JSON file to write")
    make.add_argument("--beads", type=count, default=24)
    make.add_argument("--radius", type=positive, default=40.0, help="helix radius in mm (default 40)")
    make.add_argument("--height", type=positive, default=120.0, help="helix height in mm (default 120)")
    make.add_argument("--turns", type=finite, default=2.0)
    make.add_argument(
        "--diameters",
        type=positive,
        nargs=2,
        default=(3.0, 5.0),
        metavar=("SMALL", "LARGE"),
        help="bead diameters in mm (default 3 5)",
    )
    make.add_argument("--center", type=finite, nargs=3, default=(0.0, 0.0, 0.0), metavar=("X", "Y", "Z"))
    make.add_argument("--sdd", type=positive, help="known source-to-detector distance (mm), with --pixel-spacing")
    make.add_argument(
        "--pixel-spacing", type=positive, nargs=2, metavar=("SU", "SV"), help="known detector pixel size (mm)"
    )
    make.add_argument("--mirrored", choices=("yes", "no", "auto"), default="auto", help="known detector mirroring")
    make.set_defaults(run=_run_make_phantom)

    for name, handler, helptext in (
        ("detect", _run_detect, "find bead shadows in every view; write detections.json and overlay PNGs"),
        ("estimate", _run_estimate, "estimate every view's projection matrix; write a new scan folder"),
    ):
        sub = commands.add_parser(name, help=helptext, description=helptext)
        sub.add_argument("scan", help="scan folder (scan.json; views may lack projection matrices)")
        sub.add_argument("--phantom", required=True, help="phantom JSON (or 'helix' for the shipped one)")
        sub.add_argument("-o", "--output", required=True, help="output folder")
        sub.add_argument(
            "--points", help='manual 2-D points JSON: {"views": {"<view>": [{"u": px, "v": px, "bead": optional}]}}'
        )
        sub.add_argument("--no-auto", action="store_true", help="use only the manual points (no automatic detection)")
        sub.add_argument(
            "--bead-radius-px",
            type=positive,
            nargs=2,
            metavar=("MIN", "MAX"),
            help="shadow radius range in pixels (default: from bead sizes and pixel spacing)",
        )
        sub.add_argument("--overwrite", action="store_true", help="replace existing outputs in the output folder")
        if name == "estimate":
            sub.add_argument("--detections", help="detections.json from `ixgs poses detect` (skips detection)")
            sub.add_argument(
                "--inpaint",
                action=argparse.BooleanOptionalAction,
                default=True,
                help="fill the bead shadows in the written views (default on)",
            )
            sub.add_argument(
                "--refine-intrinsics",
                action="store_true",
                help="also refine known intrinsics (shared by all views); unknown ones always are",
            )
            sub.add_argument(
                "--max-rms", type=positive, default=1.0, help="fail views above this reprojection RMS (px, default 1)"
            )
        sub.set_defaults(run=handler)


def _run_make_phantom(args) -> int:
    from ixgs_engine.poses.phantom import CarmIntrinsics, helix_phantom, phantom_from_dict, write_phantom

    intrinsics = None
    if (args.sdd is None) != (args.pixel_spacing is None):
        raise IXGSError("give --sdd and --pixel-spacing together (known intrinsics), or neither")
    if args.sdd is not None:
        mirrored = {"yes": True, "no": False, "auto": None}[args.mirrored]
        intrinsics = CarmIntrinsics(args.sdd, tuple(args.pixel_spacing), None, mirrored)
    phantom = helix_phantom(
        args.beads,
        args.radius,
        args.height,
        args.turns,
        tuple(args.diameters),
        tuple(args.center),
        Path(args.output).stem,
        intrinsics,
    )
    phantom_from_dict(phantom.to_dict(), Path(args.output))  # the reader's checks: never write an unusable phantom
    path = write_phantom(args.output, phantom)
    print(f"helix phantom: {phantom.count} beads, diameters {sorted(set(phantom.diameters.tolist()))} mm -> {path}")
    return 0


def _prepare(args):
    """Scan, phantom and how to find the beads, from the command line."""
    from ixgs_engine.poses.calibrate import DetectionOptions
    from ixgs_engine.poses.detection import read_points
    from ixgs_engine.poses.phantom import read_phantom

    scan = read_scan(args.scan, require_poses=False)
    phantom = read_phantom(args.phantom)
    points = read_points(args.points, len(scan.views), phantom.count) if args.points else {}
    radius = tuple(args.bead_radius_px) if args.bead_radius_px else None
    return scan, phantom, DetectionOptions(points, not args.no_auto, radius)


def _print_problems(views) -> None:
    for view in views:
        if view.message:
            print(f"view {view.view} ({view.image}): {view.message}")


def _run_detect(args) -> int:
    from ixgs_engine.poses.calibrate import detect_scan

    started = time.perf_counter()
    scan, phantom, options = _prepare(args)
    found, path = detect_scan(scan, phantom, args.output, options, args.overwrite, progress_bar)
    _print_problems(found)
    total = sum(len(v.detections) for v in found)
    print(
        f"detected {total} beads in {len(found)} views ({sum(1 for v in found if not v.message)} usable) in "
        f"{time.perf_counter() - started:.1f} s -> {path}"
    )
    return 0


def _run_estimate(args) -> int:
    from ixgs_engine.poses.calibrate import calibrate_scan, reprojection_summary

    started = time.perf_counter()
    scan, phantom, options = _prepare(args)
    calibration = calibrate_scan(
        scan,
        phantom,
        args.output,
        options,
        detections=args.detections,
        inpaint_beads=args.inpaint,
        refine_intrinsics=args.refine_intrinsics,
        max_rms_px=args.max_rms,
        overwrite=args.overwrite,
        stage_progress=progress_bar,
    )
    _print_problems(pose for pose in calibration.poses if not pose.ok)
    median, worst = reprojection_summary(calibration)
    print(
        f"estimated {len(calibration.calibrated)}/{len(calibration.poses)} views, reprojection RMS median "
        f"{median:.3f} px (worst {worst:.3f} px), in {time.perf_counter() - started:.1f} s -> {calibration.scan_file}"
    )
    return 0
