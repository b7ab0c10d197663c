"""Self-calibration benchmark: IXGS with and without pose refinement on the real-CT benchmark's
views with a per-view calibration error.

The case is ``bench_real_ct.py``'s ``25`` (RTK Joseph DRRs of the chest box, 25 arbitrary poses).
Each level gives every view a rigid error about the box centre: a rotation vector and a
translation drawn per axis from normal distributions with the level's sd (degrees, mm), seeded,
so every run of a level sees the same error. The X-rays stay those of the true poses; the scan
carries the wrong matrices. Each row reconstructs with ``ixgs reconstruct``'s default on this
machine (``--preset``, ``--set`` change it) and ``poses.mode`` off or on, and is scored as the
real-CT benchmark scores IXGS (whole box and interior), the written volume resampled onto the truth's grid.
Beside them, per level, the classical bar on the same wrong matrices: ``bench_real_ct.py``'s
``rtkasdpocs`` (ASD-POCS on RTK's SART, on the truth's grid).
With refinement, the recovered pose error is the residual motion between the refined and the
true matrices, per view: raw, and with the views' mean removed (the gauge: a motion of the whole
scene that no view can see). Results per row in ``--workdir``; ``--report`` writes
``benchmarks/results/pose_refinement.md``, ``.json`` and ``.png`` (interior PSNR and the
recovered pose error against the calibration error).

    python benchmarks/bench_pose_refinement.py --levels 0 0.3:0.5 1:2 2:4 --modes off on
    python benchmarks/bench_pose_refinement.py --levels 0 1:2 --modes on --tag reg2 --set poses.registration_iterations=2
    python benchmarks/bench_pose_refinement.py --report
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_real_ct import BOX_MM, load_case, prepare, rtk_asd_pocs_anchor, scores
from bench_reconstruct import parse_overrides
from common import RESULTS, host_description, load_average, set_threads, utc_now

from ixgs_engine.device import resolve_device
from ixgs_engine.evaluate.resample import resample_to
from ixgs_engine.experiments.sweeps import applied_corrections, calibration_errors
from ixgs_engine.io.scan import read_scan
from ixgs_engine.io.scan_poses import write_scan_with_poses
from ixgs_engine.io.volumes import read_volume
from ixgs_engine.reconstruct.config import preset
from ixgs_engine.reconstruct.pipeline import reconstruct_scan
from ixgs_engine.reconstruct.pose_refinement import residual_pose_error
from ixgs_engine.reconstruct.presets import DEFAULT_PRESET, resolve_preset

CASE = "25"
ERROR_SEED = 32
ANCHOR = "rtkasdpocs"


def level_name(rotation_deg: float, translation_mm: float) -> str:
    return f"{rotation_deg:g}deg-{translation_mm:g}mm"


def perturbed_scan(workdir: Path, rotation_deg: float, translation_mm: float) -> tuple[Path, np.ndarray]:
    """The case's scan with the level's wrong matrices (written once), and the error motions."""
    folder, truth, _, matrices = load_case(workdir, CASE)
    errors = calibration_errors(len(matrices), rotation_deg, translation_mm, truth.center(), ERROR_SEED)
    target = workdir / f"poses-{level_name(rotation_deg, translation_mm)}" / "scan"
    if not (target / "scan.json").exists():
        scan = read_scan(folder)
        wrong = np.einsum("vij,vjk->vik", matrices, errors)
        note = {"pose_error": {"rotation_sd_deg": rotation_deg, "translation_sd_mm": translation_mm}}
        write_scan_with_poses(scan, target, list(wrong), note)
    return target, errors


def run_anchor(workdir: Path, level: tuple[float, float], itk_threads: int) -> dict:
    """The classical bar (RTK ASD-POCS) on the level's wrong matrices, the truth's grid."""
    scan, _ = perturbed_scan(workdir, *level)
    _, truth, projections, _ = load_case(workdir, CASE)
    wrong = read_scan(scan).matrices
    load = load_average()
    result = rtk_asd_pocs_anchor(projections, np.stack(wrong), truth.grid, (slice(None),) * 3, truth)
    return {
        "level": level_name(*level),
        "rotation_sd_deg": level[0],
        "translation_sd_mm": level[1],
        "mode": ANCHOR,
        **result,
        "host": host_description("cpu", itk_threads, load),
        "measured": utc_now(),
    }


def run_row(
    workdir: Path, level: tuple[float, float], mode: str, preset_name: str, overrides: dict, itk_threads: int
) -> dict:
    scan, errors = perturbed_scan(workdir, *level)
    _, truth, _, true_matrices = load_case(workdir, CASE)
    device = resolve_device("auto")
    name = resolve_preset(preset_name, device)
    config = preset(name, **overrides, **{"poses.mode": mode})
    trainers = []
    load = load_average()
    began = time.perf_counter()
    output = workdir / f"poses-{level_name(*level)}" / f"ixgs-{mode}"
    summary, _ = reconstruct_scan(
        scan,
        output,
        config,
        device=str(device),
        voxel_size=BOX_MM,
        on_trainer=trainers.append,
        preset_name=name,
        overwrite=True,
    )
    wall = time.perf_counter() - began
    trainer = trainers[0]
    # The written volume (the ROI's grid) resampled onto the truth's: every row the same way.
    volume = resample_to(read_volume(summary.volume_path), truth.grid)
    row = {
        "level": level_name(*level),
        "rotation_sd_deg": level[0],
        "translation_sd_mm": level[1],
        "mode": mode,
        **scores(volume, truth),
        "max_over_truth": float(volume.array.max() / truth.array.max()),
        "seconds": wall,
        "host": host_description(str(device), itk_threads, load),
        "measured": utc_now(),
        "settings": {"preset": name, "overrides": overrides},
    }
    if trainer.corrections is not None:
        row["poses"] = {k: v for k, v in summary.poses.items() if k != "views"}
        motions = applied_corrections(scan, output, summary.poses)
        row["recovered"] = residual_pose_error(errors, motions, truth.center(), true_matrices)
        row["recovered_by_training"] = residual_pose_error(
            errors, trainer.corrections.world_motions(trainer.data.scene), truth.center(), true_matrices
        )
    return row


def _recovered(error: dict, kind: str) -> str:
    """'deg / mm (across / along)' of one residual pose error (``residual_pose_error``)."""
    text = f"{error[f'median_rotation_deg_{kind}']:.3f} / {error[f'median_translation_mm_{kind}']:.3f}"
    if f"median_translation_mm_{kind}_across" in error:
        text += f" ({error[f'median_translation_mm_{kind}_across']:.2f} / {error[f'median_translation_mm_{kind}_along']:.2f})"
    return text


def _label(row: dict) -> str:
    """The row's method: IXGS's poses mode (with its variant's tag) or the anchor."""
    if row["mode"] == ANCHOR:
        return "RTK ASD-POCS"
    return f"IXGS {row['mode']}" + (f" ({row['tag']})" if row.get("tag") else "")


def report(workdir: Path, output: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(workdir.glob("poses-*/*.json"))]
    if not rows:
        raise SystemExit(f"no results in {workdir}: run bench_pose_refinement.py first")
    exact = {_label(r): r for r in rows if r["rotation_sd_deg"] == 0 and r["translation_sd_mm"] == 0}
    base = exact.get("IXGS off")
    lines = [
        "# Pose refinement on the real-CT benchmark (case 25, per-view calibration error)",
        "",
        "Made by `benchmarks/bench_pose_refinement.py`; PSNR in dB against the truth (IXGS's written volume resampled",
        "onto the truth's grid, so below `real_ct.md`'s figures, which score on the truth's own grid; RTK ASD-POCS",
        "reconstructs on the truth's grid); Δ against IXGS on the exact poses without refinement, and against the",
        "method's own exact-pose row; recovered error: median over views of the residual motion, gauge removed:",
        "rotation (deg), shift of the box centre (mm) and its parts across / along each view's ray; after the",
        "training alone and after the registrations between the final passes (the refined scan).",
        "",
        "| error sd (deg / mm) | method | PSNR / SSIM | interior PSNR / SSIM | Δ interior vs IXGS exact off | Δ vs own exact |"
        " max / truth max | given (deg / mm) | recovered by training | recovered (deg / mm, across / along) | s | host |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["rotation_sd_deg"], r["translation_sd_mm"], _label(r))):
        own = exact.get(_label(r))
        delta = f"{r['psnr_interior_db'] - base['psnr_interior_db']:+.2f}" if base else ""
        own_delta = f"{r['psnr_interior_db'] - own['psnr_interior_db']:+.2f}" if own else ""
        got, trained = r.get("recovered", {}), r.get("recovered_by_training", {})
        given = f"{got['median_rotation_deg_given']:.2f} / {got['median_translation_mm_given']:.2f}" if got else ""
        by_training = _recovered(trained, "gauge_removed") if trained else ""
        recovered = _recovered(got, "gauge_removed") if got else ""
        lines.append(
            f"| {r['rotation_sd_deg']:g} / {r['translation_sd_mm']:g} | {_label(r)} | {r['psnr_db']:.2f} / "
            f"{r['ssim']:.3f} | {r['psnr_interior_db']:.2f} / {r['ssim_interior']:.3f} | {delta} | {own_delta} | "
            f"{r['max_over_truth']:.2f} | {given} | {by_training} | {recovered} | {r['seconds']:.0f} | "
            f"{r['host']['device_name']}, "
            f"torch {r['host']['torch_threads']} / ITK {r['host']['itk_threads']} threads |"
        )
    output.mkdir(parents=True, exist_ok=True)
    (output / "pose_refinement.md").write_text("\n".join(lines) + "\n")
    (output / "pose_refinement.json").write_text(json.dumps(rows, indent=1))
    plot(rows, output / "pose_refinement.png")
    print("\n".join(lines))


def plot(rows: list[dict], path: Path) -> None:
    """Interior PSNR of each method, and IXGS's recovered pose error, against the calibration error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({(r["rotation_sd_deg"], r["translation_sd_mm"]) for r in rows})
    names = [f"{a:g}° / {b:g} mm" for a, b in levels]
    figure, (quality, error) = plt.subplots(1, 2, figsize=(11, 4))
    for label in sorted({_label(r) for r in rows}):
        points = [(levels.index((r["rotation_sd_deg"], r["translation_sd_mm"])), r) for r in rows if _label(r) == label]
        points.sort(key=lambda p: p[0])
        quality.plot([i for i, _ in points], [r["psnr_interior_db"] for _, r in points], "o-", label=label)
        recovered = [(i, r["recovered"]) for i, r in points if "recovered" in r]
        if recovered:
            xs = [i for i, _ in recovered]
            error.plot(xs, [e["median_rotation_deg_gauge_removed"] for _, e in recovered], "o-", label=f"{label}: deg")
            error.plot(
                xs, [e["median_translation_mm_gauge_removed"] for _, e in recovered], "s--", label=f"{label}: mm"
            )
    given = [
        (levels.index((r["rotation_sd_deg"], r["translation_sd_mm"])), r["recovered"]) for r in rows if "recovered" in r
    ]
    for i, e in sorted({i: e for i, e in given}.items()):
        error.plot([i], [e["median_rotation_deg_given"]], "kx")
        error.plot([i], [e["median_translation_mm_given"]], "k+")
    quality.set(xticks=range(len(levels)), xticklabels=names, xlabel="per-view error sd", ylabel="interior PSNR (dB)")
    error.set(
        xticks=range(len(levels)),
        xticklabels=names,
        xlabel="per-view error sd",
        yscale="log",
        ylabel="median pose error after refinement (x, +: given)",
    )
    quality.legend()
    error.legend(fontsize=7)
    quality.grid(alpha=0.3)
    error.grid(alpha=0.3)
    figure.suptitle("Pose refinement, real-CT case 25 (RTK Joseph DRRs, 25 arbitrary poses)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--levels", nargs="+", default=["0", "0.3:0.5", "1:2", "2:4"], help="ROT_DEG:SHIFT_MM per-axis sd"
    )
    parser.add_argument("--modes", nargs="*", choices=("off", "on", "auto"), default=["off", "on"])
    parser.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=True, help="RTK ASD-POCS per level")
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="IXGS setting overrides")
    parser.add_argument("--tag", default="", help="name suffix for an IXGS variant's rows (ixgs-MODE-TAG)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-real-ct"))
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    itk_threads = set_threads(args.threads)
    if args.report:
        report(args.workdir, args.output)
        return
    prepare(args.workdir, [CASE])
    overrides = parse_overrides(args.set)
    for text in args.levels:
        rotation, _, shift = text.partition(":")
        level = (float(rotation), float(shift or 0.0))
        folder = args.workdir / f"poses-{level_name(*level)}"
        runs = [(f"ixgs-{mode}" + (f"-{args.tag}" if args.tag else ""), mode) for mode in args.modes]
        for name, mode in runs + ([(ANCHOR, ANCHOR)] if args.anchor else []):
            path = folder / f"{name}.json"
            if path.exists() and not args.rerun:
                continue
            if mode == ANCHOR:
                row = run_anchor(args.workdir, level, itk_threads)
            else:
                row = run_row(args.workdir, level, mode, args.preset, overrides, itk_threads) | {"tag": args.tag}
            path.write_text(json.dumps(row, indent=1))
            print(json.dumps({k: v for k, v in row.items() if k not in ("settings", "curve")}))


if __name__ == "__main__":
    main()
