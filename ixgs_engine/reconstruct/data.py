"""Training data: the scan's line integrals and matrices moved into the normalized scene and
onto the device, optionally block-averaged to a coarser detector."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ixgs_engine.geometry.normalization import SceneNormalization
from ixgs_engine.geometry.projection import decompose_projection_matrix
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io.scan import Projections


def downsample_matrices(matrices: np.ndarray, factor: int) -> np.ndarray:
    """Matrices for images block-averaged by ``factor``: new pixel centre u' sits at old
    u = factor u' + (factor - 1) / 2."""
    shift = (factor - 1) / 2.0
    to_coarse = np.array([[1.0 / factor, 0.0, -shift / factor], [0.0, 1.0 / factor, -shift / factor], [0.0, 0.0, 1.0]])
    return np.einsum("ij,njk->nik", to_coarse, matrices)


def block_averaged(values: torch.Tensor, matrices: np.ndarray, factor: int) -> tuple[torch.Tensor, np.ndarray]:
    """Images (N, H, W) averaged over ``factor`` x ``factor`` pixel blocks (a partial block at the
    far edges dropped) and their matrices (``downsample_matrices``); unchanged for ``factor`` <= 1."""
    if factor <= 1:
        return values, matrices
    height, width = values.shape[1:]
    pooled = F.avg_pool2d(values[:, None, : height - height % factor, : width - width % factor], factor)[:, 0]
    return pooled, downsample_matrices(matrices, factor)


def detector_voxel_size(matrices: np.ndarray, roi: ROI) -> float:
    """Median size (mm) of a detector pixel projected back to the ROI centre: the finest
    detail the views resolve there, and the default output voxel size."""
    sizes = []
    for P in matrices:
        pose = decompose_projection_matrix(P)
        focal = 0.5 * (abs(pose.intrinsics[0, 0]) + abs(pose.intrinsics[1, 1]))
        sizes.append(np.linalg.norm(roi.center - pose.source) / focal)
    return float(np.median(sizes))


@dataclass
class TrainingData:
    """Targets (V, H, W) and normalized-scene matrices (V, 3, 4) on the training device."""

    targets: torch.Tensor
    matrices: torch.Tensor
    world_matrices: np.ndarray
    scene: SceneNormalization
    roi: ROI

    @classmethod
    def from_projections(cls, projections: Projections, image_scale: float, device: torch.device) -> TrainingData:
        factor = max(int(round(1.0 / image_scale)), 1)
        values, matrices = block_averaged(
            torch.as_tensor(projections.values, dtype=torch.float32),
            np.asarray(projections.matrices, dtype=np.float64),
            factor,
        )
        scene = SceneNormalization.from_roi(projections.roi)
        normalized = np.stack([scene.projection_to_normalized(P) for P in matrices])
        return cls(
            targets=values.to(device),
            matrices=torch.as_tensor(normalized, dtype=torch.float64, device=device),
            world_matrices=matrices,
            scene=scene,
            roi=projections.roi,
        )

    @property
    def num_views(self) -> int:
        return int(self.targets.shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        return int(self.targets.shape[1]), int(self.targets.shape[2])
