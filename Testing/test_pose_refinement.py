"""Pose refinement (reconstruct/pose_refinement.py): the corrected matrices against scipy's
rotations, the pose gradient through both the render and the correction against central finite
differences, the gauge, the divergence message, and a small perturbed scan end to end."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from tiny_settings import TINY

from ixgs_engine.cli import main
from ixgs_engine.errors import IXGSError
from ixgs_engine.experiments.sweeps import calibration_errors
from ixgs_engine.gaussians.model import GaussianModel
from ixgs_engine.geometry.normalization import SceneNormalization
from ixgs_engine.geometry.projection import rigid_motion_between, source_position
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io.scan import load_projections, read_scan
from ixgs_engine.io.scan_poses import write_scan_with_poses
from ixgs_engine.io.volumes import read_volume
from ixgs_engine.reconstruct.config import ReconstructionConfig, preset
from ixgs_engine.reconstruct.data import TrainingData
from ixgs_engine.reconstruct.pipeline import reconstruct_scan
from ixgs_engine.reconstruct.pose_refinement import (
    PoseRefinement,
    ViewCorrections,
    corrected_matrices,
    reprojection_shift_px,
    residual_pose_error,
)
from ixgs_engine.reconstruct.trainer import Trainer
from ixgs_engine.render import get_backend
from ixgs_engine.simulate import simulate_phantom_scan

SCENE = SceneNormalization.from_roi(ROI(center=[10.0, -5.0, 3.0], size=[120.0, 100.0, 80.0]))


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 10-view scan of a 24^3 spine phantom, and its true matrices."""
    folder = tmp_path_factory.mktemp("poses") / "scan"
    simulate_phantom_scan(folder, "spine", 24, 8.0, 10, 40, 8.0)
    return folder, read_scan(folder).matrices


def test_a_correction_is_a_rigid_motion_of_the_scene_about_the_roi_centre():
    P = torch.as_tensor(np.random.default_rng(0).normal(size=(2, 3, 4)))
    omega = torch.tensor([[0.0, 0.0, 0.0], [0.01, -0.02, 0.03]], dtype=torch.float64)
    tau = torch.tensor([[0.0, 0.0, 0.0], [0.002, 0.001, -0.003]], dtype=torch.float64)
    corrected = corrected_matrices(P, omega, tau)
    assert torch.equal(corrected[0], P[0])
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_rotvec(omega[1].numpy()).as_matrix()
    motion[:3, 3] = tau[1].numpy()
    np.testing.assert_allclose(corrected[1].numpy(), P[1].numpy() @ motion, rtol=1e-12, atol=1e-12)
    # The same correction in world mm: the normalized corrected matrix of the world corrected matrix.
    corrections = ViewCorrections(2)
    with torch.no_grad():
        corrections.omega.copy_(omega)
        corrections.tau.copy_(tau)
    world = np.random.default_rng(1).normal(size=(2, 3, 4))
    moved = corrections.world_matrices(world, SCENE)
    normalized = torch.as_tensor(np.stack([SCENE.projection_to_normalized(m) for m in world]))
    expected = corrections.apply(normalized, torch.arange(2)).detach().numpy()
    np.testing.assert_allclose(np.stack([SCENE.projection_to_normalized(m) for m in moved]), expected, atol=1e-12)
    # The ROI centre is the motion's fixed point when there is no translation.
    motions = corrections.world_motions(SCENE)
    np.testing.assert_allclose(motions[0], np.eye(4), atol=1e-15)
    with torch.no_grad():
        corrections.tau.zero_()
    centre = np.append(SCENE.center, 1.0)
    np.testing.assert_allclose(corrections.world_motions(SCENE)[1] @ centre, centre, atol=1e-9)


def test_the_pose_gradient_through_the_render_matches_central_finite_differences(scan):
    folder, _ = scan
    data = TrainingData.from_projections(load_projections(read_scan(folder)), 1.0, torch.device("cpu"))
    rng = np.random.default_rng(3)
    count = 12
    model = GaussianModel.from_values(
        rng.uniform(-0.5, 0.5, (count, 3)),
        rng.uniform(0.15, 0.3, (count, 3)),
        np.tile([1.0, 0.0, 0.0, 0.0], (count, 1)) + rng.normal(0.0, 0.2, (count, 4)),
        rng.uniform(0.5, 1.5, count),
        normalization=data.scene,
    )
    backend = get_backend("torch")
    views = torch.tensor([1, 4])
    weights = torch.as_tensor(rng.normal(size=(2, *data.image_shape)))
    corrections = ViewCorrections(data.num_views)
    with torch.no_grad():
        corrections.omega.copy_(torch.as_tensor(rng.normal(0.0, 0.01, (data.num_views, 3))))
        corrections.tau.copy_(torch.as_tensor(rng.normal(0.0, 0.01, (data.num_views, 3))))

    def loss() -> torch.Tensor:
        densities = model.densities.detach().to(torch.float64)
        means, covariances = model.positions.detach(), model.covariances().detach()
        matrices = corrections.apply(data.matrices, views)
        return (backend.render(means, covariances, densities, matrices, data.image_shape) * weights).sum()

    loss().backward()
    analytic = torch.cat([corrections.omega.grad[views], corrections.tau.grad[views]], dim=1)
    assert float(analytic.abs().max()) > 0
    numeric = torch.zeros_like(analytic)
    step = 1e-6
    with torch.no_grad():
        for row, view in enumerate(views.tolist()):
            for column in range(6):
                tensor, axis = (corrections.omega, column) if column < 3 else (corrections.tau, column - 3)
                tensor[view, axis] += step
                up = float(loss())
                tensor[view, axis] -= 2 * step
                down = float(loss())
                tensor[view, axis] += step
                numeric[row, column] = (up - down) / (2 * step)
    np.testing.assert_allclose(analytic.numpy(), numeric.numpy(), rtol=1e-4, atol=1e-6 * float(numeric.abs().max()))
    others = [v for v in range(data.num_views) if v not in views.tolist()]
    assert float(corrections.omega.grad[others].abs().max()) == 0.0  # only rendered views get a gradient


def test_an_update_moves_only_the_rendered_views_and_keeps_the_zero_mean_gauge():
    corrections = ViewCorrections(5)
    corrections.omega.grad = torch.ones((5, 3), dtype=torch.float64)
    corrections.tau.grad = -torch.ones((5, 3), dtype=torch.float64)
    corrections.step(torch.tensor([1, 3]), 1e-3, 2e-3)
    omega = corrections.omega.detach()
    assert torch.allclose(omega.mean(dim=0), torch.zeros(3, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(corrections.tau.detach().mean(dim=0), torch.zeros(3, dtype=torch.float64), atol=1e-15)
    # Adam's first step is the rate along the gradient's sign, for the rendered views only (then the mean goes).
    np.testing.assert_allclose(omega[1].numpy(), omega[3].numpy())
    np.testing.assert_allclose((omega[1] - omega[0]).numpy(), -1e-3, rtol=1e-6)
    assert corrections.state()["steps"].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert corrections.omega.grad is None and corrections.tau.grad is None
    restored = ViewCorrections.restored(corrections.state(), "cpu")
    assert all(torch.equal(a, b) for a, b in zip(restored.state().values(), corrections.state().values(), strict=True))


def test_a_diverged_view_is_named_with_its_correction():
    corrections = ViewCorrections(3)
    with torch.no_grad():
        corrections.omega[2, 0] = np.radians(12.0)
    with pytest.raises(IXGSError, match=r"diverged for view\(s\) 7 \(12\.0 deg, 0\.0 mm\).*`refine_poses` off"):
        corrections.check(PoseRefinement("on"), SCENE, [0, 4, 7])
    corrections.check(PoseRefinement("on", max_rotation_deg=15.0), SCENE, [0, 4, 7])


def test_the_reprojection_shift_is_measured_in_pixels():
    roi = ROI(center=[0.0, 0.0, 0.0], size=[10.0, 10.0, 10.0])
    before = np.array([[[1000.0, 0, 0, 0], [0, 1000.0, 0, 0], [0, 0, 1.0, 700.0]]])
    after = before.copy()
    after[0, 0, 3] = 3.0 * 700.0  # u moves by 2100 / (700 + z) px: 3 px at the centre
    shift = reprojection_shift_px(before, after, roi)
    expected = np.mean([3.0 * 700.0 / (700.0 + z) for z in [0.0] + [-5.0, 5.0] * 4])
    np.testing.assert_allclose(shift, [expected], rtol=1e-12)


def test_the_pose_settings_are_checked_and_nest_in_the_config():
    with pytest.raises(ValueError, match="off, on, auto"):
        PoseRefinement("sometimes")
    with pytest.raises(ValueError, match="start"):
        PoseRefinement("on", start=1.0)
    config = replace(TINY, poses=PoseRefinement("auto"))
    assert ReconstructionConfig.from_dict(config.to_dict()) == config
    assert ReconstructionConfig.from_dict(TINY.to_dict()).poses.mode == "on"  # the default


def test_a_perturbed_scan_is_refined_and_the_run_holds_the_refined_scan(scan, tmp_path):
    """Poses off by 1 deg / 2 mm (sd per axis) on a tiny scan (measured: 1.64 -> 1.07 deg and
    3.54 -> 1.11 mm, median over the views, the gauge removed): the refinement brings the views
    closer to their true poses, the run writes the refined scan and
    the per-view table, and no voxel (under-determined corners included) exceeds 1.5 x the
    truth's largest or is negative."""
    folder, truth_matrices = scan
    truth = read_volume(folder / "ground_truth.nrrd")
    original = read_scan(folder)
    errors = calibration_errors(len(truth_matrices), 1.0, 2.0, original.roi.center, seed=5)
    write_scan_with_poses(original, tmp_path / "wrong", list(np.einsum("vij,vjk->vik", truth_matrices, errors)), {})
    # One registration after the first pass, on this tiny volume too (its wiring; what it gains is
    # test_view_registration's and the benchmark's): 12 voxels across at 1/2.
    settings = {
        "final_passes.passes": 2,
        "poses.mode": "on",
        "poses.register_after_passes": (1,),
        "poses.registration_min_voxels": 4,
    }
    config = preset("fast", iterations=400, num_gaussians=1500, **settings)
    trainers = []
    summary, volume = reconstruct_scan(
        tmp_path / "wrong", tmp_path / "run", config, "cpu", voxel_size=8.0, on_trainer=trainers.append
    )
    scene = trainers[0].data.scene
    error = residual_pose_error(errors, trainers[0].corrections.world_motions(scene), original.roi.center)
    assert error["median_rotation_deg_gauge_removed"] < 0.75 * error["median_rotation_deg_given"]
    assert error["median_translation_mm_gauge_removed"] < 0.5 * error["median_translation_mm_given"]
    poses = summary.poses
    assert poses["used"] and len(poses["views"]) == 10 and poses["gauge"].startswith("zero mean")
    assert summary.poses_line().startswith("poses refined: median ")
    refined = read_scan(Path(poses["refined_scan"]).parent)
    assert refined.extra["refined_from"] == str((tmp_path / "wrong").resolve())
    # The refined scan holds the training's corrections and, after them, the registration's.
    given = read_scan(tmp_path / "wrong").matrices
    trained = trainers[0].corrections.world_matrices(given, scene)
    assert poses["registrations"] == 1 and not np.allclose(refined.matrices, trained)
    registered = np.stack([rigid_motion_between(a, b) for a, b in zip(trained, refined.matrices, strict=True)])
    centre = original.roi.center
    shifts = registered[:, :3, 3] - centre + registered[:, :3, :3] @ centre  # the motions' t about the centre
    assert np.abs(shifts.mean(axis=0)).max() < 1e-9 + 1e-6 * np.abs(shifts).max()  # the gauge
    default = preset("fast").poses
    assert not default.registers((12, 12, 12)) and default.registers((96, 90, 80))  # 48 voxels at 1/2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["poses"]["views"] == poses["views"]
    assert volume.array.min() >= 0 and volume.array.max() <= 1.5 * truth.array.max()


def test_the_command_line_prints_the_poses_line_before_its_summary(scan, tmp_path, capsys):
    folder, _ = scan
    args = ["reconstruct", str(folder), "-o", str(tmp_path / "run"), "--preset", "fast", "--iterations", "20"]
    args += ["--gaussians", "400", "--sart-passes", "0", "--voxel-size", "8", "--device", "cpu"]
    assert main([*args, "--refine-poses", "on"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2].startswith("poses refined: median ") and printed[-1].startswith("reconstructed 10 views")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["config"]["poses"]["mode"] == "on"
    assert (tmp_path / "run" / "refined_scan" / "scan.json").is_file()
    # Replaced by a run without refinement, the folder keeps no refined scan of the earlier run.
    assert main([*args, "--refine-poses", "off", "--overwrite"]) == 0
    assert not (tmp_path / "run" / "refined_scan").exists()


def test_auto_keeps_the_given_poses_when_the_corrections_come_out_negligible(scan, tmp_path):
    folder, _ = scan
    config = replace(TINY, poses=PoseRefinement("auto", exact_rotation_deg=90.0, exact_translation_mm=1e3))
    summary, _ = reconstruct_scan(folder, tmp_path / "run", config, "cpu", voxel_size=8.0)
    assert summary.poses["mode"] == "auto" and not summary.poses["used"]
    assert "refined_scan" not in summary.poses and not (tmp_path / "run" / "refined_scan").exists()
    assert summary.poses_line().endswith("the given poses were exact and are kept")


def test_a_killed_run_resumes_to_the_same_poses_bit_for_bit(scan, tmp_path):
    """The corrections and their per-view Adam state are in the checkpoint (checkpoints at 10
    and 20; killed at 17, after the poses started moving at 4)."""
    folder, _ = scan
    data = TrainingData.from_projections(load_projections(read_scan(folder)), 1.0, torch.device("cpu"))
    config = replace(TINY, poses=PoseRefinement("on"))
    backend = get_backend("torch")
    whole = Trainer(data, config, backend, tmp_path / "whole").run()

    def killed(done, total, entry):
        if done == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(data, config, backend, tmp_path / "killed", progress=killed).run()
    resumed = Trainer(data, config, backend, tmp_path / "killed").run(resume=True)
    assert float(whole.corrections.omega.detach().abs().max()) > 0
    for key, value in whole.corrections.state().items():
        assert torch.equal(resumed.corrections.state()[key], value), key
    torch.testing.assert_close(resumed.model.densities, whole.model.densities, rtol=0, atol=0)


def test_the_residual_pose_error_splits_a_shift_across_and_along_each_views_ray(scan):
    """By hand: view 0 off by 2 mm along its ray through the centre and 1 mm across it, every
    other view exact; the medians follow (zero, as most views are exact) and view 0's split is
    read back from a one-view call."""
    _, matrices = scan
    centre = np.array([1.0, 2.0, -3.0])
    axis = centre - source_position(matrices[0])
    axis /= np.linalg.norm(axis)
    across = np.cross(axis, [0.0, 0.0, 1.0])
    across /= np.linalg.norm(across)
    errors = np.tile(np.eye(4), (len(matrices), 1, 1))
    errors[0, :3, 3] = 2.0 * axis + 1.0 * across
    none = np.tile(np.eye(4), (len(matrices), 1, 1))
    assert residual_pose_error(errors, none, centre, matrices)["median_translation_mm_given_along"] == 0.0
    one = residual_pose_error(errors[:1], none[:1], centre, matrices[:1])
    assert one["median_translation_mm_given_along"] == pytest.approx(2.0)
    assert one["median_translation_mm_given_across"] == pytest.approx(1.0)
    assert one["median_translation_mm_given"] == pytest.approx(np.sqrt(5.0))
    assert "median_translation_mm_given_along" not in residual_pose_error(errors, none, centre)
