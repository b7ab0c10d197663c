"""Benchmark fiducial-based poses: a helix bead phantom beside the spine phantom, seen at
arbitrary C-arm poses; `ixgs poses estimate` recovers every view's matrix from the bead
shadows alone (no nominal geometry), then the scan is reconstructed from the estimated and from
the true matrices with the same settings.

Simulation: spine phantom line integrals (our Joseph projector) plus analytic bead shadows
(mu_steel x exact chord per sub-pixel ray), Poisson noise; beads partly hidden by bone and by
one another, some views lose beads off the detector edge. Reported: per-view RMS distance (px)
between the beads projected by the estimated and by the true matrix (acceptance: < 0.5 px),
the same for a phantom file without intrinsics (DLT + shared-intrinsics refinement), and 3-D
PSNR/SSIM of three reconstructions (fast preset, same iterations and seed):
  A true matrices + inpainted views, B estimated matrices + inpainted views (B - A: the cost of
  estimated poses; acceptance: within 1 dB), C true matrices + bead-free views (A - C: what the
  inpainting leaves).

    OMP_NUM_THREADS=1 python benchmarks/bench_poses.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, host_description, load_average, save_results, set_threads, utc_now

from ixgs_engine.cli import main as ixgs
from ixgs_engine.evaluate.metrics import psnr_3d, ssim_3d
from ixgs_engine.geometry.carm import Detector
from ixgs_engine.geometry.projection import project_points
from ixgs_engine.io.scan import read_scan, write_scan
from ixgs_engine.io.xray_images import read_xray_image
from ixgs_engine.phantoms import hu_to_attenuation, make_phantom
from ixgs_engine.poses.correspondence import projected_beads
from ixgs_engine.poses.phantom import CarmIntrinsics, helix_phantom, write_phantom
from ixgs_engine.poses.simulation import write_bead_scan
from ixgs_engine.reconstruct.config import preset
from ixgs_engine.reconstruct.pipeline import reconstruct_scan
from ixgs_engine.simulate import CarmSetup, arbitrary_poses, pose_matrices, roi_of_volume

FIELD_OF_VIEW_MM = 192.0
TABLE_HEAD = (
    "# Poses from a bead phantom (helix beside the spine phantom, arbitrary C-arm poses)\n\n"
    "Bead RMS: distance between the beads projected by the estimated and by the true matrix. "
    "A/B/C: fast-preset reconstructions from A true poses + inpainted views, B estimated poses + "
    "inpainted views, C true poses + bead-free views.\n\n"
    "| date (UTC) | host | volume | detector | views | photons | views ok (known K / DLT) "
    "| bead RMS px median / max (known K) | bead RMS px median / max (DLT) | iterations "
    "| PSNR A / B / C dB | B − A dB | SSIM A / B / C | estimate s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def bead_rms(estimated: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    errors = np.linalg.norm(project_points(estimated, points)[0] - project_points(truth, points)[0], axis=1)
    return float(np.sqrt(np.mean(errors**2)))


def estimate(scan: Path, phantom_file: Path, output: Path, truth: np.ndarray, points: np.ndarray) -> dict:
    """Run `ixgs poses estimate`; the per-view bead RMS against the truth."""
    started = time.perf_counter()
    code = ixgs(["poses", "estimate", str(scan), "--phantom", str(phantom_file), "-o", str(output)])
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"ixgs poses estimate failed with code {code}")
    report = json.loads((output / "poses_report.json").read_text())
    estimated = read_scan(output)
    views = estimated.extra["poses"]["source_views"]
    rms = [bead_rms(P, truth[v], points) for P, v in zip(estimated.matrices, views, strict=True)]
    return {
        "seconds": seconds,
        "views_ok": len(views),
        "views": len(truth),
        "bead_rms_px": rms,
        "reported_rms_px": [v["rms_px"] for v in report["views"]],
        "failed": {v["view"]: v["message"] for v in report["views"] if v["status"] != "ok"},
    }


def run(args: argparse.Namespace) -> dict:
    itk_threads = set_threads(args.threads)
    load_at_start = load_average()
    truth = hu_to_attenuation(make_phantom("spine", (args.size,) * 3, FIELD_OF_VIEW_MM / args.size))
    pixel = args.panel / args.detector
    setup = CarmSetup(600.0, 1000.0, Detector((args.detector, args.detector), (pixel, pixel)))
    matrices = pose_matrices(arbitrary_poses(args.views, seed=args.seed), setup)
    shape = (args.detector, args.detector)
    known = CarmIntrinsics(1000.0, (pixel, pixel), None, True)
    phantom = helix_phantom(24, 25.0, 150.0, 2.0, (5.0, 8.0), center=(55.0, 0.0, 0.0), intrinsics=known)
    unknown = helix_phantom(24, 25.0, 150.0, 2.0, (5.0, 8.0), center=(55.0, 0.0, 0.0))
    off_detector = []
    for P in matrices:
        uv, _, _ = projected_beads(P, phantom)
        off_detector.append(int(np.sum(np.any((uv < -0.5) | (uv > args.detector - 0.5), axis=1))))
    roi = roi_of_volume(truth)
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        write_phantom(work / "known.json", phantom)
        write_phantom(work / "unknown.json", unknown)
        _, bead_free = write_bead_scan(
            work / "scan", truth, phantom, matrices, shape, (pixel, pixel), args.photons, args.seed, roi
        )
        known_run = estimate(work / "scan", work / "known.json", work / "estimated", matrices, phantom.positions)
        dlt_run = estimate(work / "scan", work / "unknown.json", work / "estimated-dlt", matrices, phantom.positions)
        estimated = read_scan(work / "estimated")
        views = estimated.extra["poses"]["source_views"]
        inpainted = [read_xray_image(estimated.image_path(i)).pixels for i in range(len(views))]
        write_scan(work / "A", inpainted, list(matrices[views]), roi=roi, pixel_spacing=(pixel, pixel))
        write_scan(work / "C", list(bead_free[views]), list(matrices[views]), roi=roi, pixel_spacing=(pixel, pixel))
        config = preset("fast", iterations=args.iterations, seed=args.seed)
        scores = {}
        for name, folder in (("A", work / "A"), ("B", work / "estimated"), ("C", work / "C")):
            _, volume = reconstruct_scan(
                folder, work / f"rec-{name}", config, "cpu", voxel_size=FIELD_OF_VIEW_MM / args.size
            )
            scores[name] = {"psnr_3d_db": psnr_3d(volume, truth), "ssim_3d": ssim_3d(volume, truth)}
            print(
                f"reconstruction {name}: PSNR {scores[name]['psnr_3d_db']:.2f} dB, SSIM {scores[name]['ssim_3d']:.4f}"
            )
    return {
        "date_utc": utc_now(),
        "host": host_description("cpu", itk_threads, load_at_start),
        "config": {
            "size": args.size,
            "detector": args.detector,
            "panel_mm": args.panel,
            "views": args.views,
            "photons": args.photons,
            "seed": args.seed,
            "iterations": args.iterations,
            "preset": "fast",
            "phantom": "helix 24 beads r25 h150 2 turns, 5/8 mm, centre (55,0,0)",
            "beads_off_detector_per_view": off_detector,
        },
        "known_intrinsics": known_run,
        "dlt": dlt_run,
        "reconstructions": scores,
        "psnr_estimated_minus_true_db": scores["B"]["psnr_3d_db"] - scores["A"]["psnr_3d_db"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="spine phantom voxels per side (192 mm field of view)")
    parser.add_argument("--detector", type=int, default=128, help="detector pixels per side")
    parser.add_argument("--panel", type=float, default=320.0, help="detector side in mm (default 320: 2.5 mm pixels)")
    parser.add_argument("--views", type=int, default=15)
    parser.add_argument("--photons", type=float, default=1e5, help="unattenuated photons per pixel (Poisson noise)")
    parser.add_argument("--iterations", type=int, default=400, help="fast-preset iterations of each reconstruction")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads for torch and ITK (default: all cores)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    record = run(args)
    known, dlt, scores = record["known_intrinsics"], record["dlt"], record["reconstructions"]
    print(json.dumps({k: v for k, v in record.items() if k != "host"}, indent=1))
    psnr = " / ".join(f"{scores[n]['psnr_3d_db']:.2f}" for n in "ABC")
    ssim = " / ".join(f"{scores[n]['ssim_3d']:.4f}" for n in "ABC")
    row = (
        f"| {record['date_utc']} | {record['host']['device_name']} | {args.size}³ | {args.detector}² | {args.views} "
        f"| {args.photons:g} | {known['views_ok']}/{args.views} / {dlt['views_ok']}/{args.views} "
        f"| {np.median(known['bead_rms_px']):.3f} / {np.max(known['bead_rms_px']):.3f} "
        f"| {np.median(dlt['bead_rms_px']):.3f} / {np.max(dlt['bead_rms_px']):.3f} | {args.iterations} "
        f"| {psnr} | {record['psnr_estimated_minus_true_db']:+.2f} | {ssim} | {known['seconds']:.0f} |\n"
    )
    stem = f"poses-{args.size}-{args.detector}-{args.views}v-{args.iterations}it-cpu"
    save_results(args.output, stem, record, "poses.md", TABLE_HEAD, row)


if __name__ == "__main__":
    main()
