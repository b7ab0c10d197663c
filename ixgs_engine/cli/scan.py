"""Scan commands: ``simulate`` (DRRs of a volume or phantom into a scan folder) and ``info``
(a scan's views, geometry, ROI and problems)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ixgs_engine.cli.options import count, finite, not_negative, positive
from ixgs_engine.device import check_memory, resolve_device
from ixgs_engine.errors import IXGSError
from ixgs_engine.progress import progress_bar


def add_commands(subparsers) -> None:
    """Register ``simulate`` and ``info``."""
    _add_simulate(subparsers)
    _add_info(subparsers)


def _add_simulate(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate X-rays (line integrals) of a volume or an embedded phantom into a scan folder",
        description="Render DRRs of a CT/attenuation volume or an embedded phantom at C-arm poses and write a "
        "scan folder (float32 TIFF line integrals, scan.json) with the ground-truth attenuation volume.",
    )
    parser.add_argument("volume", nargs="?", help="volume file (NIfTI, NRRD, MHA, DICOM folder); default: --phantom")
    parser.add_argument("-o", "--output", required=True, help="scan folder to write")
    parser.add_argument(
        "--phantom", choices=("spine", "shepp-logan"), default="spine", help="embedded phantom (default spine)"
    )
    parser.add_argument("--phantom-size", type=count, default=128, help="phantom voxels per side (default 128)")
    parser.add_argument("--phantom-spacing", type=positive, default=1.5, help="phantom voxel size in mm (default 1.5)")
    parser.add_argument(
        "--units",
        choices=("auto", "hu", "mu"),
        default="auto",
        help="values of a volume file: Hounsfield units or attenuation 1/mm (auto: HU when its minimum is below -500)",
    )
    parser.add_argument("--views", type=count, default=25, help="number of X-rays (default 25)")
    parser.add_argument(
        "--orbit", choices=("arbitrary", "circular"), default="arbitrary", help="pose pattern (default arbitrary)"
    )
    parser.add_argument(
        "--primary-range",
        type=finite,
        nargs=2,
        default=(-100.0, 100.0),
        metavar=("MIN", "MAX"),
        help="arbitrary orbit: LAO(+)/RAO(-) primary angles in deg (default -100 100)",
    )
    parser.add_argument(
        "--secondary-range",
        type=finite,
        nargs=2,
        default=(-30.0, 30.0),
        metavar=("MIN", "MAX"),
        help="arbitrary orbit: cranial(+)/caudal(-) secondary angles in deg (default -30 30)",
    )
    parser.add_argument(
        "--isocenter-jitter",
        type=not_negative,
        default=0.0,
        help="arbitrary orbit: random isocentre shift up to this (mm)",
    )
    parser.add_argument(
        "--arc",
        type=finite,
        nargs=2,
        default=(0.0, 360.0),
        metavar=("START", "STOP"),
        help="circular orbit: primary-angle arc in deg (default 0 360)",
    )
    parser.add_argument(
        "--isocenter", type=finite, nargs=3, metavar=("X", "Y", "Z"), help="world mm (default: volume centre)"
    )
    parser.add_argument("--sid", type=positive, default=600.0, help="source-to-isocentre distance in mm (default 600)")
    parser.add_argument("--sdd", type=positive, default=1000.0, help="source-to-detector distance in mm (default 1000)")
    parser.add_argument(
        "--detector-pixels", type=count, nargs=2, default=(256, 256), metavar=("W", "H"), help="default 256 256"
    )
    parser.add_argument(
        "--pixel-size",
        type=positive,
        nargs="+",
        default=[1.6],
        metavar="MM",
        help="detector pixel size (su [sv]) in mm, default 1.6",
    )
    parser.add_argument(
        "--detector-offset", type=finite, nargs=2, default=(0.0, 0.0), metavar=("U", "V"), help="panel offset in mm"
    )
    parser.add_argument(
        "--photons", type=positive, help="add Poisson noise for this many unattenuated photons per pixel"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for poses and noise (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing scan in the output folder")
    parser.set_defaults(run=_run_simulate)


def _load_attenuation(args) -> tuple:
    from ixgs_engine.io.volumes import read_volume, require_finite
    from ixgs_engine.phantoms import hu_to_attenuation, make_phantom

    if args.volume is None:
        size = args.phantom_size
        hu = make_phantom(args.phantom, (size, size, size), args.phantom_spacing)
        return hu_to_attenuation(hu), f"{args.phantom} phantom {size}^3 at {args.phantom_spacing} mm"
    volume = require_finite(read_volume(args.volume), args.volume)
    units = args.units
    if units == "auto":
        units = "hu" if float(np.min(volume.array)) < -500 else "mu"
    if units == "hu":
        volume = hu_to_attenuation(volume)
    return volume, f"{args.volume} ({'HU' if units == 'hu' else 'attenuation 1/mm'})"


def _run_simulate(args) -> int:
    from ixgs_engine.geometry.carm import Detector
    from ixgs_engine.simulate import CarmSetup, arbitrary_poses, circular_poses, simulate_scan, simulation_bytes

    started = time.perf_counter()
    output = Path(args.output)
    if (output / "scan.json").exists() and not args.overwrite:
        raise IXGSError(f"{output} already holds a scan; pass --overwrite to replace it or choose another folder")
    if len(args.pixel_size) not in (1, 2):
        raise IXGSError("--pixel-size takes one value (square pixels) or two (su sv)")
    width, height = args.detector_pixels
    phantom = args.volume is None
    check_memory(
        simulation_bytes(args.views, width, height, args.phantom_size**3 if phantom else 0),
        f"{args.views} views of {width}x{height} pixels" + (f" of a {args.phantom_size}^3 phantom" if phantom else ""),
        "give fewer --views or --detector-pixels" + (" or a smaller --phantom-size" if phantom else ""),
    )
    attenuation, source = _load_attenuation(args)
    isocenter = tuple(args.isocenter) if args.isocenter else tuple(attenuation.center())
    spacing = tuple(args.pixel_size) * (2 // len(args.pixel_size))
    setup = CarmSetup(args.sid, args.sdd, Detector(tuple(args.detector_pixels), spacing, tuple(args.detector_offset)))
    if args.orbit == "circular":
        poses = circular_poses(args.views, tuple(args.arc), isocenter)
    else:
        poses = arbitrary_poses(
            args.views,
            tuple(args.primary_range),
            tuple(args.secondary_range),
            args.isocenter_jitter,
            isocenter,
            args.seed,
        )
    path = simulate_scan(
        output,
        attenuation,
        poses,
        setup,
        str(resolve_device(args.device)),
        progress_bar("projecting"),
        args.photons,
        args.seed,
        circular=args.orbit == "circular",
    )
    width, height = setup.detector.pixels
    print(
        f"simulated {args.views} {args.orbit} views {width}x{height} of {source} in "
        f"{time.perf_counter() - started:.1f} s -> {path}"
    )
    return 0


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="summarize a scan folder and list its problems",
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
