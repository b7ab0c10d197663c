"""Engine objects <-> MRML nodes, with VTK and MRML classes only (no Qt, no Slicer GUI).

Used by the IXGS Slicer modules and, through the ``slicer-core`` package (real MRML classes),
by the pytest suite. Geometry conversions come from ``ixgs_engine.geometry.anatomical``; this
module only moves numbers into and out of nodes:

- volumes: engine ``Volume`` (LPS) <-> ``vtkMRMLScalarVolumeNode`` (IJK-to-RAS),
- X-ray views: a 2-D image as a one-slice volume whose IJK coordinates are the detector pixel
  coordinates (u, v), so markups placed on it convert to the pixels of POINTS_JSON,
- the reconstruction box: engine ``ROI`` <-> ``vtkMRMLMarkupsROINode``,
- realignment: a 4x4 LPS transform -> ``vtkMRMLLinearTransformNode`` (RAS) that the user can harden,
- display: threshold in the slice views and a bone-like volume rendering above the threshold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import vtk
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from ixgs_engine.geometry.anatomical import (
    grid_from_ijk_to_ras,
    ijk_to_ras_matrix,
    lps_to_ras_transform,
    markup_roi_parameters,
    roi_from_markup_parameters,
)
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.volume import Volume, VolumeGrid

BEAD_LABEL = re.compile(r"bead\D*(\d+)", re.IGNORECASE)


def vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _image_data(array: np.ndarray) -> vtk.vtkImageData:
    """vtkImageData (origin 0, spacing 1: MRML keeps geometry in the node) of a [k, j, i] array."""
    array = np.ascontiguousarray(array)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def update_volume_node(node, array: np.ndarray, grid: VolumeGrid) -> None:
    """Put voxels (indexed [k, j, i]) and their LPS grid into a scalar volume node."""
    node.SetAndObserveImageData(_image_data(array))
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras_matrix(grid)))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()


def add_volume_node(scene, volume: Volume, name: str):
    """A new ``vtkMRMLScalarVolumeNode`` holding an engine volume with its world geometry."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    update_volume_node(node, volume.array, volume.grid)
    return node


def volume_from_node(node) -> Volume:
    """The engine volume (LPS geometry, float32 values) of a scalar volume node."""
    image = node.GetImageData()
    nx, ny, nz = image.GetDimensions()
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx).astype(np.float32)
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return Volume.on_grid(grid_from_ijk_to_ras((nz, ny, nx), numpy_matrix(matrix)), array)


def xray_grid(image_shape: tuple[int, int], pixel_spacing: tuple[float, float] = (1.0, 1.0)) -> VolumeGrid:
    """Display geometry of an X-ray (rows, columns): index (i, j) = pixel (u, v), laid out in the
    LPS x-y plane so that Slicer's axial view shows it as stored (u to the right, v down)."""
    height, width = image_shape
    return VolumeGrid((1, height, width), np.zeros(3), (pixel_spacing[0], pixel_spacing[1], 1.0))


def add_xray_node(scene, pixels: np.ndarray, name: str, pixel_spacing: tuple[float, float] = (1.0, 1.0)):
    """A one-slice scalar volume node showing a 2-D X-ray (pixels[v, u])."""
    pixels = np.asarray(pixels, dtype=np.float32)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    update_volume_node(node, pixels[None], xray_grid(pixels.shape, pixel_spacing))
    return node


def pixel_points(markups_node, xray_node) -> list[dict]:
    """Control points of a markups node as detector pixels of an X-ray node:
    ``[{"u": .., "v": .., "bead": ..}]`` (bead from a label such as "bead 3", else omitted)."""
    ras_to_ijk = vtk.vtkMatrix4x4()
    xray_node.GetRASToIJKMatrix(ras_to_ijk)
    to_pixels = numpy_matrix(ras_to_ijk)
    points = []
    for index in range(markups_node.GetNumberOfControlPoints()):
        world = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, world)
        u, v, _ = (to_pixels @ np.append(world, 1.0))[:3]
        point = {"u": float(u), "v": float(v)}
        bead = BEAD_LABEL.search(markups_node.GetNthControlPointLabel(index) or "")
        if bead:
            point["bead"] = int(bead.group(1))
        points.append(point)
    return points


def set_pixel_points(markups_node, xray_node, points: list[dict]) -> None:
    """Replace a markups node's control points with detector pixels of an X-ray node."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    xray_node.GetIJKToRASMatrix(ijk_to_ras)
    to_ras = numpy_matrix(ijk_to_ras)
    markups_node.RemoveAllControlPoints()
    for point in points:
        ras = (to_ras @ np.array([point["u"], point["v"], 0.0, 1.0]))[:3]
        index = markups_node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]))
        if point.get("bead") is not None:
            markups_node.SetNthControlPointLabel(index, f"bead {int(point['bead'])}")


def landmark_points_lps(markups_node) -> np.ndarray:
    """World positions (LPS mm, (N, 3)) of a markups node's control points, in order."""
    points = np.zeros((markups_node.GetNumberOfControlPoints(), 3))
    for index in range(len(points)):
        world = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, world)
        points[index] = world
    return points * np.array([-1.0, -1.0, 1.0])


def update_roi_node(node, roi: ROI) -> None:
    """Make a markups ROI node show an engine ROI (centre, size and box axes)."""
    center, size, axes = markup_roi_parameters(roi)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = axes
    object_to_node[:3, 3] = center
    node.SetAndObserveObjectToNodeMatrix(vtk_matrix(object_to_node))
    node.SetSize(*[float(value) for value in size])


def add_roi_node(scene, roi: ROI, name: str):
    """A new ``vtkMRMLMarkupsROINode`` showing an engine ROI."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    update_roi_node(node, roi)
    return node


def roi_from_node(node) -> ROI:
    """The engine ROI (LPS) of a markups ROI node, in world coordinates (after its transforms)."""
    center, size = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    node.GetCenterWorld(center)
    node.GetSizeWorld(size)
    axes = np.zeros((3, 3))
    for column in range(3):
        axis = [0.0, 0.0, 0.0]
        node.GetAxisWorld(column, axis)
        axes[:, column] = axis
    return roi_from_markup_parameters(np.array(center), np.array(size), axes)


def add_realignment_node(scene, transform_lps: np.ndarray, name: str):
    """A linear transform node applying a 4x4 LPS transform (e.g. a realignment) in RAS."""
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(vtk_matrix(lps_to_ras_transform(transform_lps)))
    return node


def apply_transform(node, transform_node, harden: bool = False) -> None:
    """Put ``node`` under ``transform_node``; with ``harden`` bake it into the node's own geometry."""
    node.SetAndObserveTransformNodeID(transform_node.GetID())
    if harden:
        harden_transform(node)


def harden_transform(node) -> None:
    """Bake a node's parent transform into its data (volumes: into IJK-to-RAS)."""
    import slicer  # Slicer's module in Slicer, slicer-core's MRML package elsewhere

    slicer.vtkSlicerTransformLogic.hardenTransform(node)


def show_thresholded(volume_node, threshold: float, maximum: float | None = None) -> None:
    """Slice views: grey levels from 0 to ``maximum`` (default the volume's maximum), voxels
    below ``threshold`` hidden."""
    image = volume_node.GetImageData()
    top = float(image.GetScalarRange()[1]) if maximum is None else float(maximum)
    top = max(top, threshold + 1e-6)
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, top)
    display.SetApplyThreshold(True)
    display.SetThreshold(float(threshold), top)


def set_rendering_transfer_functions(volume_property, threshold: float, maximum: float) -> None:
    """Bone-like rendering: transparent below ``threshold``, opacity rising to 0.8 at ``maximum``,
    ivory colour."""
    maximum = max(float(maximum), threshold + 1e-6)
    opacity = volume_property.GetScalarOpacity()
    opacity.RemoveAllPoints()
    opacity.AddPoint(min(0.0, threshold - 1e-6), 0.0)
    opacity.AddPoint(threshold, 0.0)
    opacity.AddPoint(maximum, 0.8)
    colors = volume_property.GetRGBTransferFunction()
    colors.RemoveAllPoints()
    colors.AddRGBPoint(threshold, 0.75, 0.55, 0.4)
    colors.AddRGBPoint(maximum, 1.0, 1.0, 0.9)
    volume_property.ShadeOn()
    volume_property.SetInterpolationTypeToLinear()


def show_volume_rendering(volume_rendering_logic, volume_node, threshold: float, maximum: float | None = None):
    """Volume rendering of the voxels above ``threshold`` (creates the display nodes with the
    Volume Rendering module's logic); returns the volume rendering display node."""
    top = float(volume_node.GetImageData().GetScalarRange()[1]) if maximum is None else float(maximum)
    display = volume_rendering_logic.GetFirstVolumeRenderingDisplayNode(volume_node)
    if display is None:
        display = volume_rendering_logic.CreateDefaultVolumeRenderingNodes(volume_node)
    set_rendering_transfer_functions(display.GetVolumePropertyNode().GetVolumeProperty(), threshold, top)
    display.SetVisibility(True)
    return display


def fill_table(table_node, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[float]]) -> None:
    """Replace a table node's contents: one numeric column per ``(key, title)`` of ``columns``,
    titled, one row per entry of ``rows`` (values in the columns' order)."""
    table = vtk.vtkTable()
    for index, (_, title) in enumerate(columns):
        column = vtk.vtkDoubleArray()
        column.SetName(title)
        column.SetNumberOfValues(len(rows))
        for row, values in enumerate(rows):
            column.SetValue(row, float(values[index]))
        table.AddColumn(column)
    table_node.SetAndObserveTable(table)
