"""Training losses: L1 and D-SSIM on projections, anisotropic 3-D total variation."""

from __future__ import annotations

import torch
from pytorch_msssim import ssim


def l1_loss(rendered: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (rendered - target).abs().mean()


def dssim_loss(rendered: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """1 - SSIM (11-pixel Gaussian window) of (V, H, W) images over a fixed data range, so the
    term does not change scale from batch to batch."""
    return 1.0 - ssim(rendered[:, None], target[:, None], data_range=data_range, size_average=True)


def tv_3d_loss(volume: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring voxels along each axis, summed over axes."""
    return sum(torch.diff(volume, dim=axis).abs().mean() for axis in range(3))
