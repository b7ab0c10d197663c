"""Registering views to a volume (reconstruct/view_registration.py): the pose error of views of
a phantom (projected from a grid twice as fine) is recovered across each view's ray, the
gauge is removed, and the coarse level keeps the projector's box; the motion between two
matrices (geometry.projection) against a known motion."""

import numpy as np
import pytest
import torch

from ixgs_engine.experiments.sweeps import calibration_errors
from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.geometry.projection import rigid_motion, rigid_motion_between
from ixgs_engine.phantoms import hu_to_attenuation, make_phantom
from ixgs_engine.projector.joseph import JosephProjector
from ixgs_engine.reconstruct.pose_refinement import residual_pose_error
from ixgs_engine.reconstruct.view_registration import coarse_level, register_views


def test_the_motion_between_two_matrices_is_the_motion_that_made_one_from_the_other():
    detector = Detector((40, 40), (6.0, 6.0))
    P = carm_projection_matrix(30.0, -10.0, 700.0, 1100.0, detector)
    motion = rigid_motion(np.radians([0.5, -1.0, 2.0]), [1.0, -2.0, 0.5], [10.0, 5.0, -3.0])
    np.testing.assert_allclose(rigid_motion_between(P, P @ motion), motion, atol=1e-9)
    np.testing.assert_allclose(rigid_motion_between(P, 3.0 * P), np.eye(4), atol=1e-12)  # scale is no motion


def test_the_coarse_level_spans_the_same_voxel_centres_and_projects_as_the_volume():
    volume = hu_to_attenuation(make_phantom("spine", (25, 24, 23), 4.0))
    coarse = coarse_level(volume, 2)
    assert coarse.shape == (13, 13, 12)
    first = volume.origin
    last = volume.origin + volume.direction @ (volume.spacing * (np.array(volume.size_ijk) - 1))
    np.testing.assert_allclose(coarse.origin, first)
    np.testing.assert_allclose(coarse.origin + coarse.spacing * (np.array(coarse.size_ijk) - 1), last)
    P = carm_projection_matrix(40.0, 10.0, 700.0, 1100.0, Detector((40, 40), (6.0, 6.0)))[None]
    line = [JosephProjector(v.grid, P, (40, 40)).forward(torch.as_tensor(v.array)) for v in (volume, coarse)]
    assert float(line[1].sum()) == pytest.approx(float(line[0].sum()), rel=0.02)


def test_views_off_by_a_degree_are_registered_to_the_volume_across_their_rays():
    """Views of a phantom in air (from a grid twice as fine) given with 1 deg / 2 mm errors:
    registering them to the phantom's volume brings the shift across each view's ray (gauge
    removed) below a fifth of what it was, and the rotation down (a view sees its rotations
    out of its plane poorly: on a volume of 24^3 voxels and 48^2 pixels, by a tenth); the mean
    motion is zero."""
    truth = hu_to_attenuation(make_phantom("spine", (24, 24, 24), 5.0))
    fine = hu_to_attenuation(make_phantom("spine", (48, 48, 48), 2.5))
    detector = Detector((48, 48), (5.0, 5.0))
    angles = [(a, 20.0 * np.cos(np.radians(3 * a))) for a in np.linspace(0, 165, 8)]
    matrices = np.stack([carm_projection_matrix(a, b, 700.0, 1100.0, detector) for a, b in angles])
    views = JosephProjector(fine.grid, matrices, (48, 48)).forward(torch.as_tensor(fine.array)).numpy()
    centre = truth.center()
    errors = calibration_errors(len(matrices), 1.0, 2.0, centre, seed=5)
    wrong = np.einsum("vij,vjk->vik", matrices, errors)
    motions = register_views(truth, views, wrong, centre, iterations=2, factor=1)
    before = residual_pose_error(errors, np.tile(np.eye(4), (len(matrices), 1, 1)), centre, matrices)
    after = residual_pose_error(errors, motions, centre, matrices)
    across = "median_translation_mm_gauge_removed_across"
    assert after[across] < 0.2 * before[across]
    assert after["median_rotation_deg_gauge_removed"] < 0.95 * before["median_rotation_deg_gauge_removed"]
    rotations = [rigid_motion_between(np.eye(3, 4), np.eye(3, 4) @ m)[:3, :3] for m in motions]
    assert np.abs(np.mean([r - np.eye(3) for r in rotations], axis=0)).max() < 1e-3  # the gauge


def test_a_rotation_vectors_matrix_is_scipys():
    from scipy.spatial.transform import Rotation

    from ixgs_engine.geometry.projection import rotation_matrix

    for vector in ([0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [0.0, 2.5, 0.0], [1e-9, 0.0, 0.0]):
        np.testing.assert_allclose(rotation_matrix(vector), Rotation.from_rotvec(vector).as_matrix(), atol=1e-12)
