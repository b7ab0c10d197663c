"""Fiducial-based poses: phantom files, bead rendering, detection, PnP/DLT (mirrored detectors
included), correspondence with outliers and missing beads, joint refinement, inpainting, CLI."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ixgs_engine.cli import main
from ixgs_engine.errors import GeometryError, IXGSError
from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.geometry.projection import decompose_projection_matrix, normalize_projection_matrix, project_points
from ixgs_engine.io.scan import load_projections, read_scan, write_scan
from ixgs_engine.poses.calibrate import DetectionOptions, calibrate_scan, detect_scan, reprojection_summary
from ixgs_engine.poses.correspondence import best_match, projected_beads
from ixgs_engine.poses.detection import Detection, detect_beads, read_points
from ixgs_engine.poses.estimation import dlt, pnp, polish_matrix, reprojection_errors
from ixgs_engine.poses.inpainting import bead_mask, inpaint
from ixgs_engine.poses.phantom import (
    CarmIntrinsics,
    PhantomError,
    de_bruijn_code,
    helix_phantom,
    read_phantom,
    write_phantom,
)
from ixgs_engine.poses.pipeline import detect_view, estimate_scan
from ixgs_engine.poses.refinement import ViewObservations, refine_views
from ixgs_engine.poses.simulation import MU_STEEL_PER_MM, render_beads, write_bead_scan

SHAPE = (96, 96)
DETECTOR = Detector((96, 96), (3.0, 3.0))
PHANTOM = helix_phantom(20, 25.0, 90.0, 2.0, (6.0, 10.0))


def _matrix(primary: float, secondary: float, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    return carm_projection_matrix(primary, secondary, 600.0, 1000.0, DETECTOR, shift)


def _unmirrored(matrix: np.ndarray) -> np.ndarray:
    """The same camera with its rows flipped (v -> H-1-v): a detector that is not mirrored."""
    flip = np.array([[1.0, 0, 0], [0, -1.0, SHAPE[0] - 1.0], [0, 0, 1.0]])
    return flip @ matrix


def _same_camera(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference of two matrices normalized to unit third row and positive depth."""
    return float(
        np.abs(normalize_projection_matrix(a) - normalize_projection_matrix(b)).max()
        / np.abs(normalize_projection_matrix(b)).max()
    )


def _bead_rms(estimate: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    """RMS pixel distance between the points projected by an estimated and the true matrix."""
    errors = np.linalg.norm(project_points(estimate, points)[0] - project_points(truth, points)[0], axis=1)
    return float(np.sqrt(np.mean(errors**2)))


def _background(seed: int = 0, noise: float = 0.01) -> np.ndarray:
    v, u = np.mgrid[: SHAPE[0], : SHAPE[1]]
    smooth = 2.0 + 0.01 * u + 0.5 * np.exp(-((u - 40.0) ** 2 + (v - 50.0) ** 2) / 800.0)
    return smooth + np.random.default_rng(seed).normal(0, noise, SHAPE)


# --- phantom files ------------------------------------------------------------------------------


def test_helix_code_orders_beads_and_round_trips(tmp_path):
    code = de_bruijn_code(5)
    windows = {tuple(code[i : i + 5]) for i in range(len(code) - 4)}
    assert len(windows) == len(code) - 4 == 32  # every window of 5 sizes occurs once
    path = write_phantom(tmp_path / "p.json", helix_phantom(24, intrinsics=CarmIntrinsics(1000.0, (0.3, 0.3))))
    again = read_phantom(path)
    assert again.count == 24 and set(again.diameters) == {3.0, 5.0}
    assert again.intrinsics == CarmIntrinsics(1000.0, (0.3, 0.3))
    shipped = read_phantom("helix")
    np.testing.assert_allclose(shipped.positions, helix_phantom().positions, atol=1e-5)


def test_phantom_file_errors_name_the_file(tmp_path):
    with pytest.raises(PhantomError, match="not found"):
        read_phantom(tmp_path / "missing.json")
    (tmp_path / "scan.json").write_text(json.dumps({"format": "ixgs-scan/1"}))
    with pytest.raises(PhantomError, match="scan.json: not a bead phantom"):
        read_phantom(tmp_path / "scan.json")
    flat = {"format": "ixgs-bead-phantom/1", "beads": [{"position": [i, i * i, 0.0], "diameter": 2} for i in range(8)]}
    (tmp_path / "flat.json").write_text(json.dumps(flat))
    with pytest.raises(PhantomError, match="coplanar"):
        read_phantom(tmp_path / "flat.json")
    few = {"format": "ixgs-bead-phantom/1", "beads": [{"position": [i, i * i, i**3], "diameter": 2} for i in range(4)]}
    (tmp_path / "few.json").write_text(json.dumps(few))
    with pytest.raises(PhantomError, match="4 beads"):
        read_phantom(tmp_path / "few.json")


# --- bead rendering -------------------------------------------------------------------------------


def test_bead_shadow_is_mu_times_chord_by_brute_force():
    P = _matrix(25.0, 10.0)
    image = render_beads(PHANTOM, P, SHAPE, supersample=1)
    pose = decompose_projection_matrix(P)
    uv, _ = project_points(P, PHANTOM.positions[:1])
    u, v = int(round(uv[0, 0])) + 1, int(round(uv[0, 1]))  # a pixel off the centre: a shorter chord
    direction = np.linalg.solve(normalize_projection_matrix(P)[:, :3], [u, v, 1.0])
    direction /= np.linalg.norm(direction)
    steps = np.linspace(0, 1200, 1_200_001)
    inside = np.linalg.norm(pose.source + steps[:, None] * direction - PHANTOM.positions[0], axis=1) <= 3.0
    assert inside.any()
    assert image[v, u] == pytest.approx(MU_STEEL_PER_MM * inside.sum() * (steps[1] - steps[0]), rel=2e-3)


# --- detection ------------------------------------------------------------------------------------


def test_detection_finds_centres_to_a_tenth_of_a_pixel_and_ignores_an_edge():
    P = _matrix(0.0, 0.0)
    image = _background() + render_beads(PHANTOM, P, SHAPE)
    image[:, 48:] += 1.0  # a bone edge (step) through the bead pattern
    found = detect_beads(image, (1.0, 5.0))
    uv, radii, _ = projected_beads(P, PHANTOM)
    separate = [
        i
        for i in range(PHANTOM.count)
        if np.all(np.delete(np.linalg.norm(uv - uv[i], axis=1) - radii, i) > radii[i] + 2)
        and abs(uv[i, 0] - 47.5) > radii[i] + 2
        and 3 < uv[i, 0] < 92
        and 3 < uv[i, 1] < 92
    ]
    assert len(separate) >= 5
    errors = [np.min(np.linalg.norm(uv[i] - [[d.u, d.v] for d in found], axis=1)) for i in separate]
    assert max(errors) < 0.1
    for d in found:  # every detection is a bead (nothing on the edge), radius close to the prediction
        nearest = np.argmin(np.linalg.norm(uv - [d.u, d.v], axis=1))
        assert np.linalg.norm(uv[nearest] - [d.u, d.v]) < 0.5
        assert d.radius == pytest.approx(radii[nearest], rel=0.1)


def test_blank_view_reports_no_beads(tmp_path):
    write_scan(tmp_path / "scan", [_background()], None, pixel_spacing=(3.0, 3.0))
    found = detect_view(read_scan(tmp_path / "scan", require_poses=False), PHANTOM, 0)
    assert found.detections == [] and found.confidence == 0.0 and "no beads found" in found.message


# --- PnP / DLT ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mirrored", [True, False])
def test_pnp_recovers_the_matrix_of_a_mirrored_or_plain_detector(mirrored):
    truth = _matrix(40.0, -20.0, (5.0, -3.0, 8.0))
    if not mirrored:
        truth = _unmirrored(truth)
    assert decompose_projection_matrix(truth).mirrored == mirrored
    uv, _ = project_points(truth, PHANTOM.positions)
    K = CarmIntrinsics(1000.0, (3.0, 3.0), None, mirrored).matrix(SHAPE, mirrored)
    R, t = pnp(PHANTOM.positions, uv, K)
    estimate = K @ np.hstack([R, t[:, None]])
    assert np.linalg.det(R) == pytest.approx(1.0)
    assert _same_camera(estimate, truth) < 1e-7
    assert reprojection_errors(estimate, PHANTOM.positions, uv).max() < 1e-6


def test_dlt_recovers_the_matrix_and_polish_lowers_noisy_error():
    truth = _matrix(-75.0, 20.0)
    uv, _ = project_points(truth, PHANTOM.positions)
    assert _same_camera(dlt(PHANTOM.positions, uv), truth) < 1e-8
    noisy = uv + np.random.default_rng(1).normal(0, 0.5, uv.shape)
    linear = dlt(PHANTOM.positions, noisy)
    polished = polish_matrix(linear, PHANTOM.positions, noisy)
    rms = [np.sqrt(np.mean(reprojection_errors(P, PHANTOM.positions, noisy) ** 2)) for P in (linear, polished)]
    assert rms[1] < rms[0]
    with pytest.raises(GeometryError, match="at least 6"):
        dlt(PHANTOM.positions[:5], uv[:5])
    flat = PHANTOM.positions.copy()
    flat[:, 2] = 0.0
    with pytest.raises(GeometryError, match="coplanar"):
        dlt(flat, uv)


# --- correspondence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mirrored", [True, False])
def test_matching_survives_outliers_and_missing_beads(mirrored):
    truth = _matrix(70.0, -10.0, (4.0, 2.0, -6.0))
    if not mirrored:
        truth = _unmirrored(truth)
    uv, radii, _ = projected_beads(truth, PHANTOM)
    rng = np.random.default_rng(3)
    kept = rng.permutation(PHANTOM.count)[:15]  # 5 beads missing (hidden, out of view)
    detections = [Detection(*uv[i], radius=radii[i] * rng.uniform(0.95, 1.05)) for i in kept]
    detections += [Detection(5.0, 8.0, 2.0), Detection(90.0, 12.0, 3.5), Detection(10.0, 85.0, 1.8)]  # false ones
    intrinsics = CarmIntrinsics(1000.0, (3.0, 3.0))
    options = [intrinsics.matrix(SHAPE, True), intrinsics.matrix(SHAPE, False)]
    match = best_match(PHANTOM, detections, options, SHAPE)
    assert match is not None
    assert sorted(match.pairs) == sorted((int(bead), j) for j, bead in enumerate(kept))
    assert (match.intrinsics[1, 1] < 0) == mirrored
    assert _same_camera(match.matrix, truth) < 1e-6


# --- joint refinement -------------------------------------------------------------------------------


def test_joint_refinement_with_shared_intrinsics_beats_per_view_dlt():
    rng = np.random.default_rng(5)
    truths = [_matrix(a, b) for a, b in ((-80, 10), (-30, -20), (0, 25), (45, 5), (85, -15), (120, 20))]
    views, linear = [], []
    for P in truths:
        uv, _ = project_points(P, PHANTOM.positions)
        noisy = uv + rng.normal(0, 0.3, uv.shape)
        start = polish_matrix(dlt(PHANTOM.positions, noisy), PHANTOM.positions, noisy)
        linear.append(start)
        views.append(ViewObservations(PHANTOM.positions, noisy, start))
    refined = refine_views(views, None, True)
    grid = np.stack(np.meshgrid(*[np.linspace(-60, 60, 5)] * 3), axis=-1).reshape(-1, 3)

    def error(matrices):  # pixel error of a 3-D grid of points around the phantom, against the truth
        return np.mean(
            [
                np.mean(np.linalg.norm(project_points(P, grid)[0] - project_points(T, grid)[0], axis=1))
                for P, T in zip(matrices, truths, strict=True)
            ]
        )

    assert error(refined) < 0.8 * error(linear)
    known = CarmIntrinsics(1000.0, (3.0, 3.0)).matrix(SHAPE, False)
    fixed = refine_views(views, known, False)
    assert all(abs(decompose_projection_matrix(P).intrinsics[0, 0] - known[0, 0]) < 1e-6 for P in fixed)


# --- inpainting -----------------------------------------------------------------------------------------


def test_inpainting_removes_the_bead_contrast():
    P = _matrix(10.0, 5.0)
    background = _background(noise=0.0)
    beads = render_beads(PHANTOM, P, SHAPE)
    mask = bead_mask(P, PHANTOM, SHAPE)
    assert mask[beads > 0].all()  # every shadowed pixel is masked
    filled = inpaint(background + beads, mask)
    assert np.abs(filled - background)[mask].max() < 0.05 * beads.max()
    assert np.array_equal(filled[~mask], (background + beads).astype(np.float32)[~mask])


# --- scans and the command line -------------------------------------------------------------------------


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def bead_scan(tmp_path_factory):
    from ixgs_engine.phantoms import hu_to_attenuation, make_phantom

    folder = tmp_path_factory.mktemp("poses")
    anatomy = hu_to_attenuation(make_phantom("spine", (32, 32, 32), 6.0))
    truth = np.stack([_matrix(a, b) for a, b in ((-5, -20), (150, 10), (0, 0))])
    phantom = helix_phantom(
        20,
        25.0,
        90.0,
        2.0,
        (6.0, 10.0),
        center=(50.0, 0.0, 0.0),
        intrinsics=CarmIntrinsics(1000.0, (3.0, 3.0), None, True),
    )
    write_phantom(folder / "phantom.json", phantom)
    with_beads, without = write_bead_scan(folder / "scan", anatomy, phantom, truth, SHAPE, (3.0, 3.0), 1e5, seed=2)
    return folder, truth, phantom, with_beads - without, without


def test_cli_detect_then_estimate_writes_a_new_calibrated_scan(bead_scan, tmp_path, capsys):
    folder, truth, phantom, beads, anatomy = bead_scan
    scan_dir = folder / "scan"
    before = _folder_digest(scan_dir)
    phantom_file = str(folder / "phantom.json")
    assert main(["poses", "detect", str(scan_dir), "--phantom", phantom_file, "-o", str(tmp_path / "d")]) == 0
    assert len(list((tmp_path / "d" / "overlays").glob("view_*.png"))) == 3
    assert (
        main(
            [
                "poses",
                "estimate",
                str(scan_dir),
                "--phantom",
                str(folder / "phantom.json"),
                "-o",
                str(tmp_path / "out"),
                "--detections",
                str(tmp_path / "d" / "detections.json"),
            ]
        )
        == 0
    )
    assert "estimated 3/3 views" in capsys.readouterr().out
    assert _folder_digest(scan_dir) == before  # the input is never modified
    out = read_scan(tmp_path / "out")
    projections = load_projections(out)
    assert projections.values.shape == (3, *SHAPE)
    assert all(_bead_rms(P, T, phantom.positions) < 0.5 for P, T in zip(out.matrices, truth, strict=True))
    report = json.loads((tmp_path / "out" / "poses_report.json").read_text())
    assert [v["status"] for v in report["views"]] == ["ok"] * 3
    assert all(v["rms_mm"] == pytest.approx(v["rms_px"] * 3.0, abs=1e-4) for v in report["views"])
    # Inpainted: the written views are close to the bead-free anatomy where the beads were.
    for index, P in enumerate(out.matrices):
        mask = bead_mask(P, phantom, SHAPE)
        residual = np.abs(projections.values[index] - anatomy[index])
        assert beads[index].max() > 5.0 and np.median(residual[mask]) < 0.05 * beads[index].max()
        assert residual[~mask].max() < 1e-5 and residual[mask].max() < 0.25 * beads[index].max()


def test_the_library_calibrates_a_scan_without_the_command_line(bead_scan, tmp_path):
    """``poses.calibrate`` is the entry point the CLI only words: stages reported by name, the
    calibrated scan written, ``overwrite`` named as a parameter when refused, the scan's own folder refused."""
    folder, truth, phantom, *_ = bead_scan
    scan = read_scan(folder / "scan", require_poses=False)
    stages = []
    calibration = calibrate_scan(scan, phantom, tmp_path / "out", stage_progress=lambda stage: stages.append(stage))
    assert stages == ["detecting beads", "estimating poses"]
    assert [pose.ok for pose in calibration.poses] == [True] * 3 and calibration.report.exists()
    written = read_scan(calibration.scan_file.parent)
    assert all(_bead_rms(P, T, phantom.positions) < 0.5 for P, T in zip(written.matrices, truth, strict=True))
    median, worst = reprojection_summary(calibration)
    assert 0.0 < median <= worst < 1.0
    with pytest.raises(IXGSError, match="already holds a scan; pass `overwrite`"):
        calibrate_scan(scan, phantom, tmp_path / "out")
    with pytest.raises(IXGSError, match="is the scan folder"):
        calibrate_scan(scan, phantom, folder / "scan", overwrite=True)
    with pytest.raises(IXGSError, match="give manual `points`"):
        detect_scan(scan, phantom, tmp_path / "d", DetectionOptions(auto=False))
    found, path = detect_scan(scan, phantom, tmp_path / "d")
    assert path.exists() and [len(view.detections) > 0 for view in found] == [True] * 3


def test_estimate_without_intrinsics_uses_dlt_and_manual_points(bead_scan, tmp_path):
    folder, truth, *_ = bead_scan
    unknown = helix_phantom(20, 25.0, 90.0, 2.0, (6.0, 10.0), center=(50.0, 0.0, 0.0))
    write_phantom(tmp_path / "unknown.json", unknown)
    uv, _ = project_points(truth[1], unknown.positions)
    visible = [i for i in range(unknown.count) if 0 <= uv[i, 0] < 95 and 0 <= uv[i, 1] < 95][:8]
    points = {"views": {"1": [{"u": float(uv[i, 0]), "v": float(uv[i, 1]), "bead": i} for i in visible]}}
    (tmp_path / "points.json").write_text(json.dumps(points))
    scan = read_scan(folder / "scan", require_poses=False)
    manual = read_points(tmp_path / "points.json", 3, unknown.count)
    found = [detect_view(scan, unknown, 1, manual[1], automatic=False)]
    pose = estimate_scan(scan, unknown, found)[0]
    assert pose.ok and sorted(b for b, _ in pose.pairs) == sorted(visible)
    assert _same_camera(pose.matrix, truth[1]) < 1e-4
    assert (
        main(
            [
                "poses",
                "estimate",
                str(folder / "scan"),
                "--phantom",
                str(tmp_path / "unknown.json"),
                "-o",
                str(tmp_path / "out"),
                "--no-inpaint",
            ]
        )
        == 0
    )
    matrices = read_scan(tmp_path / "out").matrices
    assert all(_bead_rms(P, T, unknown.positions) < 0.5 for P, T in zip(matrices, truth, strict=True))


def test_bad_inputs_give_clear_messages(bead_scan, tmp_path, capsys):
    folder, _, phantom, *_ = bead_scan
    phantom_file = str(folder / "phantom.json")
    write_scan(tmp_path / "blank", [_background(1), _background(2)], None, pixel_spacing=(3.0, 3.0))
    blank = ["poses", "estimate", str(tmp_path / "blank"), "--phantom", phantom_file, "-o", str(tmp_path / "o")]
    assert main(blank) == 2
    captured = capsys.readouterr()
    assert "no view got a pose (views 0 (images/000.tif), 1 (images/001.tif): no beads found:" in captured.err
    assert (tmp_path / "o" / "poses_report.json").exists() and not (tmp_path / "o" / "scan.json").exists()
    assert (
        main(
            [
                "poses",
                "detect",
                str(folder / "scan"),
                "--phantom",
                str(folder / "scan" / "scan.json"),
                "-o",
                str(tmp_path / "d"),
            ]
        )
        == 2
    )
    assert "not a bead phantom" in capsys.readouterr().err
    assert main(["poses", "estimate", str(folder / "scan"), "--phantom", phantom_file, "-o", str(folder / "scan")]) == 2
    assert "is the scan folder" in capsys.readouterr().err
    (tmp_path / "points.json").write_text(json.dumps({"views": {"7": [{"u": 1, "v": 2}]}}))
    with pytest.raises(IXGSError, match="view '7' is not a view index"):
        read_points(tmp_path / "points.json", 3, phantom.count)
    few = [Detection(10.0, 10.0, source="manual"), Detection(20.0, 30.0, source="manual")]
    found = detect_view(read_scan(folder / "scan", require_poses=False), phantom, 0, few, automatic=False)
    assert "only 2 beads found; a pose needs at least 6" in found.message
    assert math.isnan(found.detections[0].radius)
