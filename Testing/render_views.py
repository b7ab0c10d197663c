"""The small scene the render tests share: 64 x 64 C-arm views of a 200 mm ROI around the
origin, as matrices acting on normalized points."""

from __future__ import annotations

import numpy as np
import torch

from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.geometry.normalization import SceneNormalization
from ixgs_engine.geometry.roi import ROI

IMAGE = 64  # square test images: H = W
NORMALIZATION = SceneNormalization.from_roi(ROI(center=[0.0, 0.0, 0.0], size=[200.0, 200.0, 200.0]))


def normalized_views(poses: list[tuple[float, float]], pixel_mm: float = 5.0) -> torch.Tensor:
    """C-arm views of the 200 mm ROI (64 x 64 pixels covering it), acting on normalized points."""
    detector = Detector((IMAGE, IMAGE), (pixel_mm, pixel_mm))
    matrices = [
        NORMALIZATION.projection_to_normalized(carm_projection_matrix(a, b, 750.0, 1200.0, detector)) for a, b in poses
    ]
    return torch.tensor(np.stack(matrices))
