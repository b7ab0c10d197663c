"""``ixgs poses make-phantom | detect | estimate``: the command-line face of the pose tools."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ixgs_engine.cli.options import count, finite, positive
from ixgs_engine.errors import IXGSError
from ixgs_engine.io import atomic_output
from ixgs_engine.io.scan import SCAN_FILE, check_output_apart, load_view_pixels, read_scan, write_scan
from ixgs_engine.progress import progress_bar

REPORT_FILE = "poses_report.json"
DETECTIONS_FILE = "detections.json"


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
    """Scan, phantom, manual points and the output folder (never the scan's own folder)."""
    from ixgs_engine.poses.detection import read_points
    from ixgs_engine.poses.phantom import read_phantom

    scan = read_scan(args.scan, require_poses=False)
    phantom = read_phantom(args.phantom)
    output = Path(args.output)
    check_output_apart(output, scan.folder, "the poses' outputs")
    points = read_points(args.points, len(scan.views), phantom.count) if args.points else {}
    if args.no_auto and not points:
        raise IXGSError("--no-auto needs --points (manual points)")
    return scan, phantom, output, points


def _detect_all(args, scan, phantom, points):
    from ixgs_engine.poses.pipeline import detect_view

    progress = progress_bar("detecting beads")
    found = []
    for index in range(len(scan.views)):
        found.append(
            detect_view(
                scan,
                phantom,
                index,
                points.get(index),
                not args.no_auto,
                tuple(args.bead_radius_px) if args.bead_radius_px else None,
            )
        )
        progress(index + 1, len(scan.views))
    return found


def _run_detect(args) -> int:
    from ixgs_engine.poses.overlays import overlay_png
    from ixgs_engine.poses.pipeline import attenuation_image, write_detections

    started = time.perf_counter()
    scan, phantom, output, points = _prepare(args)
    if (output / DETECTIONS_FILE).exists() and not args.overwrite:
        raise IXGSError(f"{output / DETECTIONS_FILE} exists; pass --overwrite or choose another folder")
    found = _detect_all(args, scan, phantom, points)
    write_detections(output / DETECTIONS_FILE, scan, phantom, found)
    for view in found:
        overlay_png(
            output / "overlays" / f"view_{view.view:03d}.png",
            attenuation_image(scan, view.view),
            view.detections,
            caption=f"view {view.view}: {len(view.detections)} detections, confidence {view.confidence:.2f}",
        )
    for view in found:
        if view.message:
            print(f"view {view.view} ({view.image}): {view.message}")
    total = sum(len(v.detections) for v in found)
    print(
        f"detected {total} beads in {len(found)} views ({sum(1 for v in found if not v.message)} usable) in "
        f"{time.perf_counter() - started:.1f} s -> {output / DETECTIONS_FILE}"
    )
    return 0


def _run_estimate(args) -> int:
    import numpy as np

    from ixgs_engine.poses.detection import merge_manual, view_confidence
    from ixgs_engine.poses.inpainting import bead_mask, inpaint
    from ixgs_engine.poses.overlays import overlay_png
    from ixgs_engine.poses.pipeline import attenuation_image, detection_problem, estimate_scan, read_detections

    started = time.perf_counter()
    scan, phantom, output, points = _prepare(args)
    if (output / SCAN_FILE).exists() and not args.overwrite:
        raise IXGSError(f"{output} already holds a scan; pass --overwrite or choose another folder")
    if args.detections:
        found = read_detections(args.detections, scan)
        for view in found:
            view.detections = merge_manual(view.detections, points.get(view.view, []))
            # judged again: manual points may complete a view whose detection failed (and this phantom may differ)
            view.confidence = view_confidence(view.detections, phantom.count)
            view.message = detection_problem(view.detections, phantom)
    else:
        found = _detect_all(args, scan, phantom, points)
    poses = estimate_scan(
        scan,
        phantom,
        found,
        refine_intrinsics=args.refine_intrinsics,
        max_rms_px=args.max_rms,
        progress=progress_bar("estimating poses"),
    )
    good = [p for p in poses if p.ok]
    for pose in poses:
        overlay_png(
            output / "overlays" / f"view_{pose.view:03d}.png",
            attenuation_image(scan, pose.view),
            found[pose.view].detections,
            phantom,
            pose.matrix,
            caption=f"view {pose.view}: "
            + (f"{len(pose.pairs)} beads, RMS {pose.rms_px:.2f} px" if pose.ok else "FAILED"),
        )
    report = {
        "scan": str(scan.folder),
        "phantom": phantom.name,
        "views": [p.to_dict() for p in poses],
        "ok_views": len(good),
        "failed_views": len(poses) - len(good),
    }
    with atomic_output(output / REPORT_FILE) as temp:
        temp.write_text(json.dumps(report, indent=1))
    for pose in poses:
        if not pose.ok:
            print(f"view {pose.view} ({pose.image}): {pose.message}")
    if not good:
        raise IXGSError(f"no view got a pose (see the messages above and {output / REPORT_FILE}); no scan written")
    images = []
    for pose in good:
        pixels = load_view_pixels(scan, pose.view)
        images.append(inpaint(pixels, bead_mask(pose.matrix, phantom, pixels.shape)) if args.inpaint else pixels)
    spacings = {scan.views[p.view].pixel_spacing for p in good}
    extra = {
        "poses": {
            "source_scan": str(scan.folder.resolve()),
            "source_views": [p.view for p in good],
            "phantom": phantom.name,
            "report": REPORT_FILE,
            "inpainted": bool(args.inpaint),
        }
    }
    if scan.i0 is not None:
        extra["i0"] = scan.i0
    path = write_scan(
        output,
        images,
        [p.matrix for p in good],
        scan.image_kind,
        scan.roi,
        spacings.pop() if len(spacings) == 1 else None,
        extra=extra,
    )
    rms = np.array([p.rms_px for p in good])
    print(
        f"estimated {len(good)}/{len(poses)} views, reprojection RMS median {np.median(rms):.3f} px (worst "
        f"{rms.max():.3f} px), in {time.perf_counter() - started:.1f} s -> {path}"
    )
    return 0
