"""The paper's experiments on simulated scans of an embedded phantom, IXGS against RTK SART on
the same scans: how many views are needed (view-count sweep: where is the knee?), and how
robust reconstruction is to the poses (circular vs arbitrary orbits, random vs volume
initialization, pose errors applied to the matrices used for reconstruction while the X-rays
come from the true poses).

Each row simulates its own scan folder, reconstructs it both ways and scores both volumes
against the ground truth (3-D PSNR/SSIM, bone Dice and mean surface distance). Rows are
independent tasks (:mod:`ixgs_engine.experiments.runner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ixgs_engine.device import resolve_device
from ixgs_engine.evaluate.evaluation import volume_metrics
from ixgs_engine.experiments.baselines import run_baseline
from ixgs_engine.experiments.runner import ResultStore, run_tasks
from ixgs_engine.geometry.carm import Detector
from ixgs_engine.geometry.projection import rigid_motion, rigid_motion_between
from ixgs_engine.io.scan import read_scan, write_scan
from ixgs_engine.io.volumes import write_volume
from ixgs_engine.phantoms import hu_to_attenuation, make_phantom
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.reconstruct.config import preset
from ixgs_engine.reconstruct.pipeline import reconstruct_scan
from ixgs_engine.reconstruct.pose_refinement import residual_pose_error
from ixgs_engine.reconstruct.presets import DEFAULT_POSE_MODE
from ixgs_engine.simulate import (
    GROUND_TRUTH_FILE,
    CarmSetup,
    arbitrary_poses,
    circular_poses,
    pose_matrices,
    render_line_integrals,
    roi_of_volume,
)
from ixgs_engine.volume import Volume

FIELD_OF_VIEW_MM = 192.0  # the phantom's field of view, whatever the grid size (as `ixgs demo`)
PANEL_MM = 409.6  # the engine's default simulated panel width (256 x 1.6 mm)
PRIMARY_RANGE = (-100.0, 100.0)  # C-arm primary angles of both orbits (deg)
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class Settings:
    """What every row of an experiment shares."""

    phantom: str = "spine"
    size: int = 64  # phantom voxels per side
    detector: int = 128  # detector pixels per side
    preset: str = "fast"
    iterations: int | None = None  # IXGS iterations (None: the preset's)
    gaussians: int | None = None  # initial Gaussians (None: the preset's)
    sart_iterations: int = 10
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class Row:
    """One configuration: its scan and its IXGS initialization."""

    views: int
    orbit: str = "arbitrary"  # "arbitrary" or "circular"
    init: str = "volume"  # "random" or "volume"
    rotation_noise_deg: float = 0.0
    translation_noise_mm: float = 0.0
    refine_poses: str = DEFAULT_POSE_MODE  # IXGS's --refine-poses

    @property
    def key(self) -> str:
        return (
            f"{self.orbit}-{self.views}v-{self.init}-rot{self.rotation_noise_deg:g}deg"
            f"-shift{self.translation_noise_mm:g}mm-poses{self.refine_poses}"
        )


def perturb_matrices(
    matrices: np.ndarray, rotation_deg: float, translation_mm: float, centre: Sequence[float], seed: int
) -> np.ndarray:
    """Each view's matrix with a pose error: the scene seen rotated by ``rotation_deg`` about a
    random axis through ``centre`` and shifted by ``translation_mm`` in a random direction,
    i.e. ``P' = P T`` with ``T(X) = R (X - c) + c + t``."""
    rng = np.random.default_rng(seed)
    out = []
    for P in matrices:
        axis, direction = rng.normal(size=3), rng.normal(size=3)
        rotation = np.deg2rad(rotation_deg) * axis / np.linalg.norm(axis)
        out.append(P @ rigid_motion(rotation, translation_mm * direction / np.linalg.norm(direction), centre))
    return np.stack(out)


def calibration_errors(
    count: int, rotation_sd_deg: float, translation_sd_mm: float, centre: Sequence[float], seed: int
) -> np.ndarray:
    """Per view a 4x4 world motion ``T(X) = R (X - c) + c + t``, a calibration error: the rotation
    vector and ``t`` drawn per axis with these sd (degrees, mm); a view's wrong matrix is ``P T``."""
    rng = np.random.default_rng(seed)
    motions = []
    for _ in range(count):
        rotation = np.radians(rng.normal(0.0, rotation_sd_deg, 3))
        motions.append(rigid_motion(rotation, rng.normal(0.0, translation_sd_mm, 3), centre))
    return np.stack(motions) if motions else np.zeros((0, 4, 4))


def phantom_truth(settings: Settings) -> Volume:
    """The phantom's attenuation (1/mm) on a ``size``^3 grid over the field of view."""
    size = settings.size
    return hu_to_attenuation(make_phantom(settings.phantom, (size, size, size), FIELD_OF_VIEW_MM / size))


def simulate_row_scan(folder: Path, settings: Settings, row: Row, truth: Volume) -> tuple[Path, np.ndarray]:
    """The row's scan folder (X-rays rendered at the true poses, matrices with the row's pose
    error, the ground truth beside them) and the true matrices."""
    pixel = PANEL_MM / settings.detector
    setup = CarmSetup(detector=Detector((settings.detector, settings.detector), (pixel, pixel)))
    centre = tuple(truth.center())
    if row.orbit == "circular":
        poses = circular_poses(row.views, PRIMARY_RANGE, centre)
    elif row.orbit == "arbitrary":
        poses = arbitrary_poses(row.views, PRIMARY_RANGE, isocenter=centre, seed=settings.seed)
    else:
        raise ValueError(f"orbit must be circular or arbitrary, got {row.orbit!r}")
    true_matrices = pose_matrices(poses, setup)
    images = render_line_integrals(truth, true_matrices, (settings.detector, settings.detector))
    used = true_matrices
    if row.rotation_noise_deg or row.translation_noise_mm:
        used = perturb_matrices(
            true_matrices, row.rotation_noise_deg, row.translation_noise_mm, centre, settings.seed + 1
        )
    write_volume(folder / GROUND_TRUTH_FILE, truth)
    write_scan(
        folder,
        list(images),
        list(used),
        roi=roi_of_volume(truth),
        pixel_spacing=(pixel, pixel),
        extra={"ground_truth": GROUND_TRUTH_FILE, "experiment_row": asdict(row)},
    )
    return folder, true_matrices


def _scores(prefix: str, volume: Volume, truth: Volume, seconds: float) -> dict:
    metrics = volume_metrics(volume, truth)
    return {
        f"{prefix}_psnr_db": metrics["psnr_3d_db"],
        f"{prefix}_ssim": metrics["ssim_3d"],
        f"{prefix}_bone_dice": metrics["bone"]["dice"],
        f"{prefix}_bone_msd_mm": metrics["bone"]["mean_surface_distance_mm"],
        f"{prefix}_seconds": seconds,
    }


def run_row(task: tuple[Settings, Row, str]) -> dict:
    """Simulate, reconstruct with IXGS and with RTK SART, and score one row (a picklable task)."""
    settings, row, folder = task
    folder_path = Path(folder)
    truth = phantom_truth(settings)
    scan, true_matrices = simulate_row_scan(folder_path / "scan", settings, row, truth)
    config = preset(
        settings.preset,
        iterations=settings.iterations,
        num_gaussians=settings.gaussians,
        init=row.init,
        seed=settings.seed,
        **{"poses.mode": row.refine_poses},
    )
    voxel = float(truth.spacing[0])
    summary, volume = reconstruct_scan(scan, folder_path / "ixgs", config, settings.device, voxel_size=voxel)
    sart_summary, sart_volume = run_baseline("sart", scan, folder_path / "sart", settings.sart_iterations, voxel)
    return (
        asdict(row)
        | {"key": row.key, "ixgs_iterations": summary.iterations}
        | _scores("ixgs", volume, truth, summary.total_seconds)
        | _scores("sart", sart_volume, truth, sart_summary["total_seconds"])
        | recovered_pose_error(scan, folder_path / "ixgs", summary.poses, true_matrices, truth.center())
    )


def applied_corrections(scan: Path, run: Path, poses: dict | None) -> np.ndarray:
    """Per view the world motion (V, 4, 4) from the scan's matrices to those the run ``run``
    used (its refined scan; the identity where it did not refine or kept the given poses)."""
    given = read_scan(scan).matrices
    refined = given
    if poses is not None and poses["used"]:
        refined = read_scan((Path(run) / poses["refined_scan"]).parent).matrices
    return np.stack([rigid_motion_between(g, r) for g, r in zip(given, refined, strict=True)])


def recovered_pose_error(
    scan: Path, run: Path, poses: dict | None, true_matrices: np.ndarray, centre: np.ndarray
) -> dict:
    """The median pose error (gauge removed: deg, mm at ``centre``) left after IXGS's refinement,
    against the truth (``residual_pose_error``); the given error when the run did not refine or
    kept the given poses."""
    given = read_scan(scan).matrices
    errors = np.stack([rigid_motion_between(t, g) for t, g in zip(true_matrices, given, strict=True)])
    error = residual_pose_error(errors, applied_corrections(scan, run, poses), centre, true_matrices)
    return {
        "ixgs_pose_error_deg": error["median_rotation_deg_gauge_removed"],
        "ixgs_pose_error_mm": error["median_translation_mm_gauge_removed"],
    }


def run_experiment(
    kind: str,
    rows: Sequence[Row],
    settings: Settings,
    output_dir: str | Path,
    cluster: str | None = None,
    progress: ProgressCallback | None = None,
) -> ResultStore:
    """Run the rows not yet in ``output_dir/results.json`` (locally or on ``cluster``), saving
    each as it finishes; returns the store with every row."""
    output_dir = Path(output_dir)
    store = ResultStore(output_dir / RESULTS_FILE, kind, asdict(settings) | {"rows": [r.key for r in rows]})
    gpu = resolve_device(settings.device).type == "cuda"
    if cluster is not None and settings.device == "auto":
        settings = replace(settings, device="cuda" if gpu else "cpu")  # decided here, not on each worker
    tasks = {r.key: (settings, r, str(output_dir / "rows" / r.key)) for r in rows if r.key not in store.rows}
    done = len(rows) - len(tasks)
    for key, result in run_tasks(run_row, tasks, cluster, use_gpu=gpu):
        store.add(key, result)
        done += 1
        if progress is not None:
            progress(done, len(rows), {"row": key, "psnr": result["ixgs_psnr_db"]})
    return store


def view_rows(counts: Sequence[int], orbit: str = "arbitrary", init: str = "volume") -> list[Row]:
    return [Row(int(n), orbit, init) for n in counts]


def pose_rows(
    views: int,
    orbits: Sequence[str],
    inits: Sequence[str],
    noise: Sequence[tuple[float, float]],
    refine: Sequence[str] = (DEFAULT_POSE_MODE,),
) -> list[Row]:
    return [
        Row(views, orbit, init, deg, mm, mode)
        for orbit in orbits
        for init in inits
        for deg, mm in noise
        for mode in refine
    ]


def knee(x: Sequence[float], y: Sequence[float]) -> float | None:
    """The knee of an increasing, flattening curve (Kneedle: the point farthest above the chord
    once both axes are scaled to [0, 1]); None with fewer than 3 points or no bend."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    xn, yn = (xs - xs[0]) / np.ptp(xs), (ys - ys.min()) / np.ptp(ys)
    chord = yn[0] + (yn[-1] - yn[0]) * xn
    gap = yn - chord
    best = int(np.argmax(gap))
    return float(xs[best]) if gap[best] > 0 else None
