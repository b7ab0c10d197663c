"""Projection-matrix decomposition, C-arm and circular builders, ROI and scene normalization."""

import numpy as np
import pytest

from ixgs_engine.errors import GeometryError
from ixgs_engine.geometry.carm import Detector, carm_angles, carm_axes, carm_projection_matrix, circular_orbit
from ixgs_engine.geometry.normalization import SceneNormalization
from ixgs_engine.geometry.projection import (
    compose_projection_matrix,
    decompose_projection_matrix,
    detector_frame,
    normalize_projection_matrix,
    project_points,
    ray_directions,
    source_position,
    validate_projection_matrix,
)
from ixgs_engine.geometry.roi import ROI, _box_visible, box_fraction_in_view, default_roi, grown_grid, roi_grid


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_projection_matrix_round_trips_through_decomposition(seed, mirrored):
    rng = np.random.default_rng(seed)
    K = np.array(
        [
            [rng.uniform(500, 2000), rng.uniform(-5, 5), rng.uniform(0, 500)],
            [0.0, rng.uniform(500, 2000), rng.uniform(0, 500)],
            [0.0, 0.0, 1.0],
        ]
    )
    if mirrored:
        K[1, 1] *= -1
    R = random_rotation(rng)
    S = rng.uniform(-800, 800, 3)
    P = compose_projection_matrix(K, R, S) * rng.uniform(0.1, 10)  # any positive factor
    pose = decompose_projection_matrix(P)
    np.testing.assert_allclose(pose.intrinsics, K, rtol=1e-9, atol=1e-7)
    np.testing.assert_allclose(pose.rotation, R, atol=1e-10)
    np.testing.assert_allclose(pose.source, S, atol=1e-7)
    assert pose.mirrored == mirrored
    assert np.linalg.det(pose.rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(
        compose_projection_matrix(pose.intrinsics, pose.rotation, pose.source),
        normalize_projection_matrix(P),
        atol=1e-8,
    )


def test_depth_is_positive_in_front_and_equals_distance_along_principal_ray():
    P = carm_projection_matrix(0, 0, 600, 1000, Detector((100, 80), (2.0, 2.0)))
    _, w = project_points(P * 7.0, np.array([[0.0, 0.0, 0.0], [0.0, 1000.0, 0.0]]))
    np.testing.assert_allclose(w, [600.0, -400.0])


def test_ray_directions_pass_through_projected_points():
    P = carm_projection_matrix(40, -20, 700, 1100, Detector((64, 48), (1.5, 1.2), (5.0, -3.0)))
    points = np.array([[10.0, -20.0, 30.0], [-40.0, 5.0, 0.0]])
    uv, w = project_points(P, points)
    rays = ray_directions(P, uv)
    np.testing.assert_allclose(source_position(P) + rays * w[:, None], points, atol=1e-9)


def test_detector_frame_reproduces_pixels():
    P = carm_projection_matrix(15, 25, 600, 1000, Detector((64, 48), (1.5, 1.2), (4.0, 2.0)))
    origin, step_u, step_v = detector_frame(P, 1000.0)
    point = origin + 10.0 * step_u + 20.0 * step_v
    uv, _ = project_points(P, point[None])
    np.testing.assert_allclose(uv[0], [10.0, 20.0], atol=1e-9)
    np.testing.assert_allclose([np.linalg.norm(step_u), np.linalg.norm(step_v)], [1.5, 1.2], rtol=1e-12)


def test_ap_view_hand_computed():
    # Primary 0: source posterior at y = +600, detector anterior; u -> patient left, v -> feet.
    P = carm_projection_matrix(0, 0, 600, 1000, Detector((100, 80), (2.0, 2.0)))
    np.testing.assert_allclose(source_position(P), [0.0, 600.0, 0.0], atol=1e-9)
    uv, _ = project_points(P, np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, 10.0]]))
    magnified = 10.0 * 1000.0 / 600.0 / 2.0  # 10 mm at the isocentre, in 2 mm pixels
    np.testing.assert_allclose(uv, [[49.5, 39.5], [49.5 + magnified, 39.5], [49.5, 39.5 - magnified]], atol=1e-9)
    assert decompose_projection_matrix(P).mirrored


def test_lao_90_and_cranial_hand_computed():
    P = carm_projection_matrix(90, 0, 600, 1000, Detector((100, 80), (2.0, 2.0)))
    np.testing.assert_allclose(source_position(P), [-600.0, 0.0, 0.0], atol=1e-9)  # detector on the left
    uv, _ = project_points(P, np.array([[0.0, 10.0, 0.0]]))  # posterior point: u grows
    np.testing.assert_allclose(uv[0], [49.5 + 10.0 * 1000.0 / 600.0 / 2.0, 39.5], atol=1e-9)
    P = carm_projection_matrix(0, 30, 600, 1000, Detector((100, 80), (2.0, 2.0)))
    np.testing.assert_allclose(source_position(P), [0.0, 600 * np.cos(np.radians(30)), -300.0], atol=1e-9)


def test_detector_offset_moves_principal_point():
    pose = decompose_projection_matrix(
        carm_projection_matrix(0, 0, 600, 1000, Detector((100, 80), (2.0, 0.5), (10.0, -4.0)))
    )
    np.testing.assert_allclose(pose.principal_point, [49.5 - 5.0, 39.5 + 8.0], atol=1e-9)
    np.testing.assert_allclose(np.abs(np.diag(pose.intrinsics)), [500.0, 2000.0, 1.0])


def test_carm_angles_invert_carm_axes():
    for primary, secondary in [(0, 0), (35, -20), (-120, 40), (170, 10)]:
        _, _, beam = carm_axes(primary, secondary)
        assert carm_angles(beam) == pytest.approx((primary, secondary))


def test_circular_orbit_matches_carm_builder_and_rotates_about_z():
    detector = Detector((64, 64), (2.0, 2.0))
    angles = [0.0, 45.0, 200.0]
    matrices = circular_orbit(angles, 500, 900, detector, isocenter=(1.0, 2.0, 3.0))
    for angle, P in zip(angles, matrices, strict=True):
        np.testing.assert_allclose(P, carm_projection_matrix(angle, 0, 500, 900, detector, (1.0, 2.0, 3.0)))
        source = source_position(P)
        assert source[2] == pytest.approx(3.0)
        assert np.hypot(source[0] - 1.0, source[1] - 2.0) == pytest.approx(500.0)


def test_invalid_matrices_and_distances_are_rejected():
    with pytest.raises(GeometryError, match="must be 3x4"):
        validate_projection_matrix(np.eye(3))
    with pytest.raises(GeometryError, match="non-finite"):
        validate_projection_matrix(np.full((3, 4), np.nan))
    with pytest.raises(GeometryError, match="singular"):
        validate_projection_matrix(np.zeros((3, 4)))
    with pytest.raises(GeometryError, match="source-to-isocentre distance < source-to-detector"):
        carm_projection_matrix(0, 0, 1000, 600, Detector((10, 10), (1.0, 1.0)))
    with pytest.raises(GeometryError, match="pixel spacing must be positive"):
        Detector((10, 10), (0.0, 1.0))


def test_default_roi_is_the_largest_box_every_view_sees():
    detector = Detector((128, 96), (1.6, 1.6))
    matrices = circular_orbit(np.arange(0, 360, 30), 600, 1000, detector)
    roi = default_roi(matrices, (96, 128))
    np.testing.assert_allclose(roi.center, 0.0, atol=1e-6)
    assert _box_visible(matrices, (96, 128), roi)
    for axis in range(3):
        bigger = roi.size.copy()
        bigger[axis] *= 1.01
        assert not _box_visible(matrices, (96, 128), ROI(roi.center, bigger))
    # A circular orbit about z sees a cylinder: the box is square in x, y.
    assert roi.size[0] == pytest.approx(roi.size[1], rel=1e-6)


def test_default_roi_fails_clearly_for_parallel_views():
    detector = Detector((32, 32), (1.0, 1.0))
    P = carm_projection_matrix(0, 0, 600, 1000, detector)
    with pytest.raises(GeometryError, match="nearly\\) parallel"):
        default_roi([P, P], (32, 32))


def test_box_fraction_in_view_detects_a_view_that_misses_the_box():
    P = carm_projection_matrix(0, 0, 600, 1000, Detector((32, 32), (1.0, 1.0)))
    assert box_fraction_in_view(P, (32, 32), ROI([0, 0, 0], [10, 10, 10])) == 1.0
    assert box_fraction_in_view(P, (32, 32), ROI([500, 0, 0], [10, 10, 10])) == 0.0


def test_roi_validation_messages():
    with pytest.raises(GeometryError, match="size must be positive"):
        ROI([0, 0, 0], [1, -1, 1])
    with pytest.raises(GeometryError, match="orthonormal"):
        ROI([0, 0, 0], [1, 1, 1], np.ones((3, 3)))


def test_scene_normalization_maps_roi_to_unit_cube_and_keeps_pixels():
    rng = np.random.default_rng(3)
    roi = ROI(center=[15.0, 55.0, -275.0], size=[128.0, 100.0, 64.0], direction=random_rotation(rng))
    scene = SceneNormalization.from_roi(roi)
    corners = scene.to_normalized(roi.corners())
    np.testing.assert_allclose(np.abs(corners).max(axis=0), [1.0, 100 / 128, 0.5])
    np.testing.assert_allclose(scene.to_world(corners), roi.corners(), atol=1e-9)
    np.testing.assert_allclose(
        scene.world_to_normalized_matrix() @ scene.normalized_to_world_matrix(), np.eye(4), atol=1e-12
    )
    P = carm_projection_matrix(30, 10, 600, 1000, Detector((64, 64), (2.0, 2.0)), isocenter=roi.center)
    points = roi.center + rng.normal(scale=20.0, size=(5, 3))
    uv_world, _ = project_points(P, points)
    uv_norm, _ = project_points(scene.projection_to_normalized(P), scene.to_normalized(points))
    np.testing.assert_allclose(uv_norm, uv_world, atol=1e-9)
    # A line integral is unchanged: density per normalized unit times normalized length.
    mu, length_mm = 0.02, 37.0
    assert scene.attenuation_to_normalized(mu) * length_mm * scene.scale == pytest.approx(mu * length_mm)
    assert scene.attenuation_to_world(scene.attenuation_to_normalized(mu)) == pytest.approx(mu)
    # A grid goes to normalized coordinates and back: the same voxels at the same world places.
    grid = roi_grid(roi, 4.0)
    back = scene.grid_to_world(scene.grid_to_normalized(grid))
    np.testing.assert_allclose(back.voxel_centres(), grid.voxel_centres(), atol=1e-9)
    np.testing.assert_allclose(back.spacing, grid.spacing, atol=1e-12)


def test_a_grown_grid_puts_voxel_faces_on_the_roi_faces_and_covers_the_grown_box():
    """The shell a truncated patient's SART passes solve: whole voxels across the ROI on every
    axis (an oblique, non-cubic box), at least the growth around it."""
    direction = np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))[0].T
    roi = ROI([10.0, -20.0, 5.0], [100.0, 50.0, 20.0], direction)
    grid = grown_grid(roi, 2.5, 32)
    assert np.allclose(grid.center(), roi.center)
    assert np.allclose(grid.direction, roi.direction.T)
    assert np.isclose(grid.spacing[0], 100.0 / 32)  # 32 voxels across the longest side
    to_index = grid.world_to_index_matrix()
    corners = roi.corners() @ to_index[:3, :3].T + to_index[:3, 3]
    assert np.allclose(corners + 0.5, np.round(corners + 0.5), atol=1e-9)  # corners on voxel faces
    assert np.all(grid.extent() >= 2.5 * roi.size - 1e-9)
    assert np.all(grid.extent() < 2.5 * roi.size + 2 * grid.spacing)
    assert grid.shape == grown_grid(roi, 2.5, 32).shape  # deterministic
    assert grown_grid(roi, 1.0, 4).extent() == pytest.approx(roi.size)
    with pytest.raises(GeometryError, match="growth factor"):
        grown_grid(roi, 0.5, 32)
