"""The MRML side of the Slicer modules (IXGSCommonLib.mrml_bridge) with real MRML
classes from the ``slicer-core`` package: volume geometry against Slicer's own NRRD reader,
markups to detector pixels, ROI nodes, realignment transforms and hardening, display settings."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the importable 'slicer' module has no MRML classes", allow_module_level=True)

from ixgs_engine.geometry.anatomical import lps_to_ras_points, lps_to_ras_transform  # noqa: E402
from ixgs_engine.geometry.roi import ROI  # noqa: E402
from ixgs_engine.io.volumes import write_volume  # noqa: E402
from ixgs_engine.volume import Volume  # noqa: E402
from IXGSCommonLib import mrml_bridge  # noqa: E402

OBLIQUE = Rotation.from_euler("zyx", [30.0, 10.0, -20.0], degrees=True).as_matrix()


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def oblique_volume() -> Volume:
    array = np.random.default_rng(0).uniform(0.0, 0.05, size=(5, 6, 7)).astype(np.float32)
    return Volume(array, origin=(10.0, -25.0, 40.0), spacing=(0.8, 1.1, 2.5), direction=OBLIQUE)


def ijk_to_ras(node) -> np.ndarray:
    matrix = mrml_bridge.vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return mrml_bridge.numpy_matrix(matrix)


def test_volume_node_matches_slicers_own_reading_of_the_written_nrrd(scene, tmp_path):
    volume = oblique_volume()
    ours = mrml_bridge.add_volume_node(scene, volume, "ours")
    write_volume(tmp_path / "volume.nrrd", volume)
    theirs = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "read by Slicer")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "volume.nrrd"))
    assert storage.ReadData(theirs)
    np.testing.assert_allclose(ijk_to_ras(ours), ijk_to_ras(theirs), atol=1e-5)
    np.testing.assert_array_equal(mrml_bridge.volume_from_node(theirs).array, volume.array)
    back = mrml_bridge.volume_from_node(ours)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.index_to_world_matrix(), volume.index_to_world_matrix(), atol=1e-12)


def test_markups_on_an_xray_become_its_detector_pixels(scene):
    pixels = np.arange(40 * 60, dtype=np.float32).reshape(40, 60)
    xray = mrml_bridge.add_xray_node(scene, pixels, "view 3", pixel_spacing=(0.4, 0.5))
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points view 3")
    expected = [{"u": 12.25, "v": 30.5, "bead": 4}, {"u": 0.0, "v": 0.0}, {"u": 59.0, "v": 39.0, "bead": 11}]
    mrml_bridge.set_pixel_points(markups, xray, expected)
    found = mrml_bridge.pixel_points(markups, xray)
    assert [point.get("bead") for point in found] == [4, None, 11]
    np.testing.assert_allclose([(p["u"], p["v"]) for p in found], [(p["u"], p["v"]) for p in expected], atol=1e-9)
    # Independent: the same pixel through SimpleITK's geometry of the X-ray (LPS), flipped to RAS.
    image = sitk.GetImageFromArray(pixels[None])
    image.SetSpacing((0.4, 0.5, 1.0))
    lps = image.TransformContinuousIndexToPhysicalPoint((12.25, 30.5, 0.0))
    ras = [0.0, 0.0, 0.0]
    markups.GetNthControlPointPositionWorld(0, ras)
    np.testing.assert_allclose(ras, lps_to_ras_points(lps), atol=1e-9)
    # Axial view layout: u grows towards the patient's left (-R), v towards posterior (-A).
    markups.SetNthControlPointPosition(1, -2.0, -5.0, 0.0)
    assert mrml_bridge.pixel_points(markups, xray)[1] == pytest.approx({"u": 5.0, "v": 10.0})


def test_roi_node_shows_the_engine_roi_and_reads_back(scene):
    roi = ROI((15.0, 55.0, -275.0), (60.0, 80.0, 100.0), OBLIQUE.T)
    node = mrml_bridge.add_roi_node(scene, roi, "IXGS ROI")
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    corners = lps_to_ras_points(roi.corners())
    np.testing.assert_allclose(bounds[0::2], corners.min(axis=0), atol=1e-6)
    np.testing.assert_allclose(bounds[1::2], corners.max(axis=0), atol=1e-6)
    back = mrml_bridge.roi_from_node(node)
    np.testing.assert_allclose(back.center, roi.center, atol=1e-9)
    np.testing.assert_allclose(back.size, roi.size, atol=1e-9)
    np.testing.assert_allclose(back.direction, roi.direction, atol=1e-9)


def test_hardened_realignment_moves_the_volume_as_the_engine_transform_moves_points(scene):
    volume = oblique_volume()
    node = mrml_bridge.add_volume_node(scene, volume, "reconstruction")
    realign = np.eye(4)
    realign[:3, :3] = Rotation.from_euler("xyz", [5.0, -12.0, 30.0], degrees=True).as_matrix()
    realign[:3, 3] = (4.0, -7.0, 2.5)
    transform = mrml_bridge.add_realignment_node(scene, realign, "IXGS realignment")
    mrml_bridge.apply_transform(node, transform)
    assert node.GetTransformNodeID() == transform.GetID()
    mrml_bridge.harden_transform(node)
    assert node.GetTransformNodeID() is None
    index = np.array([[0, 0, 0, 1], [6, 5, 4, 1], [3.5, 1.0, 2.0, 1]], dtype=float).T
    lps = (volume.index_to_world_matrix() @ index)[:3].T
    moved_lps = lps @ realign[:3, :3].T + realign[:3, 3]
    np.testing.assert_allclose((ijk_to_ras(node) @ index)[:3].T, lps_to_ras_points(moved_lps), atol=1e-9)
    to_parent = mrml_bridge.vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToParent(to_parent)
    np.testing.assert_allclose(mrml_bridge.numpy_matrix(to_parent), lps_to_ras_transform(realign), atol=1e-12)


def test_landmarks_from_markups_come_back_in_lps(scene):
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "spine")
    for ras in ([1.0, 2.0, 3.0], [-4.0, 5.0, 60.0]):
        markups.AddControlPoint(*ras)
    np.testing.assert_allclose(mrml_bridge.landmark_points_lps(markups), [[-1.0, -2.0, 3.0], [4.0, -5.0, 60.0]])


def test_threshold_display_and_volume_rendering_settings(scene):
    volume = oblique_volume()
    node = mrml_bridge.add_volume_node(scene, volume, "reconstruction")
    mrml_bridge.show_thresholded(node, 0.02)
    display = node.GetDisplayNode()
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(0.02)
    assert display.GetUpperThreshold() == pytest.approx(float(volume.array.max()), rel=1e-6)
    assert not display.GetAutoWindowLevel()
    logic = slicer.vtkSlicerVolumeRenderingLogic()
    logic.SetMRMLScene(scene)
    rendering = mrml_bridge.show_volume_rendering(logic, node, 0.02, 0.05)
    assert rendering.GetVisibility()
    assert mrml_bridge.show_volume_rendering(logic, node, 0.03, 0.05) is rendering  # reused, not duplicated
    opacity = rendering.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    assert opacity.GetValue(0.0299) == pytest.approx(0.0)
    assert opacity.GetValue(0.05) == pytest.approx(0.8)
    assert 0.0 < opacity.GetValue(0.04) < 0.8
