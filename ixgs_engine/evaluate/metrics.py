"""3-D image-quality metrics with R²-Gaussian's conventions, so numbers compare with its papers.

Both volumes are divided by the reference's maximum, then PSNR uses a data range of 1, and
SSIM is the mean, over the three axes, of the mean 2-D SSIM (11x11 Gaussian window, sigma 1.5,
zero-padded, K1 = 0.01, K2 = 0.03) of the slices whose reference is not all zero.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ixgs_engine.volume import Volume

_WINDOW = 11
_SIGMA = 1.5
_C1 = 0.01**2
_C2 = 0.03**2


def _normalized_pair(volume: np.ndarray | Volume, reference: np.ndarray | Volume) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays (float64) divided by the reference maximum, after checking they match."""
    test = np.asarray(volume.array if isinstance(volume, Volume) else volume, dtype=np.float64)
    ref = np.asarray(reference.array if isinstance(reference, Volume) else reference, dtype=np.float64)
    if test.shape != ref.shape or ref.ndim != 3:
        raise ValueError(f"need two 3-D volumes of the same shape, got {test.shape} and {ref.shape}")
    peak = ref.max()
    if not peak > 0:
        raise ValueError("the reference volume's maximum must be positive")
    return test / peak, ref / peak


def psnr_3d(volume: np.ndarray | Volume, reference: np.ndarray | Volume) -> float:
    """PSNR (dB) over the whole volume: 20 log10(max(reference) / RMSE)."""
    test, ref = _normalized_pair(volume, reference)
    mse = float(np.mean((test - ref) ** 2))
    return float("inf") if mse == 0 else -10.0 * float(np.log10(mse))


def _gaussian_window() -> torch.Tensor:
    offsets = torch.arange(_WINDOW, dtype=torch.float64) - _WINDOW // 2
    profile = torch.exp(-(offsets**2) / (2 * _SIGMA**2))
    profile /= profile.sum()
    return torch.outer(profile, profile)[None, None]


def _slice_ssims(test: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each 2-D slice of a batch (S, A, B)."""
    window = _gaussian_window()

    def blur(images: torch.Tensor) -> torch.Tensor:
        return F.conv2d(images[:, None], window, padding=_WINDOW // 2)[:, 0]

    mu_t, mu_r = blur(test), blur(ref)
    var_t = blur(test * test) - mu_t**2
    var_r = blur(ref * ref) - mu_r**2
    cov = blur(test * ref) - mu_t * mu_r
    ssim_map = ((2 * mu_t * mu_r + _C1) * (2 * cov + _C2)) / ((mu_t**2 + mu_r**2 + _C1) * (var_t + var_r + _C2))
    return ssim_map.mean(dim=(1, 2))


def ssim_3d(volume: np.ndarray | Volume, reference: np.ndarray | Volume) -> float:
    """SSIM averaged over slices along each axis, then over the three axes (see module)."""
    test, ref = (torch.from_numpy(a) for a in _normalized_pair(volume, reference))
    per_axis = []
    for axis in range(3):
        test_slices, ref_slices = test.movedim(axis, 0), ref.movedim(axis, 0)
        occupied = ref_slices.amax(dim=(1, 2)) > 0
        per_axis.append(float(_slice_ssims(test_slices[occupied], ref_slices[occupied]).mean()))
    return float(np.mean(per_axis))


def _image_stack(images: np.ndarray) -> np.ndarray:
    stack = np.asarray(images, dtype=np.float64)
    return stack[None] if stack.ndim == 2 else stack


def psnr_2d(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """PSNR (dB) of each image (H, W) or stack (N, H, W) against its reference, with the
    reference image's maximum as the peak (the 2-D counterpart of :func:`psnr_3d`)."""
    test, ref = _image_stack(images), _image_stack(references)
    if test.shape != ref.shape:
        raise ValueError(f"need image stacks of the same shape, got {test.shape} and {ref.shape}")
    peaks = ref.max(axis=(1, 2))
    if not np.all(peaks > 0):
        raise ValueError("every reference image's maximum must be positive")
    mse = np.mean((test - ref) ** 2, axis=(1, 2)) / peaks**2
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, -10.0 * np.log10(mse))


def ssim_2d(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """SSIM of each image against its reference, both divided by the reference's maximum
    (same window and constants as :func:`ssim_3d`)."""
    test, ref = _image_stack(images), _image_stack(references)
    if test.shape != ref.shape:
        raise ValueError(f"need image stacks of the same shape, got {test.shape} and {ref.shape}")
    peaks = ref.max(axis=(1, 2), keepdims=True)
    if not np.all(peaks > 0):
        raise ValueError("every reference image's maximum must be positive")
    return _slice_ssims(torch.from_numpy(test / peaks), torch.from_numpy(ref / peaks)).numpy()
