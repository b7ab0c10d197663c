"""The torch render backend and the Gaussian model: splatting against brute-force line
integrals and against the voxel projector, gradients against finite differences, voxelization,
the cut at the ROI's faces, and the saved file format (densification: test_densification.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from render_views import IMAGE, NORMALIZATION, normalized_views

from ixgs_engine.gaussians import GaussianModel
from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.projector.joseph import JosephProjector
from ixgs_engine.render import RenderBackend, get_backend
from ixgs_engine.volume import VolumeGrid

FLIP_U = np.array([[-1.0, 0.0, IMAGE - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module", params=["torch"])
def backend(request: pytest.FixtureRequest) -> RenderBackend:
    """Every backend must pass the backend-facing tests: add its name to ``params``."""
    return get_backend(request.param)


def rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def brute_force_line_integrals(
    P: np.ndarray, mean: np.ndarray, cov: np.ndarray, rho: float, samples: int = 801
) -> np.ndarray:
    """Trapezoid integration of the Gaussian along every pixel's ray (float64), +-8 sigma_max
    around the ray's closest approach to the centre."""
    Pn = P / np.linalg.norm(P[2, :3])
    source = -np.linalg.solve(Pn[:, :3], Pn[:, 3])
    v, u = np.mgrid[0:IMAGE, 0:IMAGE]
    pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    directions = np.linalg.solve(Pn[:, :3], pixels).T
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    reach = 8.0 * math.sqrt(np.linalg.eigvalsh(cov).max())
    t = ((mean - source) @ directions.T)[:, None] + np.linspace(-reach, reach, samples)
    offsets = source + t[..., None] * directions[:, None, :] - mean
    values = rho * np.exp(-0.5 * np.einsum("rsi,ij,rsj->rs", offsets, np.linalg.inv(cov), offsets))
    return np.trapezoid(values, t, axis=1).reshape(IMAGE, IMAGE)


def render_one(backend: RenderBackend, P: np.ndarray, mean: np.ndarray, cov: np.ndarray, rho: float) -> np.ndarray:
    image = backend.render(
        torch.tensor(mean)[None],
        torch.tensor(cov)[None],
        torch.tensor([rho], dtype=torch.float64),
        torch.tensor(P)[None],
        (IMAGE, IMAGE),
    )
    return image[0].numpy()


# ----------------------------------------------------------------------------- splatting accuracy
@pytest.mark.parametrize("mirrored", [True, False], ids=["mirrored", "plain"])
@pytest.mark.parametrize("pose", ["on_axis", "off_axis"])
def test_single_gaussian_matches_brute_force_line_integrals(backend: RenderBackend, pose: str, mirrored: bool) -> None:
    """A rotated anisotropic Gaussian (sigmas 6, 3, 1.5 mm) in world mm: the centre pixel within
    1 %, the whole image within 2 % relative L2 (the 3-sigma cutoff drops exp(-4.5) = 1.1 % of
    the footprint's mass), and inside the footprint the affine approximation's error shrinks
    with the source distance."""
    cov = rotation(3) @ np.diag([36.0, 9.0, 2.25]) @ rotation(3).T
    footprint_errors = []
    for distance_factor in (1.0, 4.0):
        if pose == "on_axis":
            detector = Detector((IMAGE, IMAGE), (1.5, 1.5))
            P = carm_projection_matrix(0.0, 0.0, 750.0 * distance_factor, 1200.0 * distance_factor, detector)
        else:  # oblique rays: off-centre principal point, tilted C-arm
            offset = (70.0 * distance_factor, -50.0 * distance_factor)
            detector = Detector((IMAGE, IMAGE), (1.5, 1.5), offset=offset)
            P = carm_projection_matrix(30.0, 20.0, 750.0 * distance_factor, 1200.0 * distance_factor, detector)
        Pn = P / np.linalg.norm(P[2, :3])
        source = -np.linalg.solve(Pn[:, :3], Pn[:, 3])
        mean = source + 750.0 * distance_factor * np.linalg.solve(Pn[:, :3], [30.3, 33.6, 1.0])
        if not mirrored:
            P = FLIP_U @ P
        assert (np.linalg.det(P[:, :3]) < 0) == mirrored
        expected = brute_force_line_integrals(P, mean, cov, 0.02)
        rendered = render_one(backend, P, mean, cov, 0.02)
        centre = np.unravel_index(expected.argmax(), expected.shape)
        assert abs(rendered[centre] - expected[centre]) <= 0.01 * expected[centre]
        assert np.linalg.norm(rendered - expected) <= 0.02 * np.linalg.norm(expected)
        inside = rendered > 0
        footprint_errors.append(np.linalg.norm((rendered - expected)[inside]) / np.linalg.norm(expected[inside]))
    assert footprint_errors[0] <= 0.01
    assert footprint_errors[1] < 0.5 * footprint_errors[0]


def test_line_factor_is_the_central_line_integral(backend: RenderBackend) -> None:
    """Derivation check of mu = sqrt(2 pi / (r^T Sigma^-1 r)): the peak of a splat whose centre
    falls exactly on a pixel equals the analytic integral along that pixel's ray."""
    cov = rotation(5) @ np.diag([25.0, 4.0, 1.0]) @ rotation(5).T
    P = carm_projection_matrix(40.0, -10.0, 750.0, 1200.0, Detector((IMAGE, IMAGE), (1.5, 1.5)))
    Pn = P / np.linalg.norm(P[2, :3])
    source = -np.linalg.solve(Pn[:, :3], Pn[:, 3])
    direction = np.linalg.solve(Pn[:, :3], [20.0, 41.0, 1.0])
    mean = source + 700.0 * direction
    r = direction / np.linalg.norm(direction)
    expected = 0.03 * math.sqrt(2.0 * math.pi / (r @ np.linalg.inv(cov) @ r))
    assert render_one(backend, P, mean, cov, 0.03)[41, 20] == pytest.approx(expected, rel=1e-10)


def test_gaussians_agree_with_the_voxel_projector_of_their_voxelization(backend: RenderBackend) -> None:
    """Rendering Gaussians directly vs Joseph-projecting their voxelization (96^3 over the box,
    sigmas >= 3 voxels). The splat cuts at 3 sigma (2-D) and the voxelizer at the 3-D radius that
    drops the same mass (1.1 %), so both carry the same total; what is left is the affine
    approximation (~0.3 %), the rims of the cutoffs and Joseph's trilinear interpolation."""
    means = torch.tensor(
        [[0.1, -0.2, 0.05], [-0.35, 0.3, -0.1], [0.4, 0.25, 0.3], [-0.1, -0.4, -0.45]], dtype=torch.float64
    )
    scales = np.array([[0.15, 0.08, 0.06], [0.07, 0.12, 0.07], [0.1, 0.1, 0.2], [0.065, 0.09, 0.14]])
    covariances = torch.tensor(
        np.stack([rotation(10 + i) @ np.diag(s**2) @ rotation(10 + i).T for i, s in enumerate(scales)])
    )
    densities = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    matrices = normalized_views([(0.0, 0.0), (35.0, 20.0), (-70.0, -15.0)])
    step = 2.0 / 96
    grid = VolumeGrid((96, 96, 96), origin=np.full(3, -1.0 + step / 2), spacing=np.full(3, step))
    volume = backend.voxelize(means, covariances, densities, grid)
    projected = JosephProjector(grid, matrices.numpy(), (IMAGE, IMAGE), dtype=torch.float64)(volume)
    rendered = backend.render(means, covariances, densities, matrices, (IMAGE, IMAGE))
    assert torch.linalg.vector_norm(rendered - projected) <= 0.015 * torch.linalg.vector_norm(projected)
    assert float(rendered.sum() / projected.sum()) == pytest.approx(1.0, rel=0.003)


def test_float32_gaussians_render_like_float64_ones_even_when_thin(backend: RenderBackend) -> None:
    """Training runs in float32: per-Gaussian geometry is float64 inside the backend, so even
    a needle (scale ratio 150) renders to within 1e-4 of the float64 result."""
    matrices = normalized_views([(20.0, 10.0)], pixel_mm=1.0)
    images = []
    for dtype in (torch.float32, torch.float64):
        model = GaussianModel.from_values(
            [[0.0, 0.02, 0.0], [0.05, -0.03, 0.1]],
            [[0.3, 0.002, 0.002], [0.2, 0.05, 0.02]],
            [[0.8, 0.3, -0.4, 0.2], [0.1, 0.9, 0.3, -0.2]],
            [1.0, 0.5],
            dtype=dtype,
        )
        with torch.no_grad():
            image = backend.render(model.positions, model.covariances(), model.densities, matrices, (IMAGE, IMAGE))
        images.append(image.double())
    assert torch.linalg.vector_norm(images[0] - images[1]) <= 1e-4 * torch.linalg.vector_norm(images[1])


def test_views_are_independent_and_culling_drops_gaussians_behind_the_source(backend: RenderBackend) -> None:
    matrices = normalized_views([(0.0, 0.0), (90.0, 0.0)])
    source = -torch.linalg.solve(matrices[0, :, :3], matrices[0, :, 3])
    means = torch.tensor([[0.1, 0.2, -0.1], [0.0, 0.0, 0.0]], dtype=torch.float64)
    means[1] = 2.0 * source  # behind the first view's source, in front of nothing else there
    covariances = torch.eye(3, dtype=torch.float64).expand(2, 3, 3) * 0.01
    densities = torch.tensor([1.0, 1.0], dtype=torch.float64)
    together = backend.render(means[:1], covariances[:1], densities[:1], matrices, (IMAGE, IMAGE))
    for view in range(2):
        alone = backend.render(means[:1], covariances[:1], densities[:1], matrices[view : view + 1], (IMAGE, IMAGE))
        torch.testing.assert_close(together[view], alone[0])
    first = backend.render(means, covariances, densities, matrices[:1], (IMAGE, IMAGE))
    torch.testing.assert_close(first, together[:1])


# ----------------------------------------------------------------------------- voxelization
def test_voxelizer_matches_direct_evaluation_and_subgrids(backend: RenderBackend) -> None:
    """Voxel values are sum_i rho_i exp(-1/2 d^T Sigma^-1 d) within Mahalanobis distance 3, on a
    rotated anisotropic grid; a sub-volume equals the matching block of the full volume."""
    means = torch.tensor([[0.1, -0.2, 0.05], [-0.3, 0.25, -0.1]], dtype=torch.float64)
    covariances = torch.tensor(
        np.stack([rotation(21) @ np.diag([0.02, 0.005, 0.01]) @ rotation(21).T, np.eye(3) * 0.004])
    )
    densities = torch.tensor([1.0, 0.7], dtype=torch.float64)
    grid = VolumeGrid((20, 24, 28), origin=[-0.9, -0.8, -0.7], spacing=[0.06, 0.07, 0.09], direction=rotation(22))
    volume = backend.voxelize(means, covariances, densities, grid)

    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    affine = grid.index_to_world_matrix()
    points = np.stack([i, j, k], axis=-1).reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
    expected = np.zeros(len(points))
    for mean, cov, rho in zip(means.numpy(), covariances.numpy(), densities.numpy(), strict=True):
        d = points - mean
        m2 = np.einsum("pi,ij,pj->p", d, np.linalg.inv(cov), d)
        expected += np.where(m2 < 9.0, rho * np.exp(-0.5 * m2), 0.0)
    np.testing.assert_allclose(volume.numpy().reshape(-1), expected, atol=1e-12)

    block = grid.block((3, 5, 7), (10, 9, 8))
    torch.testing.assert_close(backend.voxelize(means, covariances, densities, block), volume[3:13, 5:14, 7:15])


# ----------------------------------------------------------------------------- gradients
def tiny_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two small Gaussians, two views (one mirrored, one not) of 9 x 11 pixels, float64."""
    detector = Detector((11, 9), (30.0, 30.0))
    views = [
        carm_projection_matrix(10.0, 5.0, 750.0, 1200.0, detector),
        carm_projection_matrix(-60.0, 10.0, 750.0, 1200.0, detector),
    ]
    views[1] = np.array([[-1.0, 0.0, 10.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ views[1]
    matrices = torch.tensor(np.stack([NORMALIZATION.projection_to_normalized(P) for P in views]))
    means = torch.tensor([[0.1, -0.15, 0.05], [-0.2, 0.1, 0.2]], dtype=torch.float64)
    covariances = torch.tensor(
        np.stack([rotation(31) @ np.diag([0.04, 0.01, 0.02]) @ rotation(31).T, np.eye(3) * 0.012])
    )
    densities = torch.tensor([1.0, 0.6], dtype=torch.float64)
    return means, covariances, densities, matrices


def test_render_gradients_match_finite_differences(backend: RenderBackend) -> None:
    means, covariances, densities, matrices = tiny_scene()
    offsets = torch.zeros(2, 2, 2, dtype=torch.float64)
    inputs = tuple(t.clone().requires_grad_() for t in (means, covariances, densities, offsets))

    def render(m: torch.Tensor, c: torch.Tensor, d: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return backend.render(m, c, d, matrices, (9, 11), screen_offsets=o)

    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_voxelize_gradients_match_finite_differences(backend: RenderBackend) -> None:
    means, covariances, densities, _ = tiny_scene()
    grid = VolumeGrid((6, 7, 8), origin=[-0.51, -0.56, -0.47], spacing=[0.14, 0.15, 0.13])
    inputs = tuple(t.clone().requires_grad_() for t in (means, covariances, densities))

    def voxelize(m: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return backend.voxelize(m, c, d, grid)

    assert torch.autograd.gradcheck(voxelize, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_model_parameter_gradients_match_finite_differences(backend: RenderBackend) -> None:
    """Through the activations (sigmoid scales, normalized quaternions, softplus densities)."""
    means, _, _, matrices = tiny_scene()
    model = GaussianModel.from_values(
        means,
        [[0.2, 0.1, 0.14], [0.11, 0.11, 0.13]],
        [[0.9, 0.2, -0.3, 0.1], [0.7, -0.1, 0.5, 0.4]],
        [1.0, 0.6],
        dtype=torch.float64,
    )
    weights = torch.rand(2, 9, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss() -> torch.Tensor:
        return (
            backend.render(model.positions, model.covariances(), model.densities, matrices, (9, 11)) * weights
        ).sum()

    loss().backward()
    step = 1e-6
    for name, param in model.parameters().items():
        numeric = torch.zeros_like(param)
        with torch.no_grad():
            for index in np.ndindex(*param.shape):
                param[index] += step
                plus = loss()
                param[index] -= 2 * step
                minus = loss()
                param[index] += step
                numeric[index] = (plus - minus) / (2 * step)
        torch.testing.assert_close(param.grad, numeric, rtol=1e-4, atol=1e-7, msg=name)


def test_screen_offsets_gradient_marks_the_gaussians_each_view_sees(backend: RenderBackend) -> None:
    matrices = normalized_views([(0.0, 0.0)])
    source = -torch.linalg.solve(matrices[0, :, :3], matrices[0, :, 3])
    means = torch.tensor([[0.1, 0.2, -0.1], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0]], dtype=torch.float64)
    means[1] = 2.0 * source  # behind the source
    covariances = torch.eye(3, dtype=torch.float64).expand(3, 3, 3) * 0.01
    offsets = torch.zeros(1, 3, 2, dtype=torch.float64, requires_grad=True)
    image = backend.render(
        means, covariances, torch.ones(3, dtype=torch.float64), matrices, (IMAGE, IMAGE), screen_offsets=offsets
    )
    (image * torch.linspace(0.0, 1.0, IMAGE, dtype=torch.float64)).sum().backward()
    seen = offsets.grad.norm(dim=2)[0] > 0
    assert seen.tolist() == [True, False, False]  # the third is far above the field of view


# ----------------------------------------------------------------------------- the model
def test_activations_and_covariances() -> None:
    model = GaussianModel.from_values(
        [[0.0, 0.0, 0.0]], [[0.3, 0.02, 0.0015]], [[2.0, 0.0, 0.0, 2.0]], [0.25], dtype=torch.float64
    )
    torch.testing.assert_close(model.scales, torch.tensor([[0.3, 0.02, 0.0015]], dtype=torch.float64))
    torch.testing.assert_close(model.densities, torch.tensor([0.25], dtype=torch.float64))
    half_turn_z = np.array(
        [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    )  # q = (1, 0, 0, 1)/sqrt(2): 90 deg about z
    expected = half_turn_z @ np.diag(model.scales[0].detach().numpy() ** 2) @ half_turn_z.T
    np.testing.assert_allclose(model.covariances()[0].detach().numpy(), expected, atol=1e-15)


def test_random_init_fills_the_box_with_neighbour_sized_gaussians() -> None:
    model = GaussianModel.random(4000, density=0.2, seed=5)
    assert model.num_gaussians == 4000
    assert model.positions.abs().max() <= 1.0
    spacing = (8.0 / 4000) ** (1.0 / 3.0)
    assert 0.5 * spacing < float(model.scales.detach().mean()) < 1.5 * spacing
    torch.testing.assert_close(model.densities, torch.full((4000,), 0.2))


def test_from_volume_reproduces_the_volume_roughly(backend: RenderBackend) -> None:
    """A smooth blob sampled with 20k Gaussians: the voxelized model keeps the mass (the cutoff
    drops ~1 %) and follows the values within the sampling noise."""
    step = 2.0 / 32
    grid = VolumeGrid((32, 32, 32), origin=np.full(3, -1.0 + step / 2), spacing=np.full(3, step))
    axis = -1.0 + step / 2 + step * np.arange(32)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    values = 2.0 * np.exp(-((x - 0.2) ** 2 / 0.15 + y**2 / 0.08 + (z + 0.1) ** 2 / 0.2)) + 1.0 * (
        x**2 + y**2 + z**2 < 0.3
    )
    model = GaussianModel.from_volume(values, grid, 20_000, seed=2)
    with torch.no_grad():
        voxelized = backend.voxelize(model.positions, model.covariances(), model.densities, grid).numpy()
    assert voxelized.sum() == pytest.approx(values.sum(), rel=0.06)
    assert np.linalg.norm(voxelized - values) <= 0.25 * np.linalg.norm(values)


def test_save_and_load_round_trip(tmp_path, backend: RenderBackend) -> None:
    model = GaussianModel.random(500, density=0.3, seed=1, normalization=NORMALIZATION)
    draws = torch.Generator().manual_seed(2)  # not the global RNG: the draws must not depend on the tests run before
    with torch.no_grad():
        model.parameters()["rotations"].normal_(generator=draws)
        model.parameters()["scales"].normal_(generator=draws)
    path = tmp_path / "gaussians.npz"
    model.save(path)
    loaded = GaussianModel.load(path)
    for attribute in ("positions", "scales", "rotations", "densities"):
        torch.testing.assert_close(getattr(loaded, attribute), getattr(model, attribute), rtol=1e-5, atol=1e-7)
    assert loaded.normalization.scale == NORMALIZATION.scale
    np.testing.assert_array_equal(loaded.normalization.center, NORMALIZATION.center)
    matrices = normalized_views([(20.0, 10.0)])
    with torch.no_grad():
        before = backend.render(model.positions, model.covariances(), model.densities, matrices, (IMAGE, IMAGE))
        after = backend.render(loaded.positions, loaded.covariances(), loaded.densities, matrices, (IMAGE, IMAGE))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-6)
    np.savez(tmp_path / "other.npz", positions=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="ixgs-gaussians/1"):
        GaussianModel.load(tmp_path / "other.npz")


def test_backend_registry() -> None:
    assert isinstance(get_backend("torch"), RenderBackend)
    with pytest.raises(ValueError, match="unknown render backend"):
        get_backend("no-such-backend")


# ----------------------------------------------------------------------------- support box
def clipped_brute_force(
    P: np.ndarray, mean: np.ndarray, cov: np.ndarray, rho: float, half: np.ndarray, inside: bool
) -> np.ndarray:
    """Trapezoid line integrals of the Gaussian along every pixel's ray, counting only the
    samples inside the box of half-sizes ``half`` (or only those outside it)."""
    Pn = P / np.linalg.norm(P[2, :3])
    source = -np.linalg.solve(Pn[:, :3], Pn[:, 3])
    v, u = np.mgrid[0:IMAGE, 0:IMAGE]
    directions = np.linalg.solve(Pn[:, :3], np.stack([u.ravel(), v.ravel(), np.ones(u.size)])).T
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    reach = 8.0 * math.sqrt(np.linalg.eigvalsh(cov).max())
    t = ((mean - source) @ directions.T)[:, None] + np.linspace(-reach, reach, 4001)
    points = source + t[..., None] * directions[:, None, :]
    offsets = points - mean
    values = rho * np.exp(-0.5 * np.einsum("rsi,ij,rsj->rs", offsets, np.linalg.inv(cov), offsets))
    in_box = np.all(np.abs(points) <= half, axis=-1)
    return np.trapezoid(values * (in_box == inside), t, axis=1).reshape(IMAGE, IMAGE)


@pytest.mark.parametrize("side", ["inside", "outside"])
@pytest.mark.parametrize("face", ["crossed", "grazed"])
@pytest.mark.parametrize("pose", [(0.0, 0.0), (25.0, 15.0), (80.0, 10.0)], ids=["face-on", "oblique", "steep"])
def test_support_box_cuts_gaussians_at_its_faces(
    backend: RenderBackend, side: str, face: str, pose: tuple[float, float]
) -> None:
    """A Gaussian (sigma 3 mm) 2 mm from a face of the support box, a face the rays cross or one
    they run along: rendered with ``support``, it keeps the part of each pixel's ray on its own
    side of the face. Against brute-force integration of the cut Gaussian: the brightest pixel
    within 1 %, the image within 2 % relative L2 (the footprint cutoff alone drops 1.1 %)."""
    detector = Detector((IMAGE, IMAGE), (1.0, 1.0))
    P = carm_projection_matrix(*pose, 750.0, 1200.0, detector)
    axis = int(np.argmax(np.abs(P[2, :3])))  # the axis closest to the rays: its faces are crossed
    if face == "grazed":
        axis = (axis + 1) % 3
    half = np.full(3, 200.0)
    half[axis] = 40.0 if face == "crossed" else 5.0
    mean = np.zeros(3)
    mean[axis] = half[axis] + (-2.0 if side == "inside" else 2.0)
    cov = np.diag([9.0, 9.0, 9.0])
    expected = clipped_brute_force(P, mean, cov, 0.02, half, side == "inside")
    full = brute_force_line_integrals(P, mean, cov, 0.02)
    assert 0.05 * np.abs(full).sum() < np.abs(expected).sum() < 0.95 * np.abs(full).sum()  # the face really cuts it
    rendered = backend.render(
        torch.tensor(mean)[None],
        torch.tensor(cov)[None],
        torch.tensor([0.02], dtype=torch.float64),
        torch.tensor(P)[None],
        (IMAGE, IMAGE),
        support=half.tolist(),
    )[0].numpy()
    centre = np.unravel_index(expected.argmax(), expected.shape)
    assert abs(rendered[centre] - expected[centre]) <= 0.01 * expected[centre]
    assert np.linalg.norm(rendered - expected) <= 0.02 * np.linalg.norm(expected)


def test_support_box_gradients_match_finite_differences(backend: RenderBackend) -> None:
    """Gradients of a weighted image through the cut (depth and spread along the rays included)
    against central differences, float64, for Gaussians cut by a crossed and a grazed face."""
    matrices = normalized_views([(20.0, 10.0)], pixel_mm=12.0)
    half = [0.3, 0.25, 1.0]
    means = torch.tensor([[0.25, 0.0, 0.05], [0.0, 0.3, -0.1], [0.1, 0.05, 0.0]], dtype=torch.float64)
    covariances = torch.stack([torch.diag(torch.tensor(d, dtype=torch.float64)) for d in ([4e-3, 2e-3, 3e-3],) * 3])
    densities = torch.tensor([1.0, 0.7, 0.5], dtype=torch.float64)
    weights = torch.rand((1, IMAGE, IMAGE), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(m, c, d):
        return (backend.render(m, c, d, matrices, (IMAGE, IMAGE), support=half) * weights).sum()

    leaves = [t.clone().requires_grad_(True) for t in (means, covariances, densities)]
    loss(*leaves).backward()
    step = 1e-6
    for position, leaf in enumerate(leaves):
        flat = leaf.detach().reshape(-1)
        for k in range(flat.numel()):
            shifted = [t.detach().clone() for t in (means, covariances, densities)]
            shifted[position].view(-1)[k] += step
            up = float(loss(*shifted))
            shifted[position].view(-1)[k] -= 2 * step
            down = float(loss(*shifted))
            numeric = (up - down) / (2 * step)
            assert float(leaf.grad.reshape(-1)[k]) == pytest.approx(numeric, rel=2e-3, abs=1e-6), (position, k)


def test_support_box_parts_voxels_between_inside_and_outside_gaussians(backend: RenderBackend) -> None:
    """Voxelized with ``support``, a Gaussian centred in the box fills only the voxels in it and
    one centred outside only the voxels outside it; without, both fill both."""
    grid = VolumeGrid((12, 12, 12), origin=[-0.55] * 3, spacing=[0.1] * 3)
    means = torch.tensor([[0.05, 0.0, 0.0], [0.35, 0.0, 0.0]], dtype=torch.float64)
    covariances = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1) * 0.04
    densities = torch.tensor([1.0, 2.0], dtype=torch.float64)
    half = [0.2, 1.0, 1.0]
    cut = backend.voxelize(means, covariances, densities, grid, support=half)
    inside_voxels = torch.as_tensor(np.all(np.abs(grid.voxel_centres()) <= half, axis=-1))
    alone = [backend.voxelize(means[i : i + 1], covariances[i : i + 1], densities[i : i + 1], grid) for i in range(2)]
    torch.testing.assert_close(cut, torch.where(inside_voxels, alone[0], alone[1]))
    assert float(alone[0][~inside_voxels].max()) > 0.1 and float(alone[1][inside_voxels].max()) > 0.1
