"""Bring two volumes onto one voxel grid by their world geometry (origin, spacing, direction),
so a reconstruction on its ROI grid compares with a CT on its own grid.

The comparison grid is the reference's, cropped to the reference voxels whose centres lie
inside the other volume's box: voxels the reconstruction never covered are not counted.
``resample_to`` (SimpleITK's resampling by world geometry) lives in ``io.volumes``, beside the
SimpleITK conversions, so a run can resample its own outputs (the preview) too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ixgs_engine.errors import GeometryError
from ixgs_engine.io.volumes import resample_to
from ixgs_engine.volume import Volume, VolumeGrid


def inside_mask(grid: VolumeGrid, box: VolumeGrid) -> np.ndarray:
    """Boolean array on ``grid``: voxel centres inside ``box``'s voxel-covered region (the
    outer faces of its edge voxels, with a small tolerance)."""
    nz, ny, nx = grid.shape
    to_box = (box.world_to_index_matrix() @ grid.index_to_world_matrix())[:3]
    j, i = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    plane = to_box[:, :1] * i.ravel() + to_box[:, 1:2] * j.ravel() + to_box[:, 3:]  # (3, ny * nx) at k = 0
    limits = np.array(box.size_ijk, dtype=np.float64)[:, None] - 0.5
    tolerance = 1e-6
    inside = np.empty(grid.shape, dtype=bool)
    for k in range(nz):  # slice by slice: a full CT's index array would take gigabytes
        in_box = plane + to_box[:, 2:3] * k
        inside[k] = np.all((in_box >= -0.5 - tolerance) & (in_box <= limits + tolerance), axis=0).reshape(ny, nx)
    return inside


@dataclass
class AlignedPair:
    """The test volume resampled onto the (cropped) reference grid, and the reference there.
    ``coverage`` is the fraction of reference voxels inside the test volume's box."""

    test: Volume
    reference: Volume
    coverage: float


def align_to_reference(volume: Volume, reference: Volume) -> AlignedPair:
    """Resample ``volume`` onto the reference grid cropped to their overlap (the bounding
    index box of the reference voxels inside ``volume``'s box). Raises GeometryError when the
    volumes do not overlap or the overlap is too thin to compare."""
    inside = inside_mask(reference.grid, volume.grid)
    if not inside.any():
        raise GeometryError(
            "the volumes do not overlap in world coordinates (check origin/spacing/direction, "
            "and that both are in the same patient frame, LPS mm)"
        )
    bounds = [np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    low = np.array([b[0] for b in bounds])
    high = np.array([b[-1] + 1 for b in bounds])
    if np.any(high - low < 2):
        raise GeometryError(f"the volumes overlap by only {(high - low).tolist()} voxels (z, y, x); nothing to compare")
    cropped_array = reference.array[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    start_ijk = low[::-1].astype(np.float64)
    origin = reference.origin + reference.direction @ (reference.spacing * start_ijk)
    cropped = Volume(cropped_array, origin, reference.spacing, reference.direction)
    return AlignedPair(resample_to(volume, cropped.grid), cropped, float(inside.mean()))
