"""``ixgs standardize make-pairs | train | apply``: the radiographic standardization commands."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ixgs_engine.cli.options import count, finite, index, positive
from ixgs_engine.device import resolve_device
from ixgs_engine.errors import IXGSError
from ixgs_engine.io.scan import check_output_apart
from ixgs_engine.progress import progress_bar
from ixgs_engine.standardize.model import CONFIGS, get_config
from ixgs_engine.standardize.pairs import DEFAULT_BONE_WEIGHT, PAIRS_FILE


def add_commands(subparsers) -> None:
    """Register ``ixgs standardize`` and its three subcommands."""
    parser = subparsers.add_parser(
        "standardize",
        help="radiographic standardization (Pix2Pix): make training pairs, train, apply",
        description="Map raw radiographs to bone-enhanced DRR line integrals before reconstruction "
        "(docs/standardization.md).",
    )
    commands = parser.add_subparsers(dest="standardize_command", required=True)
    _add_make_pairs(commands)
    _add_train(commands)
    _add_apply(commands)
    _add_preview(commands)


def _add_make_pairs(commands) -> None:
    parser = commands.add_parser(
        "make-pairs",
        help="training pairs (radiograph, bone-enhanced DRR) from a CT or the spine phantom",
        description="Simulate realistic radiographs (polychromatic spectrum, scatter, noise, heel effect, "
        "collimation, processing) and bone-enhanced DRRs of a CT or the embedded spine phantom at random C-arm "
        "poses; or, with --scan, pair a scan's real X-rays with DRRs of a CT registered to it.",
    )
    parser.add_argument("volume", nargs="?", help="CT file (HU; NIfTI, NRRD, MHA, DICOM folder); default: --phantom")
    parser.add_argument("-o", "--output", required=True, help="pairs folder to write")
    parser.add_argument(
        "--phantom", choices=("spine",), default="spine", help="embedded phantom when no volume is given"
    )
    parser.add_argument("--phantom-size", type=count, default=64, help="phantom voxels per side (default 64)")
    parser.add_argument(
        "--phantom-variants",
        type=count,
        default=4,
        help="phantom anatomies (texture seed, stretch, rotation) to spread the views over (default 4)",
    )
    parser.add_argument("--variation", type=finite, default=0.12, help="phantom shape variation (default 0.12)")
    parser.add_argument(
        "--scan", help="scan folder of real X-rays with calibrated poses (the CT must be registered to it)"
    )
    parser.add_argument("--views", type=count, default=64, help="simulated pairs (default 64)")
    parser.add_argument(
        "--detector-pixels", type=count, default=128, help="simulated detector pixels per side (default 128)"
    )
    parser.add_argument(
        "--pixel-size", type=positive, default=3.2, help="simulated detector pixel size in mm (default 3.2)"
    )
    parser.add_argument(
        "--bone-weight",
        type=finite,
        default=DEFAULT_BONE_WEIGHT,
        help=f"bone attenuation factor of the targets (default {DEFAULT_BONE_WEIGHT})",
    )
    parser.add_argument(
        "--units",
        choices=("auto", "hu", "mu"),
        default="auto",
        help="CT values: HU or attenuation 1/mm at 70 keV (auto: HU when its minimum is below -500)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pairs folder")
    parser.set_defaults(run=_run_make_pairs)


def _load_hu(path: str, units: str):
    from ixgs_engine.io.volumes import read_volume, require_finite
    from ixgs_engine.phantoms import attenuation_to_hu

    volume = require_finite(read_volume(path), path)
    if units == "auto":
        units = "hu" if float(np.min(volume.array)) < -500 else "mu"
    return volume if units == "hu" else attenuation_to_hu(volume)


def _run_make_pairs(args) -> int:
    from ixgs_engine.standardize.pairs import make_pairs_from_scan, make_simulated_pairs, phantom_variant

    started = time.perf_counter()
    output = Path(args.output)
    if (output / PAIRS_FILE).exists() and not args.overwrite:
        raise IXGSError(f"{output} already holds pairs; pass --overwrite to replace them or choose another folder")
    device = str(resolve_device(args.device))
    if args.scan:
        if args.volume is None:
            raise IXGSError("--scan needs the patient's CT (registered to the scan's world frame) as VOLUME")
        path = make_pairs_from_scan(
            output,
            _load_hu(args.volume, args.units),
            args.scan,
            args.bone_weight,
            device,
            progress_bar("rendering targets"),
        )
        what = f"real X-rays of {args.scan} with DRRs of {args.volume}"
    else:
        if args.views < 2 or args.phantom_variants < 1 or args.phantom_size < 2:
            raise IXGSError("--views and --phantom-size must be at least 2 and --phantom-variants at least 1")
        if args.volume is not None:
            cts = [(Path(args.volume).name, _load_hu(args.volume, args.units))]
        else:
            cts = [
                (f"spine-{args.seed + k}", phantom_variant(args.phantom_size, args.seed + k, args.variation))
                for k in range(args.phantom_variants)
            ]
        path = make_simulated_pairs(
            output,
            cts,
            args.views,
            args.seed,
            args.detector_pixels,
            args.pixel_size,
            args.bone_weight,
            device,
            progress_bar("simulating", "pair"),
        )
        what = f"{args.views} simulated views of {len(cts)} CT(s)"
    print(f"made pairs from {what} in {time.perf_counter() - started:.1f} s -> {path}")
    return 0


def _add_train(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train the Pix2Pix standardization model on a pairs folder",
        description="Train Pix2Pix (U-Net + PatchGAN, GAN + 100 L1, Adam 2e-4) on a pairs folder; writes the model "
        "file and, beside it, log.jsonl, checkpoint.pt and validation/ images with held-out L1/PSNR.",
    )
    parser.add_argument("pairs", help="pairs folder (from `ixgs standardize make-pairs` or real pairs)")
    parser.add_argument("-o", "--output", required=True, help="model file to write (e.g. models/standardize.pt)")
    parser.add_argument(
        "--config",
        choices=tuple(CONFIGS),
        default="light",
        help="light = minutes on a CPU, paper = pix2pix's unet_256 for GPUs (default light)",
    )
    parser.add_argument("--steps", type=count, help="training steps (default: the config's)")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.pt beside the model file")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from ixgs_engine.standardize.training import train_model

    summary = train_model(
        args.pairs,
        args.output,
        get_config(args.config),
        args.steps,
        args.resume,
        args.device,
        args.seed,
        progress_bar("training", "step"),
    )
    print(summary.line())
    return 0


def _add_apply(commands) -> None:
    parser = commands.add_parser(
        "apply",
        help="standardize a scan folder's X-rays into a new scan of line integrals",
        description="Run a trained model on every view of a scan and write a new scan folder (line integrals of "
        "the bone-enhanced map, same geometry) ready for `ixgs reconstruct`.",
    )
    parser.add_argument("model", help="model file from `ixgs standardize train`")
    parser.add_argument("scan", help="scan folder of raw radiographs")
    parser.add_argument("-o", "--output", required=True, help="new scan folder to write")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing scan in the output folder")
    parser.set_defaults(run=_run_apply)


def _run_apply(args) -> int:
    from ixgs_engine.standardize.inference import standardize_scan

    started = time.perf_counter()
    check_output_apart(args.output, args.scan, "the standardized scan")
    if (Path(args.output) / "scan.json").exists() and not args.overwrite:
        raise IXGSError(f"{args.output} already holds a scan; pass --overwrite to replace it or choose another folder")
    path, views = standardize_scan(args.model, args.scan, args.output, args.device, progress_bar("standardizing"))
    print(f"standardized {views} views with {args.model} in {time.perf_counter() - started:.1f} s -> {path}")
    return 0


def _add_preview(commands) -> None:
    parser = commands.add_parser(
        "preview",
        help="standardize one view of a scan into an image file",
        description="Run a trained model on one view of a scan and write the standardized image (float TIFF, "
        "line integrals of the bone-enhanced map): what IXGS Standardize shows beside the raw X-ray.",
    )
    parser.add_argument("model", help="model file from `ixgs standardize train`")
    parser.add_argument("scan", help="scan folder of raw radiographs (poses not needed)")
    parser.add_argument("--view", type=index, default=0, help="the view to standardize (default 0)")
    parser.add_argument("-o", "--output", required=True, help="image file to write (.tif)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.set_defaults(run=_run_preview)


def _run_preview(args) -> int:
    from ixgs_engine.io.scan import load_view_pixels, read_scan
    from ixgs_engine.io.xray_images import write_xray_image
    from ixgs_engine.standardize.inference import apply_model

    started = time.perf_counter()
    scan = read_scan(args.scan, require_poses=False)
    if args.view >= len(scan.views):
        raise IXGSError(f"--view {args.view}: {args.scan} has views 0 to {len(scan.views) - 1}")
    standardized = apply_model(args.model, load_view_pixels(scan, args.view)[None], args.device)[0]
    write_xray_image(args.output, standardized)
    print(f"standardized view {args.view} with {args.model} in {time.perf_counter() - started:.1f} s -> {args.output}")
    return 0
