"""Evaluation: resampling by world geometry, bone-surface metrics, re-rendered views, the
`ixgs evaluate` command with held-out views, and the RTK baselines (SART, FDK)."""

import json

import numpy as np
import pytest
from tiny_settings import HOLDOUT_RUN

from ixgs_engine.cli import main
from ixgs_engine.errors import GeometryError, IXGSError
from ixgs_engine.evaluate.evaluation import as_attenuation, choose_views, volume_metrics
from ixgs_engine.evaluate.metrics import psnr_2d, ssim_2d
from ixgs_engine.evaluate.projections import compare_views
from ixgs_engine.evaluate.resample import align_to_reference, resample_to
from ixgs_engine.evaluate.surface import bone_threshold, surface_metrics
from ixgs_engine.geometry.carm import Detector
from ixgs_engine.io.scan import Projections
from ixgs_engine.io.volumes import read_volume, write_volume
from ixgs_engine.phantoms import hu_to_attenuation, make_phantom
from ixgs_engine.simulate import CarmSetup, arbitrary_poses, circular_poses, pose_matrices, roi_of_volume, simulate_scan
from ixgs_engine.volume import Volume

rtk_bridge = pytest.importorskip("ixgs_engine.projector.rtk_bridge")
from ixgs_engine.classical.rtk import rtk_fdk  # noqa: E402


def _ball(shape, centre_ijk, radius, spacing=(1.0, 1.0, 1.0), value=0.05) -> Volume:
    k, j, i = np.indices(shape)
    inside = ((i - centre_ijk[0]) ** 2 + (j - centre_ijk[1]) ** 2 + (k - centre_ijk[2]) ** 2) <= radius**2
    return Volume(np.where(inside, value, 0.0).astype(np.float32), spacing=spacing)


def test_identical_volumes_score_perfectly():
    volume = _ball((30, 30, 30), (15, 15, 15), 9)
    metrics = volume_metrics(volume, volume, bone_hu=0.0)
    assert metrics["psnr_3d_db"] == float("inf")
    assert metrics["ssim_3d"] == pytest.approx(1.0)
    assert metrics["reference_coverage"] == 1.0
    assert metrics["bone"]["dice"] == 1.0
    assert metrics["bone"]["mean_surface_distance_mm"] == 0.0
    assert metrics["bone"]["hausdorff95_mm"] == 0.0


def test_shifted_slab_is_off_by_the_shift_in_mm():
    """A slab moved by 3 voxels of 2 mm along x: the far faces are 6 mm off."""
    reference = np.zeros((20, 20, 30), np.float32)
    reference[3:17, 3:17, 8:14] = 1.0
    moved = np.roll(reference, 3, axis=2)
    spacing = (2.0, 1.0, 0.5)
    result = surface_metrics(Volume(moved, spacing=spacing), Volume(reference, spacing=spacing), 0.5)
    assert result.hausdorff_mm == pytest.approx(6.0)
    assert result.hausdorff95_mm == pytest.approx(6.0)
    assert result.dice == pytest.approx(0.5)  # 3 of 6 voxel layers overlap


def test_shifted_ball_surface_distances_match_the_analytic_values():
    """A ball moved by d: a surface point with normal n is d|n.e| from the other surface, so the
    mean distance is d/2 and the 95th percentile 0.95 d (|cos| is uniform on the sphere)."""
    shift, spacing = 4, 0.8
    reference = _ball((48, 48, 48), (22, 24, 24), 14, (spacing,) * 3)
    moved = _ball((48, 48, 48), (22 + shift, 24, 24), 14, (spacing,) * 3)
    result = surface_metrics(moved, reference, 0.025)
    d = shift * spacing
    assert result.mean_surface_distance_mm == pytest.approx(d / 2, abs=0.5 * spacing)
    assert result.hausdorff95_mm == pytest.approx(0.95 * d, abs=0.5 * spacing)
    assert result.hausdorff_mm == pytest.approx(d, abs=0.5 * spacing)


def test_empty_masks():
    volume = _ball((20, 20, 20), (10, 10, 10), 5)
    empty = volume.with_array(np.zeros_like(volume.array))
    result = surface_metrics(empty, volume, 0.01)
    assert result.dice == 0.0 and result.mean_surface_distance_mm == float("inf")
    with pytest.raises(ValueError, match="reference has no voxel"):
        surface_metrics(volume, empty, 0.01)


def _linear(points: np.ndarray) -> np.ndarray:
    return 0.3 + points @ np.array([0.01, -0.02, 0.015])


def _sampled(function, shape, origin, spacing, direction) -> Volume:
    grid = Volume(np.zeros(shape), origin, spacing, direction)
    k, j, i = np.indices(shape)
    index = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    world = (grid.index_to_world_matrix() @ index)[:3].T
    return grid.with_array(function(world).reshape(shape).astype(np.float32))


def test_resampling_uses_origin_spacing_and_direction():
    """A linear function sampled on a rotated, flipped, coarser grid with another origin comes
    back exactly (linear interpolation) at the reference's voxel centres."""
    reference = _sampled(_linear, (10, 12, 14), (-7.0, -6.0, -5.0), (1.0, 1.0, 1.0), np.eye(3))
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # i -> +y, j -> -x
    other = _sampled(_linear, (8, 12, 12), (9.0, -8.0, -8.0), (1.75, 1.75, 2.0), direction)
    aligned = align_to_reference(other, reference)
    assert aligned.coverage == 1.0
    np.testing.assert_allclose(aligned.test.array, reference.array, atol=1e-5)
    assert volume_metrics(other, reference, bone_hu=-1000)["psnr_3d_db"] > 80
    np.testing.assert_allclose(resample_to(other, reference.grid).array, reference.array, atol=1e-5)
    # The same voxels with the direction dropped land elsewhere: far off.
    dropped = Volume(other.array, (-10.0, -8.0, -8.0), other.spacing)
    assert volume_metrics(dropped, reference, bone_hu=-1000)["psnr_3d_db"] < 30


def test_partial_overlap_is_cropped_to_the_covered_part():
    reference = _sampled(_linear, (10, 10, 10), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    half = _sampled(_linear, (10, 10, 5), (5.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    aligned = align_to_reference(half, reference)
    assert aligned.coverage == pytest.approx(0.5)
    assert aligned.reference.shape == (10, 10, 5)
    np.testing.assert_allclose(aligned.reference.origin, [5.0, 0.0, 0.0])
    np.testing.assert_allclose(aligned.test.array, aligned.reference.array, atol=1e-5)


def test_non_overlapping_volumes_are_refused():
    reference = _ball((10, 10, 10), (5, 5, 5), 3)
    far = Volume(reference.array, origin=(500.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="do not overlap"):
        volume_metrics(far, reference)


def test_reference_in_hu_is_converted():
    hu = make_phantom("shepp-logan", (16, 16, 16), 4.0)
    converted, units = as_attenuation(hu)
    assert units == "hu"
    np.testing.assert_allclose(converted.array, hu_to_attenuation(hu).array)
    mu, units = as_attenuation(converted)
    assert units == "mu" and mu is converted
    assert bone_threshold(0.0) == pytest.approx(float(hu_to_attenuation(0.0)))


def test_2d_metrics_follow_their_definitions():
    rng = np.random.default_rng(1)
    reference = rng.uniform(0.5, 3.0, (2, 20, 24))
    test = reference + 0.1 * rng.normal(size=reference.shape)
    expected = [20 * np.log10(r.max() / np.sqrt(np.mean((t - r) ** 2))) for t, r in zip(test, reference, strict=True)]
    np.testing.assert_allclose(psnr_2d(test, reference), expected)
    assert psnr_2d(reference, reference).tolist() == [float("inf")] * 2
    np.testing.assert_allclose(ssim_2d(reference, reference), 1.0)
    noisier = reference + 3 * (test - reference)
    assert np.all(0 < ssim_2d(noisier, reference)) and np.all(ssim_2d(noisier, reference) < ssim_2d(test, reference))
    assert np.all(ssim_2d(test, reference) < 1)


def test_view_selection():
    assert choose_views(None, 6, [2, 5]) == ([2, 5], "heldout")
    assert choose_views(None, 3, []) == ([0, 1, 2], "all")
    assert choose_views("training", 6, [2, 5]) == ([0, 1, 3, 4], "training")
    assert choose_views("1,3", 6, []) == ([1, 3], "listed")
    with pytest.raises(IXGSError, match="held out no views"):
        choose_views("heldout", 4, [])
    with pytest.raises(IXGSError, match="`views` takes heldout"):
        choose_views("x", 4, [])


@pytest.fixture(scope="module")
def small_truth() -> Volume:
    return hu_to_attenuation(make_phantom("spine", (24, 24, 24), 8.0))


def _setup() -> CarmSetup:
    return CarmSetup(detector=Detector((32, 32), (12.8, 12.8)))


def test_rerendered_views_agree_with_rtk(small_truth):
    """Our re-rendering of a volume against RTK's Joseph projector (independent code)."""
    matrices = pose_matrices(arbitrary_poses(3, isocenter=tuple(small_truth.center())), _setup())
    rtk_images = rtk_bridge.rtk_forward_project(small_truth, matrices, (32, 32))
    projections = Projections(rtk_images, matrices, roi_of_volume(small_truth), False)
    comparison = compare_views(small_truth, projections, [0, 2])
    assert comparison.views == [0, 2]
    assert np.all(comparison.psnr_db > 45) and np.all(comparison.ssim > 0.99)
    blurred = small_truth.with_array(0.9 * small_truth.array)
    assert np.all(compare_views(blurred, projections, [0, 2]).psnr_db < comparison.psnr_db)
    with pytest.raises(IXGSError, match="0..2"):
        compare_views(small_truth, projections, [3])


def test_evaluate_command_scores_heldout_views(tmp_path, small_truth, capsys):
    scan = tmp_path / "scan"
    simulate_scan(scan, small_truth, arbitrary_poses(8, isocenter=tuple(small_truth.center())), _setup())
    run = tmp_path / "run"
    assert main(["reconstruct", str(scan), "-o", str(run), *HOLDOUT_RUN]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["heldout_views"] == [3, 7] and summary["views"] == 6
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    assert "2 heldout views" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["views"] == [3, 7] and metrics["view_set"] == "heldout"
    assert metrics["reference"].endswith("ground_truth.nrrd")
    volume = read_volume(run / "volume.nrrd")
    direct = volume_metrics(volume, small_truth)
    assert metrics["psnr_3d_db"] == pytest.approx(direct["psnr_3d_db"])
    assert metrics["bone"]["dice"] == pytest.approx(direct["bone"]["dice"])
    assert [v["view"] for v in metrics["per_view"]] == [3, 7]
    # A CT in HU as the reference gives the same numbers as its attenuation.
    write_volume(tmp_path / "ct.nrrd", make_phantom("spine", (24, 24, 24), 8.0))
    out = tmp_path / "hu.json"
    assert main(["evaluate", str(run / "volume.nrrd"), "--reference", str(tmp_path / "ct.nrrd"), "-o", str(out)]) == 0
    from_hu = json.loads(out.read_text())
    assert from_hu["reference_units"] == "hu" and from_hu["psnr_3d_db"] == pytest.approx(direct["psnr_3d_db"], rel=1e-5)
    assert main(["evaluate", str(run / "volume.nrrd")]) == 2
    assert "nothing to compare" in capsys.readouterr().err


def test_fdk_reconstructs_circular_scans_and_refuses_others(tmp_path, capsys):
    truth = hu_to_attenuation(make_phantom("shepp-logan", (32, 32, 32), 4.5))
    setup = CarmSetup(detector=Detector((64, 64), (6.0, 6.0)))
    poses = circular_poses(48, (0.0, 360.0), tuple(truth.center()))
    images = rtk_bridge.rtk_forward_project(truth, pose_matrices(poses, setup), (64, 64))
    fdk = rtk_fdk(images, pose_matrices(poses, setup), truth.grid)
    metrics = volume_metrics(fdk, truth)
    assert metrics["psnr_3d_db"] > 25 and metrics["ssim_3d"] > 0.7
    assert fdk.array.mean() == pytest.approx(truth.array.mean(), rel=0.05)
    # A short scan (220 deg) with RTK's Parker weights keeps the mean and most of the quality.
    short = pose_matrices(circular_poses(48, (-110.0, 110.0), tuple(truth.center())), setup)
    short_fdk = rtk_fdk(rtk_bridge.rtk_forward_project(truth, short, (64, 64)), short, truth.grid)
    assert volume_metrics(short_fdk, truth)["psnr_3d_db"] > 25
    assert short_fdk.array.mean() == pytest.approx(truth.array.mean(), rel=0.05)
    # Through the CLI on a scan folder: the volume lands on the scan's ROI grid.
    simulate_scan(tmp_path / "circular", truth, poses[::2], setup, circular=True)
    assert (
        main(["baseline", "fdk", str(tmp_path / "circular"), "-o", str(tmp_path / "fdk"), "--voxel-size", "4.5"]) == 0
    )
    written = read_volume(tmp_path / "fdk" / "volume.nrrd")
    np.testing.assert_allclose(written.origin, truth.origin, atol=1e-4)
    assert written.shape == truth.shape
    simulate_scan(tmp_path / "arbitrary", truth, arbitrary_poses(6, isocenter=tuple(truth.center())), setup)
    assert main(["baseline", "fdk", str(tmp_path / "arbitrary"), "-o", str(tmp_path / "no")]) == 2
    assert "FDK needs a circular orbit" in capsys.readouterr().err
    assert (
        main(
            [
                "baseline",
                "sart",
                str(tmp_path / "arbitrary"),
                "-o",
                str(tmp_path / "sart"),
                "--iterations",
                "2",
                "--voxel-size",
                "9",
            ]
        )
        == 0
    )
    sart_summary = json.loads((tmp_path / "sart" / "summary.json").read_text())
    assert sart_summary["method"] == "rtk-sart" and sart_summary["views"] == 6
    assert read_volume(tmp_path / "sart" / "volume.nrrd").shape == (16, 16, 16)
