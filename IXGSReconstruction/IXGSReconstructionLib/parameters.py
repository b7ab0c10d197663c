"""IXGS Reconstruction's parameter node: what the user chose (inputs, run settings) and the
nodes of the result, bound to the .ui's widgets by their ``SlicerParameterName``."""

import pathlib
from typing import Annotated

from slicer import (
    vtkMRMLLinearTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from ixgs_engine.reconstruct.presets import DEFAULT_POSE_MODE, DEFAULT_PRESET, POSE_MODES, PRESET_SUMMARIES

PRESET_CHOICES = list(PRESET_SUMMARIES)  # the engine's names: defined once, there (torch-free)


@parameterNodeWrapper
class IXGSReconstructionParameterNode:
    """What the user chose: inputs, run settings and the nodes of the result."""

    scanFolder: pathlib.Path
    imageKind: Annotated[str, Choice(["radiograph", "line_integral", "intensity"])] = "radiograph"
    currentView: Annotated[int, WithinRange(0, 999)] = 0
    phantomFile: pathlib.Path
    roi: vtkMRMLMarkupsROINode
    preset: Annotated[str, Choice(PRESET_CHOICES)] = DEFAULT_PRESET
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    iterations: Annotated[int, WithinRange(0, 100000)] = 0
    outputFolder: pathlib.Path
    resume: bool = False
    refinePoses: Annotated[str, Choice(list(POSE_MODES))] = DEFAULT_POSE_MODE
    volume: vtkMRMLScalarVolumeNode
    threshold: Annotated[float, WithinRange(0.0, 0.2)] = 0.03
    spineLandmarks: vtkMRMLMarkupsFiducialNode
    lateralLandmarks: vtkMRMLMarkupsFiducialNode
    realignment: vtkMRMLLinearTransformNode
