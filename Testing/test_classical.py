"""The classical family's own pieces: the TV gradient against autograd and finite differences,
the TV steps ASD-POCS takes, and ASD-POCS as SART passes each followed by those steps (SART
itself against RTK's, and RTK's algorithms, are in test_projector.py and test_evaluate.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ixgs_engine.classical.asd_pocs import asd_pocs
from ixgs_engine.classical.ceiling import line_integral_ceiling
from ixgs_engine.classical.sart import sart
from ixgs_engine.classical.tv import TV_SMOOTHING, tv_gradient, tv_steps
from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.geometry.projection import source_position
from ixgs_engine.phantoms import hu_to_attenuation, make_phantom
from ixgs_engine.projector.joseph import JosephProjector


def _total_variation(volume: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Isotropic TV with forward differences written as plainly as possible (the reference)."""
    padded = torch.cat([volume, volume[-1:]], dim=0)
    padded = torch.cat([padded, padded[:, -1:]], dim=1)
    padded = torch.cat([padded, padded[:, :, -1:]], dim=2)
    dz = padded[1:, :-1, :-1] - padded[:-1, :-1, :-1]
    dy = padded[:-1, 1:, :-1] - padded[:-1, :-1, :-1]
    dx = padded[:-1, :-1, 1:] - padded[:-1, :-1, :-1]
    return torch.sqrt(dz**2 + dy**2 + dx**2 + smoothing).sum()


def test_the_tv_gradient_is_the_derivative_of_the_total_variation():
    volume = torch.rand((5, 6, 7), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    smoothing = (TV_SMOOTHING * float(volume.max())) ** 2
    leaf = volume.clone().requires_grad_(True)
    _total_variation(leaf, smoothing).backward()
    torch.testing.assert_close(tv_gradient(volume), leaf.grad, rtol=1e-9, atol=1e-12)
    # and against a central finite difference at one voxel
    step = 1e-6
    plus, minus = volume.clone(), volume.clone()
    plus[2, 3, 4] += step
    minus[2, 3, 4] -= step
    numeric = (_total_variation(plus, smoothing) - _total_variation(minus, smoothing)) / (2 * step)
    assert float(tv_gradient(volume)[2, 3, 4]) == pytest.approx(float(numeric), rel=1e-5)


def test_tv_steps_lower_the_total_variation_by_the_size_of_the_pass_and_keep_it_non_negative():
    generator = torch.Generator().manual_seed(5)
    before = torch.zeros((12, 12, 12))
    before[3:9, 3:9, 3:9] = 1.0
    noisy = (before + 0.2 * torch.randn(before.shape, generator=generator)).clamp(min=0.0)
    volume = noisy.clone()
    tv_steps(5, 0.2)(volume, before)
    smoothing = (TV_SMOOTHING * float(noisy.max())) ** 2
    assert float(_total_variation(volume, smoothing)) < 0.8 * float(_total_variation(noisy, smoothing))
    assert float(volume.min()) >= 0.0
    # each step moves the volume by at most step_size x the pass's change
    assert float(torch.linalg.vector_norm(volume - noisy)) <= 5 * 0.2 * float(
        torch.linalg.vector_norm(noisy - before)
    ) * (1 + 1e-5)
    unchanged = noisy.clone()
    tv_steps(5, 0.2)(unchanged, noisy.clone())  # a pass that changed nothing: no TV step
    assert torch.equal(unchanged, noisy)


def test_asd_pocs_is_sart_passes_each_followed_by_the_tv_steps_then_the_hook():
    truth = hu_to_attenuation(make_phantom("spine", (16, 16, 16), 8.0))
    detector = Detector((24, 24), (8.0, 8.0))
    matrices = np.stack(
        [carm_projection_matrix(a, b, 700.0, 1100.0, detector) for a, b in ((0, 0), (60, 10), (120, -15), (170, 5))]
    )
    views = JosephProjector(truth.grid, matrices, (24, 24)).forward(torch.as_tensor(truth.array)).numpy()
    seen = []
    combined = asd_pocs(
        views,
        matrices,
        truth.grid,
        3,
        relaxation=0.8,
        tv_steps=4,
        tv_step=0.3,
        after_pass=lambda v, b: seen.append(float(v.sum())),
    )
    regularize = tv_steps(4, 0.3)
    by_hand = sart(views, matrices, truth.grid, 3, relaxation=0.8, after_pass=regularize)
    np.testing.assert_array_equal(combined.array, by_hand.array)
    assert len(seen) == 3 and seen[-1] == pytest.approx(float(combined.array.sum(dtype=np.float64)), rel=1e-5)
    # no TV steps: plain SART, bit for bit
    plain = asd_pocs(views, matrices, truth.grid, 2, relaxation=0.5, tv_steps=0)
    np.testing.assert_array_equal(plain.array, sart(views, matrices, truth.grid, 2, relaxation=0.5).array)
    assert float(combined.array.min()) >= 0.0


def test_the_ray_floor_keeps_the_corners_bounded_when_the_poses_are_slightly_off():
    """Views of a phantom filling its box, reconstructed with angles about 1 deg off: rays that
    clip a corner for a sliver put their whole residual there in plain SART; dividing by at
    least one voxel holds the largest voxel at half of that, and the interior is no worse.
    A floor below every ray's length changes nothing."""
    truth = hu_to_attenuation(make_phantom("spine", (16, 16, 16), 8.0))
    truth = truth.with_array(np.maximum(truth.array, 0.02).astype(np.float32))  # tissue at every face
    detector = Detector((40, 40), (6.0, 6.0))
    rng = np.random.default_rng(0)
    angles = [(a, rng.uniform(-30, 30)) for a in np.linspace(0, 180, 12)]
    matrices = np.stack([carm_projection_matrix(a, b, 700.0, 1100.0, detector) for a, b in angles])
    views = JosephProjector(truth.grid, matrices, (40, 40)).forward(torch.as_tensor(truth.array)).numpy()
    rng.normal(size=24)  # the draws of the 0.5 deg case this test was sized with
    wrong = [
        carm_projection_matrix(a + rng.normal(0, 1.0), b + rng.normal(0, 1.0), 700.0, 1100.0, detector)
        for a, b in angles
    ]
    plain = sart(views, np.stack(wrong), truth.grid, 12, relaxation=0.8)
    floored = sart(views, np.stack(wrong), truth.grid, 12, relaxation=0.8, min_ray_mm=8.0)
    peak = float(truth.array.max())
    assert float(plain.array.max()) > 3 * peak  # the failure the floor is for
    assert float(floored.array.max()) < 0.55 * float(plain.array.max()) and float(floored.array.min()) >= 0.0
    inner = (slice(3, -3),) * 3
    error = {
        name: np.abs(v.array[inner] - truth.array[inner]).mean() for name, v in (("plain", plain), ("floored", floored))
    }
    assert error["floored"] <= error["plain"]
    same = sart(views, matrices, truth.grid, 2, relaxation=0.8, min_ray_mm=1e-9)
    np.testing.assert_array_equal(same.array, sart(views, matrices, truth.grid, 2, relaxation=0.8).array)


def _phantom_views(truth, angles, detector, fine):
    """Views of ``fine`` (the truth on a grid twice as fine: no inverse crime) and their matrices."""
    matrices = np.stack([carm_projection_matrix(a, b, 700.0, 1100.0, detector) for a, b in angles])
    views = JosephProjector(fine.grid, matrices, detector.pixels).forward(torch.as_tensor(fine.array)).numpy()
    return views, matrices


def test_the_line_integral_ceiling_is_what_each_voxels_centre_rays_measure_over_their_chord():
    """Against a brute-force count: for a few voxels, the smallest over the views of the largest
    line integral within the margin around the voxel's projection, over the length of the ray
    through its centre inside its cube (points counted along the ray at 1/2000 of a voxel)."""
    truth = hu_to_attenuation(make_phantom("spine", (12, 12, 12), 8.0))
    detector = Detector((30, 30), (8.0, 8.0))
    angles = [(a, 15.0 * np.sin(a)) for a in np.linspace(0, 170, 7)]
    views, matrices = _phantom_views(truth, angles, detector, truth)
    margin = 1
    ceiling = line_integral_ceiling(views, matrices, truth.grid, margin_pixels=margin)
    centres = truth.grid.voxel_centres()
    h = float(truth.grid.spacing[0])
    for index in [(0, 0, 0), (5, 6, 7), (11, 3, 0)]:
        centre = centres[index]
        bounds = []
        for view, P in enumerate(matrices):
            radius = margin
            hom = P @ np.append(centre, 1.0)
            u, v = hom[0] / hom[2], hom[1] / hom[2]
            padded = np.pad(views[view], radius, constant_values=-np.inf)
            window = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1,) * 2).max(axis=(2, 3))
            u0, v0 = int(np.floor(u)), int(np.floor(v))
            fu, fv = u - u0, v - v0
            line = (
                window[v0, u0] * (1 - fu) * (1 - fv)
                + window[v0, u0 + 1] * fu * (1 - fv)
                + window[v0 + 1, u0] * (1 - fu) * fv
                + window[v0 + 1, u0 + 1] * fu * fv
            )
            direction = centre - source_position(P)
            direction /= np.linalg.norm(direction)
            t = np.linspace(-h, h, 4001)
            inside = np.all(np.abs(t[:, None] * direction) <= h / 2, axis=1)
            bounds.append(max(line, 0.0) / (inside.sum() * (t[1] - t[0])))
        np.testing.assert_allclose(ceiling[index], min(bounds), rtol=2e-3)


def test_the_ceiling_never_cuts_the_truth_and_keeps_sart_physical_with_poses_off():
    """A phantom in air, viewed from a grid twice as fine: the ceiling is above the truth at
    every voxel (exact and 1-deg-off poses alike), zero in the air around it; SART + TV with
    the ceiling never exceeds it (the air stays empty, which plain SART's does not) and, with
    poses off, stays below 1.5 x the truth's largest voxel."""
    truth = hu_to_attenuation(make_phantom("spine", (16, 16, 16), 8.0))
    fine = hu_to_attenuation(make_phantom("spine", (32, 32, 32), 4.0))
    detector = Detector((40, 40), (6.0, 6.0))
    rng = np.random.default_rng(3)
    angles = [(a, rng.uniform(-30, 30)) for a in np.linspace(0, 180, 12)]
    views, matrices = _phantom_views(truth, angles, detector, fine)
    wrong = np.stack(
        [
            carm_projection_matrix(a + rng.normal(0, 1.0), b + rng.normal(0, 1.0), 700.0, 1100.0, detector)
            for a, b in angles
        ]
    )
    for poses in (matrices, wrong):
        ceiling = line_integral_ceiling(views, poses, truth.grid)
        assert np.all(ceiling >= truth.array), "the ceiling cuts the truth"
    assert float(ceiling[0, 0, 0]) == 0.0 and float(ceiling[-1, -1, -1]) == 0.0  # air seen as air
    bounded = asd_pocs(views, wrong, truth.grid, 8, ceiling=ceiling)
    assert np.all(bounded.array <= ceiling) and float(bounded.array.min()) >= 0.0
    peak = float(truth.array.max())
    assert float(bounded.array.max()) < 1.5 * peak
    assert np.any(asd_pocs(views, wrong, truth.grid, 8).array > ceiling)  # what the ceiling is for
