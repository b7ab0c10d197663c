"""The Gaussian reconstruction loop and `ixgs reconstruct`: determinism, checkpoint / resume
after a kill, cancel, the log, outputs with world geometry, and clear errors."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_settings import TINY

from ixgs_engine.cli import main
from ixgs_engine.errors import IXGSError
from ixgs_engine.gaussians.densification import DensificationStrategy
from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.geometry.projection import project_points
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io.scan import load_projections, read_scan
from ixgs_engine.io.volumes import read_volume
from ixgs_engine.reconstruct.config import ReconstructionConfig, preset
from ixgs_engine.reconstruct.data import TrainingData, detector_voxel_size, downsample_matrices
from ixgs_engine.reconstruct.pipeline import reconstruct_scan
from ixgs_engine.reconstruct.trainer import ReconstructionCancelled, Trainer, exponential_schedule
from ixgs_engine.render.backend import get_backend
from ixgs_engine.simulate import simulate_phantom_scan


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("scan")
    truth = simulate_phantom_scan(folder, "spine", 24, 8.0, 8, 40, 8.0)
    return folder, truth


@pytest.fixture(scope="module")
def tiny_data(tiny_scan) -> TrainingData:
    return TrainingData.from_projections(load_projections(read_scan(tiny_scan[0])), 1.0, torch.device("cpu"))


class Killed(Exception):
    """Stands for the process dying: nothing is saved on the way out."""


def kill_at(iteration: int):
    def progress(done, total, entry):
        if done == iteration:
            raise Killed

    return progress


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tiny_data, tmp_path: Path):
    backend = get_backend("torch")
    whole = Trainer(tiny_data, TINY, backend, tmp_path / "whole").run()
    with pytest.raises(Killed):
        Trainer(tiny_data, TINY, backend, tmp_path / "killed", progress=kill_at(17)).run()
    assert len((tmp_path / "killed" / "log.jsonl").read_text().splitlines()) == 17
    resumed = Trainer(tiny_data, TINY, backend, tmp_path / "killed").run(resume=True)
    for name, value in whole.model.parameters().items():
        torch.testing.assert_close(resumed.model.parameters()[name], value, rtol=0, atol=0)
    whole_log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    resumed_log = [json.loads(line) for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    strip = lambda log: [{k: v for k, v in e.items() if k != "elapsed_s"} for e in log]  # noqa: E731
    assert strip(resumed_log) == strip(whole_log)
    assert [e["iteration"] for e in whole_log] == list(range(1, 25))
    assert {"loss", "l1", "dssim", "tv", "gaussians", "elapsed_s"} <= set(whole_log[-1])
    assert any("cloned" in e for e in whole_log)  # densification ran and was logged


def test_same_seed_same_result_and_loss_goes_down(tiny_data, tmp_path: Path):
    backend = get_backend("torch")
    first = Trainer(tiny_data, TINY, backend, tmp_path / "a").run()
    second = Trainer(tiny_data, TINY, backend, tmp_path / "b").run()
    torch.testing.assert_close(first.model.densities, second.model.densities, rtol=0, atol=0)
    other = Trainer(tiny_data, replace(TINY, seed=1), backend, tmp_path / "c").run()
    assert other.model.positions.shape != first.model.positions.shape or not torch.equal(
        other.model.positions, first.model.positions
    )
    # The phantom has air around it: no Gaussians outside the ROI, so 24 steps show the descent.
    steady = Trainer(
        tiny_data,
        replace(TINY, densification=replace(TINY.densification, start=10_000), outside_share=0.0),
        backend,
        tmp_path / "d",
    ).run()
    assert steady.history[-1]["l1"] < 0.9 * steady.history[0]["l1"]


def test_cancel_saves_a_checkpoint_that_resumes(tiny_data, tmp_path: Path):
    calls = {"n": 0}

    def cancel_after_five() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    backend = get_backend("torch")
    with pytest.raises(ReconstructionCancelled, match="cancelled at iteration 5; resume with `resume`"):
        Trainer(tiny_data, TINY, backend, tmp_path, should_cancel=cancel_after_five).run()
    assert (tmp_path / "checkpoint.pt").exists()
    result = Trainer(tiny_data, TINY, backend, tmp_path).run(resume=True)
    assert result.iterations == TINY.iterations


def test_checkpoint_problems_are_reported(tiny_data, tmp_path: Path):
    backend = get_backend("torch")
    with pytest.raises(IXGSError, match="`resume`: no checkpoint in"):
        Trainer(tiny_data, TINY, backend, tmp_path).run(resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(IXGSError, match="cannot read the checkpoint .*delete it to start over"):
        Trainer(tiny_data, TINY, backend, tmp_path).run(resume=True)
    Trainer(tiny_data, replace(TINY, iterations=2), backend, tmp_path / "other").run()
    fewer = TrainingData(
        tiny_data.targets[:5], tiny_data.matrices[:5], tiny_data.world_matrices[:5], tiny_data.scene, tiny_data.roi
    )
    with pytest.raises(IXGSError, match="belongs to a run with 8 views"):
        Trainer(fewer, TINY, backend, tmp_path / "other").run(resume=True)


def test_reconstruct_command_writes_volume_with_world_geometry(tiny_scan, tmp_path: Path, capsys):
    folder, truth = tiny_scan
    args = [
        "reconstruct",
        str(folder),
        "-o",
        str(tmp_path),
        "--preset",
        "fast",
        "--iterations",
        "30",
        "--gaussians",
        "1500",
        "--device",
        "cpu",
        "--voxel-size",
        "8",
        "--threshold",
        "0.025",
        "--format",
        "nii.gz",
    ]
    assert main(args) == 0
    refined, line = capsys.readouterr().out.strip().splitlines()
    assert refined.startswith("poses refined: median ")  # refinement is on by default
    assert line.startswith("reconstructed 8 views in ") and "30 iterations" in line and line.endswith("volume.nii.gz")
    volume = read_volume(tmp_path / "volume.nii.gz")
    assert volume.shape == truth.shape
    np.testing.assert_allclose(volume.origin, truth.origin, atol=1e-4)
    np.testing.assert_allclose(volume.spacing, truth.spacing, atol=1e-5)
    # Attenuation in 1/mm: the body's soft tissue is about 0.02 /mm, and the volume follows the truth.
    assert 0.005 < float(np.median(volume.array[truth.array > 0.015])) < 0.04
    assert np.corrcoef(volume.array.ravel(), truth.array.ravel())[0, 1] > 0.5
    label = read_volume(tmp_path / "label.nii.gz")
    assert set(np.unique(label.array)) <= {0.0, 1.0}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["iterations"] == 30 and summary["config"]["init"] == "volume"
    assert (tmp_path / "gaussians.npz").exists()
    # The preview: the SART start on the output grid, written before the training (and kept).
    assert summary["preview_path"] == "preview.nrrd" and 0 < summary["preview_seconds"] < summary["total_seconds"]
    preview = read_volume(tmp_path / "preview.nrrd")
    assert preview.shape == truth.shape and float(preview.array.min()) >= 0.0
    np.testing.assert_allclose(preview.origin, truth.origin, atol=1e-4)
    assert np.corrcoef(preview.array.ravel(), truth.array.ravel())[0, 1] > 0.5
    # --resume of a finished run just rewrites the outputs.
    assert main([*args, "--resume"]) == 0


def test_reconstruct_reports_a_bad_scan(tmp_path: Path, capsys):
    assert main(["reconstruct", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert "scan.json not found" in capsys.readouterr().err


def test_reconstruct_resume_without_checkpoint(tiny_scan, tmp_path: Path):
    with pytest.raises(IXGSError, match="`resume`: no checkpoint in"):
        reconstruct_scan(tiny_scan[0], tmp_path, TINY, "cpu", resume=True)


def test_schedule_and_presets():
    assert exponential_schedule(0, 100, 1e-2, 1e-3) == pytest.approx(1e-2)
    assert exponential_schedule(99, 100, 1e-2, 1e-3) == pytest.approx(1e-3)
    assert exponential_schedule(49, 99, 1e-2, 1e-4) == pytest.approx(1e-3)
    assert preset("default") == ReconstructionConfig()  # R^2-Gaussian's recipe
    assert preset("fast", iterations=7, seed=None).iterations == 7
    with pytest.raises(ValueError, match="unknown preset 'slow'"):
        preset("slow")
    with pytest.raises(ValueError, match="init must be 'random' or 'volume'"):
        ReconstructionConfig(init="fdk")
    assert ReconstructionConfig.from_dict(TINY.to_dict()) == TINY
    assert ReconstructionConfig.from_dict(json.loads(json.dumps(preset("cpu").to_dict()))) == preset("cpu")


def test_settings_nest_by_owner_and_earlier_flat_configs_still_read():
    from ixgs_engine.reconstruct.config import CPU_FINAL_PASSES, FinalPasses, rtk_installed

    cpu = preset("cpu")
    assert cpu.to_dict()["densification"]["start"] == 100 and cpu.final_passes == CPU_FINAL_PASSES
    assert cpu.to_dict()["final_passes"]["projector"] == ("rtk" if rtk_installed() else "ours")
    assert "densify_from" not in cpu.to_dict() and "final_sart_passes" not in cpu.to_dict()
    # A checkpoint's config written before the settings nested (flat names) reads into the groups,
    # with what the passes were then (ours, 12).
    cpu = replace(cpu, final_passes=FinalPasses(passes=12))
    flat = {k: v for k, v in cpu.to_dict().items() if k not in ("densification", "final_passes")}
    flat |= {"densify_from": 100, "densify_until": 250, "densify_interval": 50, "densify_grad_threshold": 5e-5}
    flat |= {"max_gaussians": 100_000, "prune_min_density": 1e-5, "final_sart_passes": 12}
    flat |= {"final_sart_relaxation": 0.8, "final_tv_steps": 10, "final_tv_step": 0.2}
    assert ReconstructionConfig.from_dict(flat) == cpu
    with pytest.raises(ValueError, match="unknown reconstruction settings: densify_sometimes"):
        ReconstructionConfig.from_dict(flat | {"densify_sometimes": 1})
    # Nested settings by their dotted names (the benchmarks' --set), top-level ones by theirs.
    changed = preset("cpu", **{"final_passes.passes": 3, "densification.max_gaussians": 7, "seed": 5})
    assert (changed.final_passes.passes, changed.densification.max_gaussians, changed.seed) == (3, 7, 5)
    assert changed.densification.start == 100 and changed.final_passes.tv_steps == 10
    with pytest.raises(ValueError, match="unknown settings group 'shading'"):
        preset("cpu", **{"shading.gamma": 2})


def test_downsampled_matrices_follow_block_averaged_pixels():
    P = carm_projection_matrix(20, 10, 600, 1000, Detector((64, 48), (1.0, 1.0)))
    point = np.array([[5.0, -7.0, 3.0]])
    (u, v), _ = project_points(P, point)[0][0], None
    coarse, _ = project_points(downsample_matrices(P[None], 2)[0], point)
    np.testing.assert_allclose(coarse[0], [(u - 0.5) / 2, (v - 0.5) / 2])


def test_default_voxel_size_is_the_detector_pixel_at_the_roi_centre():
    P = carm_projection_matrix(0, 0, 600, 1000, Detector((64, 64), (1.6, 1.6)))
    assert detector_voxel_size(P[None], ROI([0, 0, 0], [50, 50, 50])) == pytest.approx(0.96)


def test_demo_command_end_to_end_on_tiny_settings(tmp_path: Path, capsys):
    args = [
        "demo",
        "-o",
        str(tmp_path),
        "--views",
        "6",
        "--phantom-size",
        "24",
        "--detector-pixels",
        "40",
        "--iterations",
        "10",
        "--gaussians",
        "500",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("demo: 6 views, PSNR ") and line.endswith("slices.png")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert np.isfinite(metrics["psnr_3d_db"]) and 0.0 < metrics["ssim_3d"] <= 1.0
    from PIL import Image

    picture = np.asarray(Image.open(tmp_path / "slices.png"))
    assert picture.shape[0] > 2 * 24 and picture.std() > 10  # two captioned rows with content
    assert (tmp_path / "reconstruction" / "volume.nrrd").exists()


def test_sart_start_stays_physical_when_the_patient_is_larger_than_the_roi(tiny_scan):
    """Without an ROI the box is what every view sees, smaller than the torso: SART would pile
    the outside attenuation into spikes at the box faces; the start is clipped instead."""
    from ixgs_engine.io.scan import Projections
    from ixgs_engine.reconstruct.initialization import sart_start

    projections = load_projections(read_scan(tiny_scan[0]))
    truncated = Projections(projections.values, projections.matrices, ROI([0, 0, 0], [110, 110, 110]), True)
    data = TrainingData.from_projections(truncated, 1.0, torch.device("cpu"))
    values, _ = sart_start(data, replace(TINY, init_grid_size=24))
    assert data.scene.attenuation_to_world(values.max()) < 0.1  # bone is ~0.05 /mm; spikes reached ~27


def test_auto_preset_follows_the_device_and_domain_settings_are_checked():
    from ixgs_engine.reconstruct.presets import DEFAULT_PRESET, resolve_preset

    assert DEFAULT_PRESET == "auto"
    assert resolve_preset("auto", torch.device("cpu")) == "cpu"
    assert resolve_preset("auto", torch.device("cuda")) == "default"
    assert resolve_preset("fast", torch.device("cuda")) == "fast"
    for bad in ({"domain_scale": 0.5}, {"refine_scale": 3.0}, {"outside_share": 1.0}):
        with pytest.raises(ValueError):
            ReconstructionConfig(**bad)


def test_plain_reconstruct_names_its_preset_and_estimate_first(tiny_scan, tmp_path: Path, capsys):
    folder, _ = tiny_scan
    args = [
        "reconstruct",
        str(folder),
        "-o",
        str(tmp_path),
        "--iterations",
        "4",
        "--gaussians",
        "300",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    first = capsys.readouterr().err.strip().splitlines()[0]
    assert first.startswith("ixgs: preset cpu (auto) on cpu: 4 iterations, 8 views of 40x40 pixels, about ")
    assert first.endswith("(estimated)")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["preset"] == "cpu (auto)" and summary["estimated_seconds"] > 0


@pytest.fixture(scope="module")
def insitu_data(tiny_scan) -> tuple[TrainingData, object]:
    """The tiny scan with an ROI half the phantom's size: every ray also crosses anatomy
    outside the box, as in a patient."""
    from ixgs_engine.io.scan import Projections

    projections = load_projections(read_scan(tiny_scan[0]))
    truth = tiny_scan[1]
    roi = ROI(truth.center(), truth.extent() / 2.0, truth.direction.T)
    inside = Projections(projections.values, projections.matrices, roi, True)
    return TrainingData.from_projections(inside, 1.0, torch.device("cpu")), truth


def test_starting_gaussians_cover_the_domain_around_the_roi(insitu_data):
    from ixgs_engine.reconstruct.initialization import ModelDomain, initial_model

    data, _ = insitu_data
    backend = get_backend("torch")
    for init in ("volume", "random"):
        config = replace(TINY, init=init, init_grid_size=16, num_gaussians=2000, outside_share=0.3)
        positions = initial_model(data, config, backend).positions.detach().numpy()
        domain = ModelDomain.of(data, config)
        assert np.all(np.abs(positions) <= domain.domain + 1e-6)
        assert 0.2 < domain.outside_roi(positions).mean() < 0.4, init


def test_gaussians_around_the_roi_carry_the_attenuation_outside_it(insitu_data, tmp_path: Path):
    """In situ, Gaussians confined to the ROI soak up the attenuation of the anatomy around it;
    the model's domain holds that anatomy where it is, so the ROI's mean stays near the truth."""
    from ixgs_engine.reconstruct.output import voxelize_volume

    data, truth = insitu_data
    backend = get_backend("torch")
    grid_mask = data.roi.contains(truth.voxel_centres())
    true_mean = float(truth.array[grid_mask].mean())
    errors = {}
    for scale in (1.0, 2.5):
        config = replace(
            preset("fast"),
            iterations=120,
            num_gaussians=3000,
            init_grid_size=24,
            densification=DensificationStrategy(start=40, stop=100, interval=30, max_gaussians=6000),
            domain_scale=scale,
            refine_scale=min(1.5, scale),
            outside_share=0.0 if scale == 1.0 else 0.3,
        )
        result = Trainer(data, config, backend, tmp_path / str(scale)).run()
        volume = voxelize_volume(result.model, data.scene, data.roi, truth.grid, backend)
        errors[scale] = abs(float(volume.array[grid_mask].mean()) / true_mean - 1.0)
    assert errors[2.5] < 0.3 and errors[2.5] < 0.5 * errors[1.0], errors  # measured 0.23 and 0.63


def test_pyramid_switches_to_full_resolution_and_resumes_exactly(tiny_scan, tiny_data, tmp_path: Path):
    """Half-resolution views for the first steps, the full-resolution ones after; a run killed
    after the switch resumes to the uninterrupted result."""
    coarse = TrainingData.from_projections(load_projections(read_scan(tiny_scan[0])), 0.5, torch.device("cpu"))
    config = replace(TINY, image_scale=0.5, coarse_iterations=12)
    backend = get_backend("torch")
    seen = []

    class Recording(Trainer):
        def _views_at(self, step):
            data = super()._views_at(step)
            seen.append(data.image_shape)
            return data

    whole = Recording(coarse, config, backend, tmp_path / "whole", fine_data=tiny_data).run()
    assert seen == [(20, 20)] * 12 + [(40, 40)] * 12
    with pytest.raises(Killed):
        Trainer(coarse, config, backend, tmp_path / "killed", progress=kill_at(17), fine_data=tiny_data).run()
    resumed = Trainer(coarse, config, backend, tmp_path / "killed", fine_data=tiny_data).run(resume=True)
    for name, value in whole.model.parameters().items():
        torch.testing.assert_close(resumed.model.parameters()[name], value, rtol=0, atol=0)
