"""The SART refinement after the training (reconstruct/final_passes.py): it moves the volume
toward what the views measure, leaves a specimen's Gaussians just outside its faces to its
border voxels, solves a shell around the ROI for a truncated patient instead of piling the
patient into the ROI, runs from the command line, and stops and resumes like the training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from tiny_settings import TINY

from ixgs_engine.classical.sart import sart
from ixgs_engine.cli import main
from ixgs_engine.errors import IXGSError
from ixgs_engine.evaluate.metrics import psnr_3d
from ixgs_engine.gaussians.model import GaussianModel
from ixgs_engine.io.scan import load_projections, read_scan
from ixgs_engine.io.volumes import read_volume
from ixgs_engine.projector.joseph import JosephProjector
from ixgs_engine.reconstruct import final_passes, pipeline
from ixgs_engine.reconstruct.config import FinalPasses, ReconstructionConfig
from ixgs_engine.reconstruct.data import TrainingData
from ixgs_engine.reconstruct.final_passes import TRUNCATED_SHARE, run_final_passes, surroundings_projections
from ixgs_engine.reconstruct.run_files import read_summary
from ixgs_engine.reconstruct.trainer import ReconstructionCancelled
from ixgs_engine.render.backend import get_backend
from ixgs_engine.simulate import simulate_phantom_scan
from ixgs_engine.volume import Volume

PASSES = replace(TINY, final_passes=FinalPasses(passes=1))


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> tuple[Path, Volume]:
    """An 8-view scan of a 24^3 spine phantom (ROI = the phantom's box) and its truth."""
    folder = tmp_path_factory.mktemp("refinement") / "scan"
    truth = simulate_phantom_scan(folder, "spine", 24, 8.0, 8, 40, 8.0)
    return folder, truth


@pytest.fixture(scope="module")
def data(scan) -> TrainingData:
    return TrainingData.from_projections(load_projections(read_scan(scan[0])), 1.0, torch.device("cpu"))


def _gaussians(data: TrainingData, positions: np.ndarray, scale: float, density: float | np.ndarray) -> GaussianModel:
    count = len(positions)
    return GaussianModel.from_values(
        positions,
        np.full((count, 3), scale),
        np.tile([1.0, 0.0, 0.0, 0.0], (count, 1)),
        np.full(count, density),
        normalization=data.scene,
    )


def _same_grid(first: Volume, second: Volume) -> bool:
    return first.shape == second.shape and np.allclose(first.index_to_world_matrix(), second.index_to_world_matrix())


def _residual(volume: Volume, views: np.ndarray, data: TrainingData) -> float:
    forward = JosephProjector(volume.grid, data.world_matrices, data.image_shape).forward(
        torch.as_tensor(volume.array, dtype=torch.float32)
    )
    return float(np.linalg.norm(forward.numpy() - views))


def test_sart_passes_bring_a_blurred_volume_closer_to_the_truth_and_the_views(scan, data):
    _, truth = scan
    start = truth.with_array(gaussian_filter(truth.array, 1.5).astype(np.float32))
    inside_only = _gaussians(data, np.zeros((1, 3)), 0.05, 1.0)  # nothing around the ROI
    views = data.targets.numpy()
    refined = run_final_passes(start, inside_only, data, get_backend("torch"), FinalPasses(3, 0.8, tv_steps=0)).volume
    assert _same_grid(refined, start)
    assert psnr_3d(refined.array, truth) > psnr_3d(start.array, truth) + 1.0
    assert _residual(refined, views, data) < 0.5 * _residual(start, views, data)
    assert run_final_passes(start, inside_only, data, get_backend("torch"), FinalPasses(0)).volume is start


def test_rtks_passes_are_rtk_asd_pocs_from_the_volume_under_the_ceiling_and_improve_it(rtk_available, scan, data):
    """``projector`` "rtk" on a specimen: the passes are ``classical.rtk.rtk_asd_pocs`` started
    from the volume (RTK's SART and our TV steps), kept under the ceiling, counted in the
    stage's progress as ours are; the volume comes closer to the truth as with ours."""
    from ixgs_engine.classical.ceiling import line_integral_ceiling
    from ixgs_engine.classical.rtk import rtk_asd_pocs

    _, truth = scan
    start = truth.with_array(gaussian_filter(truth.array, 1.5).astype(np.float32))
    inside_only = _gaussians(data, np.zeros((1, 3)), 0.05, 1.0)
    views = data.targets.numpy()
    ceiling = line_integral_ceiling(views, data.world_matrices, start.grid)
    counts = []
    settings = FinalPasses(3, 0.8, tv_steps=5, tv_step=0.4, projector="rtk")
    refined = run_final_passes(
        start, inside_only, data, get_backend("torch"), settings, lambda done, total: counts.append((done, total)),
        ceiling=ceiling,
    ).volume  # fmt: skip
    expected = rtk_asd_pocs(
        views, data.world_matrices, start.grid, 3, 0.8, 5, 0.4, initial=start.array, ceiling=ceiling
    )
    np.testing.assert_allclose(refined.array, expected.array, rtol=0, atol=1e-6 * float(expected.array.max()))
    assert _same_grid(refined, start) and float(np.max(refined.array - ceiling)) <= 0.0
    assert counts == [(8 * n, 24) for n in (1, 2, 3)]  # 8 views a pass
    assert psnr_3d(refined.array, truth) > psnr_3d(start.array, truth) + 1.0


def test_gaussians_inside_the_roi_do_not_count_as_its_surroundings(data):
    inside = _gaussians(data, np.array([[0.2, -0.3, 0.1], [-0.5, 0.5, 0.0]]), 0.1, 2.0)
    assert not surroundings_projections(inside, data, get_backend("torch")).any()


def test_a_specimens_gaussians_just_outside_its_faces_are_not_taken_off_the_views(scan, data):
    """A specimen's views see nothing beyond its box, but the model's Gaussians reach past its
    faces (the tails of the tissue there). Their line integrals belong to the ROI's border
    voxels: the passes keep a volume that explains the views as it is, where taking the tails
    off the views first (the rule before) darkens it."""
    _, truth = scan
    backend = get_backend("torch")
    rng = np.random.default_rng(3)
    faces = rng.uniform(-1.0, 1.0, size=(300, 3))
    axis = rng.integers(0, 3, size=len(faces))
    faces[np.arange(len(faces)), axis] = rng.choice([-1.08, 1.08], size=len(faces))  # just outside a face
    tails = _gaussians(data, faces, 0.06, 0.5)
    seen = surroundings_projections(tails, data, backend)
    share = seen.sum() / data.targets.numpy().sum()
    assert 0.01 < share < TRUNCATED_SHARE  # a specimen's share: no shell
    refinement_run = run_final_passes(truth, tails, data, backend, FinalPasses(2, 0.8, tv_steps=0))
    assert refinement_run.shell is None and refinement_run.surroundings_share == pytest.approx(share, rel=1e-4)
    refined = refinement_run.volume
    taken_off = sart(
        data.targets.numpy() - seen, data.world_matrices, truth.grid, 2, relaxation=0.8, initial=truth.array
    )
    assert psnr_3d(refined.array, truth) > 60.0
    assert abs(refined.array.mean() / truth.array.mean() - 1.0) < 1e-3
    assert taken_off.array.mean() < (1.0 - 0.5 * share) * truth.array.mean()
    assert psnr_3d(taken_off.array, truth) < psnr_3d(refined.array, truth) - 20.0


def test_the_patient_around_the_roi_is_fitted_in_a_shell_not_piled_into_the_roi(scan, data):
    """In situ: the views also see attenuation around the ROI (28 % here), which the model's
    Gaussians there carry. Starting a shell solved alongside, SART from the true ROI stays
    there; SART on the ROI alone piles it into the ROI."""
    _, truth = scan
    backend = get_backend("torch")
    rng = np.random.default_rng(0)
    around = rng.uniform(-2.0, 2.0, size=(400, 3))
    around = around[np.abs(around).max(axis=1) > 1.3][:120]  # a shell of tissue around the ROI
    surroundings = _gaussians(data, around, 0.25, 0.5)
    seen = surroundings_projections(surroundings, data, backend)
    assert seen.mean() > 0.2 * data.targets.numpy().mean() > TRUNCATED_SHARE * data.targets.numpy().mean()
    insitu = replace(data, targets=data.targets + torch.as_tensor(seen))
    refined = run_final_passes(truth, surroundings, insitu, backend, FinalPasses(2, 0.8, tv_steps=0)).volume
    piled = run_final_passes(
        truth, _gaussians(data, np.zeros((1, 3)), 0.05, 1e-6), insitu, backend, FinalPasses(2, 0.8, tv_steps=0)
    ).volume
    assert abs(refined.array.mean() / truth.array.mean() - 1.0) < 0.02
    assert piled.array.mean() > 1.2 * truth.array.mean()
    assert psnr_3d(refined.array, truth) > psnr_3d(piled.array, truth) + 6.0


def test_a_truncated_patient_gets_a_shell_solved_around_the_roi_instead_of_piling_into_it(
    scan, data, caplog, monkeypatch
):
    """When most of what the views measure lies around the ROI (here 93 %), the Gaussians'
    estimate of it is off locally (as a fitted model's is: each Gaussian 0.6-1.4 times the
    truth); taken off the views, that error lands in the ROI. With the coarse shell solved
    alongside (started from the estimate) the ROI stays near where it started; the ROI-only
    passes pile the patient into it (measured: 18.5 vs -19.7 dB from a 19.6 dB start after 3 passes)."""
    _, truth = scan
    backend = get_backend("torch")
    rng = np.random.default_rng(1)
    around = rng.uniform(-2.0, 2.0, size=(1200, 3))
    around = around[np.abs(around).max(axis=1) > 1.3][:600]  # a thick patient around the ROI
    patient = _gaussians(data, around, 0.3, 2.0)
    seen = surroundings_projections(patient, data, backend)
    insitu = replace(data, targets=data.targets + torch.as_tensor(seen))
    assert seen.sum() / insitu.targets.numpy().sum() > 0.9
    estimate = _gaussians(data, around, 0.3, 2.0 * np.random.default_rng(2).uniform(0.6, 1.4, len(around)))
    estimated_share = surroundings_projections(estimate, data, backend).sum() / insitu.targets.numpy().sum()
    assert estimated_share > TRUNCATED_SHARE
    start = truth.with_array(gaussian_filter(truth.array, 1.5).astype(np.float32))
    with caplog.at_level("INFO", logger="ixgs_engine.reconstruct.final_passes"):
        shelled_run = run_final_passes(start, estimate, insitu, backend, FinalPasses(3, 0.8, tv_steps=0))
    shelled = shelled_run.volume
    assert shelled_run.record() == {
        "surroundings_share": round(float(estimated_share), 4),
        "shell": {"voxels": [30, 30, 30], "voxel_mm": 16.0, "passes": 2},
        "voxels_at_ceiling": None,
    }
    assert f"{100 * estimated_share:.0f}% of what the views measure lies outside the ROI" in caplog.text
    assert "also solve a 30x30x30 grid of 16.0 mm voxels around it (in the first 2 passes)" in caplog.text
    # RTK's passes cannot solve the shell: ``ours_passes`` of ours run instead, the same volume.
    with caplog.at_level("INFO", logger="ixgs_engine.reconstruct.final_passes"):
        instead = run_final_passes(
            start, estimate, insitu, backend, FinalPasses(5, 0.8, tv_steps=0, projector="rtk", ours_passes=3)
        ).volume
    assert "3 SART passes of our projector instead of RTK's" in caplog.text
    np.testing.assert_array_equal(instead.array, shelled.array)
    monkeypatch.setattr(final_passes, "TRUNCATED_SHARE", 1.0)  # the ROI-only passes, for comparison
    roi_only = run_final_passes(start, estimate, insitu, backend, FinalPasses(3, 0.8, tv_steps=0)).volume
    assert _same_grid(shelled, start)
    assert abs(shelled.array.mean() / truth.array.mean() - 1.0) < 0.35
    assert psnr_3d(shelled.array, truth) > psnr_3d(start.array, truth) - 1.5
    assert psnr_3d(shelled.array, truth) > psnr_3d(roi_only.array, truth) + 5.0


def test_sart_passes_from_the_command_line_improve_a_short_run(scan, tmp_path, capsys):
    folder, truth = scan
    common = ["--preset", "fast", "--iterations", "24", "--gaussians", "500", "--device", "cpu", "--voxel-size", "8"]
    assert main(["reconstruct", str(folder), "-o", str(tmp_path / "plain"), *common, "--sart-passes", "0"]) == 0
    assert main(["reconstruct", str(folder), "-o", str(tmp_path / "passes"), *common, "--sart-passes", "2"]) == 0
    summary = read_summary(tmp_path / "passes")
    assert summary["config"]["final_passes"]["passes"] == 2
    share = summary["refinement"]["surroundings_share"]
    assert 0.0 <= share < 1.0 and (summary["refinement"]["shell"] is not None) == (share > TRUNCATED_SHARE)
    plain = read_summary(tmp_path / "plain")["refinement"]
    assert plain["surroundings_share"] is None and plain["shell"] is None and plain["voxels_at_ceiling"] >= 0
    plain = read_volume(tmp_path / "plain" / "volume.nrrd")
    passes = read_volume(tmp_path / "passes" / "volume.nrrd")
    assert _same_grid(passes, truth)
    assert psnr_3d(passes.array, truth) > psnr_3d(plain.array, truth) + 1.0
    with pytest.raises(SystemExit) as refused:
        main(["reconstruct", str(folder), "-o", str(tmp_path / "bad"), *common, "--sart-passes", "-1"])
    assert refused.value.code == 2
    assert "argument --sart-passes: must be at least 0" in capsys.readouterr().err


def test_a_cancel_during_the_sart_passes_keeps_the_training_and_resume_writes_the_same_volume(scan, tmp_path):
    folder = scan[0]
    whole, _ = pipeline.reconstruct_scan(folder, tmp_path / "whole", PASSES, "cpu", voxel_size=8.0)
    armed = {"cancel": False}

    def stage(name: str):
        armed["cancel"] = armed["cancel"] or name == "SART refinement"
        return lambda done, total, info=None: None

    stopped = tmp_path / "stopped"
    with pytest.raises(ReconstructionCancelled, match="after the training, before the volume was written"):
        pipeline.reconstruct_scan(
            folder,
            stopped,
            PASSES,
            "cpu",
            voxel_size=8.0,
            should_cancel=lambda: armed["cancel"],
            stage_progress=stage,
        )
    assert not (stopped / "volume.nrrd").exists()
    summary, volume = pipeline.reconstruct_scan(folder, stopped, PASSES, "cpu", resume=True, voxel_size=8.0)
    assert summary.iterations == PASSES.iterations
    assert np.array_equal(volume.array, read_volume(whole.volume_path).array)


def test_the_sart_pass_settings_are_checked():
    with pytest.raises(ValueError, match="final passes must be 0 or more"):
        FinalPasses(passes=-1)
    with pytest.raises(ValueError, match="relaxation must be in"):
        FinalPasses(relaxation=0.0)
    with pytest.raises(ValueError, match="tv_steps and tv_step"):
        FinalPasses(tv_steps=-1)
    with pytest.raises(ValueError, match="projector must be 'ours' or 'rtk'"):
        FinalPasses(projector="astra")
    with pytest.raises(ValueError, match="ours_tv_step"):
        FinalPasses(ours_tv_step=-0.1)


def test_rtks_passes_without_itk_rtk_are_refused_before_the_training(scan, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "rtk_installed", lambda: False)
    config = replace(PASSES, final_passes=FinalPasses(2, projector="rtk"))
    with pytest.raises(IXGSError, match=r"itk-rtk is not installed: pip install 'ixgs-engine\[rtk\]'"):
        pipeline.reconstruct_scan(scan[0], tmp_path / "run", config, "cpu")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_run_time_estimate_counts_the_sart_passes_per_view():
    from ixgs_engine.reconstruct.estimate import estimated_seconds

    def added(passes: int, views: int) -> float:
        config = ReconstructionConfig(final_passes=FinalPasses(passes))
        return estimated_seconds(config, (192, 192), "cpu", views, (128, 128, 128)) - estimated_seconds(
            replace(config, final_passes=FinalPasses(0)), (192, 192), "cpu", views, (128, 128, 128)
        )

    assert added(0, 25) == 0.0
    assert 5.0 < added(1, 25) < 60.0  # one pass of 25 views of 192² over 128³ voxels on 2 cores
    assert added(4, 50) == pytest.approx(8.0 * added(1, 25))
    by_rtk = ReconstructionConfig(final_passes=FinalPasses(30, projector="rtk"))
    thirty_of_rtks = estimated_seconds(by_rtk, (192, 192), "cpu", 25, (128, 128, 128)) - estimated_seconds(
        replace(by_rtk, final_passes=FinalPasses(0)), (192, 192), "cpu", 25, (128, 128, 128)
    )
    assert added(3, 25) < thirty_of_rtks < added(6, 25)  # measured: 30 of RTK's ~ 80 s, one of ours ~ 20 s
