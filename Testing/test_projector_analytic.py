"""The Joseph projector against closed-form line integrals of a Gaussian blob, on grids with
oblique directions and anisotropic voxels, through mirrored and off-centre detectors."""

import numpy as np
import pytest
import torch

from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.geometry.projection import ray_directions, source_position
from ixgs_engine.projector.joseph import JosephProjector
from ixgs_engine.volume import VolumeGrid

CENTER = np.array([3.0, -4.0, 5.0])
SIGMA = 10.0


def oblique_grid() -> VolumeGrid:
    angle = np.radians(25.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    spacing = np.array([1.6, 1.4, 1.8])
    shape = (56, 64, 60)  # nz, ny, nx
    half = spacing * (np.array(shape[::-1]) - 1) / 2.0
    return VolumeGrid(shape, origin=CENTER - direction @ half, spacing=spacing, direction=direction)


def gaussian_blob(grid: VolumeGrid) -> np.ndarray:
    k, j, i = np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")
    index = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(np.float64)
    world = index @ grid.index_to_world_matrix().T
    return np.exp(-np.sum((world[..., :3] - CENTER) ** 2, axis=-1) / (2 * SIGMA**2))


def analytic_line_integrals(P: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    v, u = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    rays = ray_directions(P, np.stack([u.ravel(), v.ravel()], axis=1))
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    offset = CENTER - source_position(P)
    distance_sq = np.sum(offset**2) - (rays @ offset) ** 2
    return (np.sqrt(2 * np.pi) * SIGMA * np.exp(-distance_sq / (2 * SIGMA**2))).reshape(shape)


@pytest.mark.parametrize(
    "primary, secondary, offset, mirror",
    [
        (0.0, 0.0, (0.0, 0.0), False),
        (37.0, -22.0, (0.0, 0.0), True),
        (-75.0, 31.0, (14.0, -9.0), False),
        (128.0, 5.0, (-6.0, 11.0), True),
    ],
)
def test_forward_projection_matches_closed_form(primary, secondary, offset, mirror):
    grid = oblique_grid()
    width, height = 40, 36
    P = carm_projection_matrix(
        primary, secondary, 500.0, 900.0, Detector((width, height), (1.5, 1.5), offset), isocenter=CENTER
    )
    if not mirror:  # the C-arm default is mirrored; flip u for a non-mirrored detector
        P = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ P
    ours = JosephProjector(grid, [P], (height, width), dtype=torch.float64).forward(
        torch.as_tensor(gaussian_blob(grid))
    )[0]
    expected = analytic_line_integrals(P, (height, width))
    error = np.linalg.norm(ours.numpy() - expected) / np.linalg.norm(expected)
    assert error < 5e-3


def test_gradient_through_forward_is_the_adjoint():
    grid = VolumeGrid((10, 12, 14), origin=[-7.0, -6.0, -5.0], spacing=[1.0, 1.0, 1.0])
    P = [
        carm_projection_matrix(a, b, 300.0, 500.0, Detector((20, 16), (1.5, 1.5), (2.0, 1.0)))
        for a, b in [(10, 5), (100, -30)]
    ]
    projector = JosephProjector(grid, P, (16, 20), dtype=torch.float64)
    volume = torch.rand(grid.shape, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 16, 20, dtype=torch.float64)
    (projector.forward(volume) * weights).sum().backward()
    np.testing.assert_allclose(volume.grad.numpy(), projector.adjoint(weights).numpy(), rtol=1e-12, atol=1e-12)


def test_chunking_does_not_change_the_result():
    grid = VolumeGrid((12, 12, 12), origin=[-5.5] * 3)
    P = [carm_projection_matrix(30, 20, 300.0, 500.0, Detector((24, 24), (1.0, 1.0)))]
    volume = torch.rand(grid.shape, dtype=torch.float64)
    whole = JosephProjector(grid, P, (24, 24), dtype=torch.float64).forward(volume)
    chunked = JosephProjector(grid, P, (24, 24), dtype=torch.float64, samples_per_chunk=50).forward(volume)
    np.testing.assert_allclose(chunked.numpy(), whole.numpy(), rtol=1e-12)


def test_shape_mismatch_is_reported():
    grid = VolumeGrid((8, 8, 8))
    projector = JosephProjector(
        grid, [carm_projection_matrix(0, 0, 300.0, 500.0, Detector((8, 8), (1.0, 1.0)))], (8, 8)
    )
    with pytest.raises(ValueError, match=r"volume shape \(8, 8, 9\) does not match the grid \(8, 8, 8\)"):
        projector.forward(torch.zeros(8, 8, 9))
    with pytest.raises(ValueError, match=r"projections shape \(2, 8, 8\) does not match \(1, 8, 8\)"):
        projector.adjoint(torch.zeros(2, 8, 8))
