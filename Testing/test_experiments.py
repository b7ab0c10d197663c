"""Experiments (view-count sweep, pose robustness) end to end on tiny settings, resuming,
pose errors, the knee finder, batches locally and on a Dask LocalCluster."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ixgs_engine.cli import main
from ixgs_engine.errors import IXGSError
from ixgs_engine.evaluate.evaluation import volume_metrics
from ixgs_engine.experiments.batch import run_batch
from ixgs_engine.experiments.runner import ResultStore, run_tasks
from ixgs_engine.experiments.sweeps import knee, perturb_matrices
from ixgs_engine.geometry.carm import Detector
from ixgs_engine.geometry.projection import decompose_projection_matrix
from ixgs_engine.io.scan import read_scan
from ixgs_engine.io.volumes import read_volume
from ixgs_engine.io.xray_images import read_xray_image
from ixgs_engine.phantoms import hu_to_attenuation, make_phantom
from ixgs_engine.reconstruct.config import preset
from ixgs_engine.simulate import CarmSetup, arbitrary_poses, pose_matrices, simulate_scan
from ixgs_engine.volume import Volume

pytest.importorskip("itk")
TINY = [
    "--size",
    "24",
    "--detector",
    "32",
    "--iterations",
    "30",
    "--gaussians",
    "400",
    "--sart-iterations",
    "2",
    "--device",
    "cpu",
]


def test_pose_errors_have_the_requested_size():
    """From each view's true and perturbed matrices, recover the scene motion T(X) = R (X - c)
    + c + t: R's angle and |t| are the requested error."""
    centre = np.array([5.0, -3.0, 10.0])
    setup = CarmSetup(detector=Detector((64, 64), (3.0, 3.0)))
    true = pose_matrices(arbitrary_poses(5, isocenter=tuple(centre), seed=2), setup)
    moved = perturb_matrices(true, 1.5, 4.0, centre, seed=7)
    for P, Q in zip(true, moved, strict=True):
        a, b = decompose_projection_matrix(P), decompose_projection_matrix(Q)
        np.testing.assert_allclose(a.intrinsics, b.intrinsics, atol=1e-9)
        rotation = a.rotation.T @ b.rotation
        angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
        assert angle == pytest.approx(1.5, abs=1e-6)
        shift = a.source - rotation @ (b.source - centre) - centre  # S = T(S')
        assert np.linalg.norm(shift) == pytest.approx(4.0, abs=1e-6)
    np.testing.assert_array_equal(perturb_matrices(true, 0.0, 0.0, centre, 0), true)


def test_knee_of_a_bent_curve():
    views = [5, 10, 15, 20, 25, 30, 50]
    bent = [10 + 0.8 * min(v, 20) + 0.02 * max(v - 20, 0) for v in views]
    assert knee(views, bent) == 20
    assert knee(views, [2.0 * v for v in views]) is None  # a straight line has no knee
    assert knee([5, 10], [1.0, 2.0]) is None


def test_view_sweep_runs_resumes_and_tabulates(tmp_path, capsys):
    out = tmp_path / "views"
    assert main(["experiment", "views", "-o", str(out), "--counts", "4", "8", "--init", "random", *TINY]) == 0
    assert "experiment views: 2 rows" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert sorted(r["views"] for r in rows.values()) == [4, 8]
    key = "arbitrary-8v-random-rot0deg-shift0mm-poseson"  # the default: refined
    # The table's SART scores are those of the written volume against the scan's ground truth.
    row_dir = out / "rows" / key
    truth = read_volume(row_dir / "scan" / "ground_truth.nrrd")
    sart = volume_metrics(read_volume(row_dir / "sart" / "volume.nrrd"), truth)
    assert rows[key]["sart_psnr_db"] == pytest.approx(sart["psnr_3d_db"])
    assert rows[key]["sart_bone_dice"] == pytest.approx(sart["bone"]["dice"])
    assert len(read_scan(row_dir / "scan").views) == 8
    table = (out / "views.md").read_text()
    assert f"| arbitrary | 8 | random | 0.0 | 0.0 | on | {rows[key]['ixgs_psnr_db']:.2f} |" in table
    assert (out / "views.csv").read_text().count("\n") == 3 and (out / "views.png").stat().st_size > 10_000
    # A re-run finds every row done and recomputes nothing.
    stamp = (row_dir / "ixgs" / "volume.nrrd").stat().st_mtime_ns
    assert main(["experiment", "views", "-o", str(out), "--counts", "4", "8", "--init", "random", *TINY]) == 0
    assert (row_dir / "ixgs" / "volume.nrrd").stat().st_mtime_ns == stamp
    # Other settings in the same folder are refused rather than mixed.
    assert (
        main(
            ["experiment", "views", "-o", str(out), "--counts", "4", "8", "--init", "random", *TINY[:-2], "--seed", "3"]
        )
        == 2
    )
    assert "other settings" in capsys.readouterr().err


def test_pose_experiment_reconstructs_true_images_with_perturbed_matrices(tmp_path):
    out = tmp_path / "poses"
    assert (
        main(
            [
                "experiment",
                "poses",
                "-o",
                str(out),
                "--views",
                "6",
                "--orbits",
                "circular",
                "--inits",
                "random",
                "--noise",
                "0:0",
                "2:5",
                "--refine-poses",
                "off",
                "on",
                *TINY,
            ]
        )
        == 0
    )
    rows = json.loads((out / "results.json").read_text())["rows"]
    exact, noisy = (
        out / "rows" / k / "scan"
        for k in ("circular-6v-random-rot0deg-shift0mm-posesoff", "circular-6v-random-rot2deg-shift5mm-posesoff")
    )
    for index in range(6):
        same = [read_xray_image(folder / "images" / f"{index:03d}.tif").pixels for folder in (exact, noisy)]
        np.testing.assert_array_equal(same[0], same[1])
    assert not np.allclose(read_scan(exact).matrices, read_scan(noisy).matrices)
    assert {r["rotation_noise_deg"] for r in rows.values()} == {0.0, 2.0}
    assert {r["refine_poses"] for r in rows.values()} == {"off", "on"}
    # without refinement the pose error left is the given one (2 deg about a random axis per view,
    # the views' mean removed), with exact poses none; with it the run's refined poses are scored
    unrefined = {r["rotation_noise_deg"]: r for r in rows.values() if r["refine_poses"] == "off"}
    assert unrefined[0.0]["ixgs_pose_error_deg"] == pytest.approx(0.0, abs=1e-6)
    assert 1.0 < unrefined[2.0]["ixgs_pose_error_deg"] < 3.0 and 2.5 < unrefined[2.0]["ixgs_pose_error_mm"]
    refined = rows["circular-6v-random-rot2deg-shift5mm-poseson"]
    assert refined["ixgs_pose_error_deg"] != unrefined[2.0]["ixgs_pose_error_deg"]
    table = (out / "poses.md").read_text()
    assert (
        "| circular | 6 | random | 0.0 | 0.0 | off |" in table and "| circular | 6 | random | 2.0 | 5.0 | on |" in table
    )
    assert "IXGS pose error after, deg" in table


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("batch")
    truth = hu_to_attenuation(make_phantom("spine", (24, 24, 24), 8.0))
    setup = CarmSetup(detector=Detector((32, 32), (12.8, 12.8)))
    out = []
    for seed in (0, 1):
        poses = arbitrary_poses(6, isocenter=tuple(truth.center()), seed=seed)
        simulate_scan(folder / f"case{seed}", truth, poses, setup)
        out.append(folder / f"case{seed}")
    return out


def test_batch_reconstructs_each_scan_once(scans, tmp_path):
    out = tmp_path / "batch"
    batch = ["batch", *map(str, scans), "-o", str(out), "--preset", "fast", "--iterations", "20"]
    batch += ["--gaussians", "300", "--voxel-size", "8", "--device", "cpu"]
    assert main(batch) == 0
    rows = json.loads((out / "batch.json").read_text())["rows"]
    assert sorted(rows) == ["case0", "case1"]
    assert all(0 < r["psnr_3d_db"] < 60 and r["views"] == 6 for r in rows.values())
    assert read_volume(out / "case1" / "volume.nrrd").spacing.tolist() == [8.0, 8.0, 8.0]
    stamp = (out / "case0" / "volume.nrrd").stat().st_mtime_ns
    assert main(batch) == 0
    assert (out / "case0" / "volume.nrrd").stat().st_mtime_ns == stamp
    assert "| case1 | 6 | 20 |" in (out / "batch.md").read_text()


def test_batch_on_a_dask_local_cluster(scans, tmp_path):
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    config = preset("fast", iterations=10, num_gaussians=200)
    local = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    with local as cluster:
        store = run_batch(scans[:1], tmp_path / "dask", config, "cpu", cluster.scheduler_address, voxel_size=8.0)
    assert list(store.rows) == ["case0"] and store.rows["case0"]["iterations"] == 10
    assert isinstance(read_volume(tmp_path / "dask" / "case0" / "volume.nrrd"), Volume)


def test_runner_local_order_and_errors(tmp_path):
    assert list(run_tasks(abs, {"a": -1, "b": 2})) == [("a", 1), ("b", 2)]
    with pytest.raises(IXGSError, match="`cluster` must be"):
        list(run_tasks(abs, {"a": 1}, "http://nowhere"))
    if shutil.which("ray") is None:
        try:
            import ray  # noqa: F401
        except ImportError:
            with pytest.raises(IXGSError, match="Ray is not installed"):
                list(run_tasks(abs, {"a": 1}, "ray://localhost:10001"))
    store = ResultStore(tmp_path / "r.json", "views", {"size": 24, "counts": (4, 8)})
    store.add("x", {"value": 1.0})
    assert ResultStore(tmp_path / "r.json", "views", {"size": 24, "counts": (4, 8)}).rows == {"x": {"value": 1.0}}
    with pytest.raises(IXGSError, match="other settings"):
        ResultStore(tmp_path / "r.json", "views", {"size": 32, "counts": (4, 8)})


def test_standardization_experiment_tabulates_the_ablation_once(tmp_path, monkeypatch, capsys):
    """The command wires the ablation into the result store and tables; the ablation itself is
    exercised by Testing/test_standardize.py and benchmarks/bench_standardization.py."""
    import ixgs_engine.experiments.standardization as ablation

    calls = []

    def fake_ablation(workdir, settings, model, device, progress):
        calls.append(settings)
        return [
            {
                "input": name,
                "psnr_2d_db": 20.0 + i,
                "ssim_2d": 0.5 + 0.1 * i,
                "psnr_3d_db": 25.0 + i,
                "ssim_3d": 0.7 + 0.05 * i,
                "volume": str(workdir / name),
            }
            for i, name in enumerate(("raw radiograph", "standardized", "ideal DRR"))
        ]

    monkeypatch.setattr(ablation, "run_ablation", fake_ablation)
    arguments = ["experiment", "standardization", "-o", str(tmp_path), "--size", "24", "--detector", "32"]
    assert main(arguments) == 0
    assert main(arguments) == 0  # resumed: the stored rows are reused
    assert len(calls) == 1 and calls[0].size == 24 and calls[0].detector_pixels == 32
    table = (tmp_path / "standardization.md").read_text()
    assert "| standardized | 21 | 0.6 | 26 | 0.75 |" in table and "volume" not in table
    rows = (tmp_path / "standardization.csv").read_text().splitlines()
    assert rows[0] == "input,psnr_2d_db,ssim_2d,psnr_3d_db,ssim_3d" and len(rows) == 4
    assert (tmp_path / "standardization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "standardized 26.00 dB" in capsys.readouterr().out
