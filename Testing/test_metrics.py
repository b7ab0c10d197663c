"""3-D PSNR and SSIM (R²-Gaussian's conventions)."""

import numpy as np
import pytest

from ixgs_engine.evaluate.metrics import psnr_3d, ssim_3d
from ixgs_engine.volume import Volume


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A reference with empty slices (skipped by SSIM) and a noisy copy."""
    rng = np.random.default_rng(0)
    reference = np.zeros((12, 16, 20))
    reference[2:10, 3:13, 4:16] = rng.uniform(0.2, 2.0, size=(8, 10, 12))
    return reference + 0.05 * rng.normal(size=reference.shape), reference


def test_psnr_is_peak_over_rmse(pair):
    test, reference = pair
    expected = 20 * np.log10(reference.max() / np.sqrt(np.mean((test - reference) ** 2)))
    assert psnr_3d(test, reference) == pytest.approx(expected)
    assert psnr_3d(reference, reference) == float("inf")


def test_metrics_ignore_the_attenuation_scale_and_accept_volumes(pair):
    test, reference = pair
    scaled = psnr_3d(Volume(7.0 * test), Volume(7.0 * reference)), ssim_3d(Volume(7.0 * test), Volume(7.0 * reference))
    assert scaled == pytest.approx((psnr_3d(test, reference), ssim_3d(test, reference)))


def test_ssim_is_one_for_identical_volumes_and_drops_with_noise(pair):
    test, reference = pair
    noisier = reference + 4.0 * (test - reference)
    assert ssim_3d(reference, reference) == pytest.approx(1.0)
    assert 0.0 < ssim_3d(noisier, reference) < ssim_3d(test, reference) < 1.0


def test_metrics_reject_mismatched_or_empty_volumes(pair):
    test, reference = pair
    with pytest.raises(ValueError):
        psnr_3d(test[1:], reference)
    with pytest.raises(ValueError):
        ssim_3d(test, np.zeros_like(reference))
