"""LPS/RAS conversions, IJK-to-RAS, markup-ROI parameters and anatomical realignment
(ixgs_engine.geometry.anatomical), checked against SimpleITK and scipy as independent references."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from ixgs_engine.errors import GeometryError
from ixgs_engine.geometry.anatomical import (
    grid_from_ijk_to_ras,
    ijk_to_ras_matrix,
    lps_to_ras_points,
    lps_to_ras_transform,
    markup_roi_parameters,
    principal_axes,
    realignment_from_landmarks,
    realignment_from_principal_axes,
    roi_from_markup_parameters,
)
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io.volumes import volume_from_sitk
from ixgs_engine.phantoms import make_phantom, spine_landmarks
from ixgs_engine.volume import Volume, VolumeGrid

OBLIQUE = Rotation.from_euler("zyx", [25.0, -10.0, 40.0], degrees=True).as_matrix()


def oblique_sitk_image(shape_zyx=(6, 7, 8)) -> sitk.Image:
    image = sitk.Image([shape_zyx[2], shape_zyx[1], shape_zyx[0]], sitk.sitkFloat32)
    image.SetOrigin((12.5, -40.0, 7.25))
    image.SetSpacing((0.7, 1.3, 2.1))
    image.SetDirection(tuple(OBLIQUE.ravel()))
    return image


def test_ijk_to_ras_matches_simpleitk_physical_points_flipped_to_ras():
    image = oblique_sitk_image()
    grid = volume_from_sitk(image).grid
    matrix = ijk_to_ras_matrix(grid)
    rng = np.random.default_rng(0)
    for index in rng.uniform(-1, 8, size=(10, 3)):
        lps = np.array(image.TransformContinuousIndexToPhysicalPoint(index.tolist()))
        ras = matrix @ np.append(index, 1.0)
        np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-9)


def test_grid_from_ijk_to_ras_inverts_ijk_to_ras_and_rejects_shear():
    grid = VolumeGrid((5, 6, 7), (3.0, -2.0, 9.0), (0.5, 1.5, 2.5), OBLIQUE)
    back = grid_from_ijk_to_ras(grid.shape, ijk_to_ras_matrix(grid))
    np.testing.assert_allclose(back.origin, grid.origin, atol=1e-12)
    np.testing.assert_allclose(back.spacing, grid.spacing, atol=1e-12)
    np.testing.assert_allclose(back.direction, grid.direction, atol=1e-12)
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    with pytest.raises(GeometryError, match="sheared"):
        grid_from_ijk_to_ras((2, 2, 2), sheared)


def test_transform_conversion_commutes_with_point_conversion():
    rng = np.random.default_rng(1)
    transform = np.eye(4)
    transform[:3, :3] = OBLIQUE
    transform[:3, 3] = rng.normal(size=3) * 20
    points = rng.normal(size=(6, 3)) * 50
    moved_lps = points @ transform[:3, :3].T + transform[:3, 3]
    ras_transform = lps_to_ras_transform(transform)
    moved_ras = lps_to_ras_points(points) @ ras_transform[:3, :3].T + ras_transform[:3, 3]
    np.testing.assert_allclose(moved_ras, lps_to_ras_points(moved_lps), atol=1e-9)
    assert np.linalg.det(ras_transform[:3, :3]) == pytest.approx(1.0)


def test_markup_roi_parameters_describe_the_same_box_in_ras():
    roi = ROI((10.0, -20.0, 30.0), (40.0, 60.0, 80.0), OBLIQUE.T)
    center, size, axes = markup_roi_parameters(roi)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    corners_ras = center + (signs * size / 2.0) @ axes.T
    np.testing.assert_allclose(corners_ras, lps_to_ras_points(roi.corners()), atol=1e-9)
    back = roi_from_markup_parameters(center, size, axes)
    np.testing.assert_allclose(back.center, roi.center)
    np.testing.assert_allclose(back.size, roi.size)
    np.testing.assert_allclose(back.direction, roi.direction, atol=1e-12)


def rotate_about(points: np.ndarray, rotation: np.ndarray, center: np.ndarray) -> np.ndarray:
    return (points - center) @ rotation.T + center


def test_landmark_realignment_undoes_a_known_tilt_of_the_spine_phantom_landmarks():
    marks = spine_landmarks((64, 64, 64), 3.0)
    tilt = Rotation.from_euler("xyz", [12.0, -8.0, 20.0], degrees=True).as_matrix()
    pivot = np.array([5.0, -3.0, 10.0])
    moved = {name: rotate_about(point, tilt, pivot) for name, point in marks.items()}
    spine = np.stack([moved["L3_L4_disc"], moved["L3_body"], moved["L2_L3_disc"]])  # inferior -> superior
    transform = realignment_from_landmarks(spine, moved["L3_right_pedicle"], moved["L3_left_pedicle"])
    angle = Rotation.from_matrix(transform[:3, :3] @ tilt).magnitude()
    assert np.degrees(angle) < 1e-6
    # Realigned landmarks keep their anatomical layout: left pedicle at larger x, discs stacked on z.
    realigned = {name: transform[:3, :3] @ point + transform[:3, 3] for name, point in moved.items()}
    np.testing.assert_allclose(realigned["L2_L3_disc"][:2], realigned["L3_L4_disc"][:2], atol=1e-9)
    assert realigned["L2_L3_disc"][2] > realigned["L3_L4_disc"][2]
    assert realigned["L3_left_pedicle"][0] > realigned["L3_right_pedicle"][0]


def test_landmark_realignment_reports_coincident_points():
    with pytest.raises(GeometryError, match="spine axis"):
        realignment_from_landmarks(np.zeros((2, 3)), np.zeros(3), np.ones(3))
    with pytest.raises(GeometryError, match="right-to-left"):
        realignment_from_landmarks(np.array([[0, 0, 0], [0, 0, 10.0]]), np.zeros(3), np.array([0, 0, 5.0]))


def test_principal_axes_match_simpleitk_label_shape_statistics_on_an_oblique_grid():
    image = oblique_sitk_image((20, 24, 28))
    array = np.zeros((20, 24, 28), dtype=np.float32)
    array[4:16, 6:14, 3:26] = 1.0
    array[8:12, 14:20, 10:14] = 1.0  # a bump, so no moments are equal
    labels = sitk.GetImageFromArray(array.astype(np.uint8))
    labels.CopyInformation(image)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labels)
    volume = Volume(array, image.GetOrigin(), image.GetSpacing(), np.reshape(image.GetDirection(), (3, 3)))
    centroid, moments, axes = principal_axes(volume, 0.5)
    np.testing.assert_allclose(centroid, stats.GetCentroid(1), atol=1e-9)
    np.testing.assert_allclose(moments, sorted(stats.GetPrincipalMoments(1), reverse=True), rtol=1e-9)
    itk_axes = np.reshape(stats.GetPrincipalAxes(1), (3, 3))[::-1]  # ITK: ascending moments, rows = axes
    np.testing.assert_allclose(np.abs(np.sum(axes * itk_axes, axis=1)), 1.0, atol=1e-9)


def tilted_ellipsoid(tilt: np.ndarray) -> Volume:
    """A solid ellipsoid (semi-axes 18, 12, 40 mm along x, y, z before the tilt) on a 2 mm grid."""
    grid = VolumeGrid((56, 40, 40), (-39.0, -39.0, -55.0), (2.0, 2.0, 2.0))
    k, j, i = np.indices(grid.shape)
    index = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    world = (grid.index_to_world_matrix() @ index)[:3].T
    local = world @ tilt  # rows: tilt^T x, the point in the ellipsoid's own frame
    inside = np.sum((local / np.array([18.0, 12.0, 40.0])) ** 2, axis=1) <= 1.0
    return Volume.on_grid(grid, inside.reshape(grid.shape).astype(np.float32))


def test_principal_axes_realignment_undoes_a_known_tilt_of_an_ellipsoid():
    tilt = Rotation.from_euler("xyz", [15.0, -10.0, 25.0], degrees=True).as_matrix()
    transform = realignment_from_principal_axes(tilted_ellipsoid(tilt), 0.5)
    residual = np.degrees(Rotation.from_matrix(transform[:3, :3] @ tilt).magnitude())
    assert residual < 1.0  # voxelization error of a 2 mm grid


def test_principal_axes_realignment_of_the_spine_phantom_is_equivariant_under_rotation():
    phantom = make_phantom("spine", (48, 48, 48), 4.0)
    tilt = Rotation.from_euler("xyz", [10.0, 0.0, -15.0], degrees=True).as_matrix()
    image = sitk.GetImageFromArray(phantom.array)
    image.SetOrigin(phantom.origin.tolist())
    image.SetSpacing(phantom.spacing.tolist())
    resample = sitk.Euler3DTransform()
    resample.SetCenter(phantom.center().tolist())
    resample.SetMatrix(tilt.T.ravel().tolist())  # output point x samples the input at tilt^T x: content turned by tilt
    turned = volume_from_sitk(sitk.Resample(image, image, resample, sitk.sitkLinear, -1000.0))
    straight = realignment_from_principal_axes(phantom, 300.0)[:3, :3]
    after_turn = realignment_from_principal_axes(turned, 300.0)[:3, :3]
    residual = np.degrees(Rotation.from_matrix(after_turn @ tilt @ straight.T).magnitude())
    assert residual < 2.0


def test_principal_axes_needs_voxels_above_the_threshold():
    with pytest.raises(GeometryError, match="lower the threshold"):
        principal_axes(Volume(np.zeros((3, 3, 3), np.float32)), 1.0)
