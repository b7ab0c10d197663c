"""RTK's reconstructions (itk-rtk, optional): SART, ASD-POCS on RTK's SART, the TV-regularized
conjugate gradient and FDK, from a zero volume on a grid, with our projection matrices turned into an RTK geometry by
``projector.rtk_bridge``. RTK is independent, established code: the benchmarks' classical bar and
the reference our own SART is checked against. itk-rtk is imported inside the functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ixgs_engine.classical.tv import tv_steps as tv_descent
from ixgs_engine.errors import GeometryError
from ixgs_engine.projector.rtk_bridge import (
    as_matrices,
    fit_circular_orbit,
    import_rtk,
    orbit_frame,
    projection_image,
    rtk_geometry,
    u_spacing_beyond,
    unmirrored,
    volume_image,
)
from ixgs_engine.volume import Volume, VolumeGrid


def _iterative_setup(
    projections: np.ndarray, matrices: np.ndarray | Sequence[np.ndarray], grid: VolumeGrid, iterations: int
) -> tuple[Any, Any, Any, Any, Any]:
    """What RTK's iterative reconstructions share: ``(itk, rtk, geometry, zero volume image,
    projection stack image)``, after checking the stack and the iteration count."""
    itk, rtk = import_rtk()
    normalized = as_matrices(matrices)
    stack = np.asarray(projections)
    if stack.ndim != 3 or stack.shape[0] != len(normalized):
        raise ValueError(f"projections must be (N, H, W) with N = {len(normalized)} views, got {stack.shape}")
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    geometry, spacing = rtk_geometry(normalized, u_spacing=u_spacing_beyond(grid, normalized))
    return itk, rtk, geometry, volume_image(itk, np.zeros(grid.shape), grid), projection_image(itk, stack, spacing)


def _use_joseph_pair(reconstruction: Any, geometry: Any) -> None:
    """Geometry, the matched Joseph forward / back projector pair and no displaced-detector
    weighting for one of RTK's iterative reconstruction filters."""
    reconstruction.SetGeometry(geometry)
    reconstruction.SetDisableDisplacedDetectorFilter(True)
    reconstruction.SetForwardProjectionFilter(reconstruction.ForwardProjectionType_FP_JOSEPH)
    reconstruction.SetBackProjectionFilter(reconstruction.BackProjectionType_BP_JOSEPH)


def rtk_sart(
    projections: np.ndarray,
    matrices: np.ndarray | Sequence[np.ndarray],
    grid: VolumeGrid,
    iterations: int,
    relaxation: float = 0.3,
    views_per_subset: int = 1,
    positivity: bool = True,
) -> Volume:
    """RTK's SART from a zero volume on ``grid`` (line-integral ``projections`` (N, H, W)).

    Joseph forward projector and Joseph *back* projector: the latter is the exact transpose of
    the former (a matched pair, like our projector's adjoint), so both SARTs solve the same
    discrete system; RTK's default voxel-based back projector is not matched. The
    displaced-detector weighting is disabled: it is meant for circular scans with a shifted
    panel and would reweight off-centre views of an arbitrary geometry. RTK visits the views
    in a shuffled (seeded, reproducible) order.
    """
    if views_per_subset < 1:
        raise ValueError("views_per_subset must be >= 1")
    itk, rtk, geometry, volume, stack = _iterative_setup(projections, matrices, grid, iterations)
    image_type = itk.Image[itk.F, 3]
    sart = rtk.SARTConeBeamReconstructionFilter[image_type, image_type].New()
    sart.SetInput(0, volume)
    sart.SetInput(1, stack)
    _use_joseph_pair(sart, geometry)
    sart.SetNumberOfIterations(int(iterations))
    sart.SetLambda(float(relaxation))
    sart.SetNumberOfProjectionsPerSubset(int(views_per_subset))
    sart.SetEnforcePositivity(bool(positivity))
    sart.Update()
    return Volume.on_grid(grid, itk.array_from_image(sart.GetOutput()).copy())


def rtk_asd_pocs(
    projections: np.ndarray,
    matrices: np.ndarray | Sequence[np.ndarray],
    grid: VolumeGrid,
    passes: int,
    relaxation: float = 0.3,
    tv_steps: int = 10,
    tv_step: float = 0.2,
    after_pass: Callable[[np.ndarray, int], None] | None = None,
    initial: np.ndarray | None = None,
    ceiling: np.ndarray | None = None,
) -> Volume:
    """ASD-POCS (Sidky & Pan 2008) with RTK doing every projection: ``passes`` times one pass of
    RTK's SART (Joseph pair, positivity, ``relaxation``) from the current volume (``initial``,
    non-negative, on ``grid``; zero without it), then
    ``tv_steps`` steepest-descent steps on the total variation of ``tv_step`` times that pass's
    change (``classical.tv``, non-negative), each voxel then kept under ``ceiling`` when given
    (``classical.ceiling``, on ``grid``). The classical bar at arbitrary poses: the data term
    is RTK's, so no projector of ours grades itself. ``after_pass(volume, pass_number)`` after
    each pass's TV steps (a score curve)."""
    for name, array in (("initial volume", initial), ("ceiling", ceiling)):
        if array is not None and np.shape(array) != grid.shape:
            raise ValueError(f"the {name}'s shape {np.shape(array)} is not the grid's {grid.shape}")
    itk, rtk, geometry, _, stack = _iterative_setup(projections, matrices, grid, passes)
    image_type = itk.Image[itk.F, 3]
    regularize = tv_descent(tv_steps, tv_step)
    start = np.zeros(grid.shape) if initial is None else np.maximum(initial, 0.0)
    current = np.ascontiguousarray(start, dtype=np.float32)
    for number in range(1, passes + 1):
        sart = rtk.SARTConeBeamReconstructionFilter[image_type, image_type].New()
        sart.SetInput(0, volume_image(itk, current, grid))
        sart.SetInput(1, stack)
        _use_joseph_pair(sart, geometry)
        sart.SetNumberOfIterations(1)
        sart.SetLambda(float(relaxation))
        sart.SetEnforcePositivity(True)
        sart.Update()
        updated = torch.from_numpy(itk.array_from_image(sart.GetOutput()).copy())
        if tv_steps > 0:
            regularize(updated, torch.from_numpy(current))
        current = updated.numpy() if ceiling is None else np.minimum(updated.numpy(), ceiling, dtype=np.float32)
        if after_pass is not None:
            after_pass(current, number)
    return Volume.on_grid(grid, current)


def rtk_tv_conjugate_gradient(
    projections: np.ndarray,
    matrices: np.ndarray | Sequence[np.ndarray],
    grid: VolumeGrid,
    gamma_tv: float,
    iterations: int = 3,
    cg_iterations: int = 4,
    tv_iterations: int = 10,
) -> Volume:
    """RTK's TV-regularized iterative reconstruction (``RegularizedConjugateGradientConeBeam
    ReconstructionFilter``) from a zero volume on ``grid``: ``iterations`` outer loops, each
    ``cg_iterations`` of conjugate gradient on the least-squares data term, positivity, then a
    TV denoising of the volume (``gamma_tv``, ``tv_iterations`` inner steps). Matched Joseph
    projector pair, no displaced-detector weighting, as :func:`rtk_sart`."""
    itk, rtk, geometry, volume, stack = _iterative_setup(projections, matrices, grid, iterations)
    image_type = itk.Image[itk.F, 3]
    cg = rtk.RegularizedConjugateGradientConeBeamReconstructionFilter[image_type].New()
    cg.SetInputVolume(volume)
    cg.SetInputProjectionStack(stack)
    _use_joseph_pair(cg, geometry)
    cg.SetMainLoop_iterations(int(iterations))
    cg.SetCG_iterations(int(cg_iterations))
    cg.SetPerformPositivity(True)
    cg.SetPerformTVSpatialDenoising(True)
    cg.SetGammaTV(float(gamma_tv))
    cg.SetTV_iterations(int(tv_iterations))
    cg.Update()
    return Volume.on_grid(grid, itk.array_from_image(cg.GetOutput()).copy())


def rtk_fdk(
    projections: np.ndarray, matrices: np.ndarray | Sequence[np.ndarray], grid: VolumeGrid, hann_cutoff: float = 0.0
) -> Volume:
    """RTK's FDK (filtered back-projection) of line-integral ``projections`` (N, H, W) on
    ``grid``, with Parker weights for a short scan. FDK needs a circular orbit: anything else
    raises GeometryError with the reason. The scene is moved rigidly so the orbit axis is
    RTK's y axis (RTK derives its angular weights from rotations about y), reconstructed
    there, and the voxels returned on ``grid``. ``hann_cutoff`` in (0, 1] apodizes the ramp
    filter (0: plain ramp)."""
    itk, rtk = import_rtk()
    normalized = as_matrices(matrices)
    stack = np.asarray(projections, dtype=np.float32)
    if stack.ndim != 3 or stack.shape[0] != len(normalized):
        raise ValueError(f"projections must be (N, H, W) with N = {len(normalized)} views, got {stack.shape}")
    try:
        frame = orbit_frame(*fit_circular_orbit(normalized))
    except GeometryError as error:
        raise GeometryError(f"FDK needs a circular orbit and this scan is not one: {error}; use SART") from None
    normalized, stack = unmirrored(normalized, stack)
    moved = np.einsum("nij,jk->nik", normalized, np.linalg.inv(frame))
    rotation, shift = frame[:3, :3], frame[:3, 3]
    moved_grid = VolumeGrid(grid.shape, rotation @ grid.origin + shift, grid.spacing, rotation @ grid.direction)
    geometry, spacing = rtk_geometry(moved, u_spacing=u_spacing_beyond(moved_grid, moved))
    image_type = itk.Image[itk.F, 3]
    parker = rtk.ParkerShortScanImageFilter[image_type].New()
    parker.SetInput(projection_image(itk, stack, spacing))
    parker.SetGeometry(geometry)
    fdk = rtk.FDKConeBeamReconstructionFilter[image_type].New()
    fdk.SetInput(0, volume_image(itk, np.zeros(grid.shape), moved_grid))
    fdk.SetInput(1, parker.GetOutput())
    fdk.SetGeometry(geometry)
    fdk.GetRampFilter().SetTruncationCorrection(0.0)
    fdk.GetRampFilter().SetHannCutFrequency(float(hann_cutoff))
    fdk.Update()
    return Volume.on_grid(grid, itk.array_from_image(fdk.GetOutput()).copy())
