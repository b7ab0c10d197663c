"""Joseph projector: agreement with RTK's, exact adjoint, autograd; SART against RTK's SART,
and with a shell around the volume solved alongside; ASD-POCS on RTK's SART; the RTK geometry bridge."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from ixgs_engine.classical.rtk import rtk_asd_pocs, rtk_sart
from ixgs_engine.classical.sart import Shell, sart
from ixgs_engine.errors import GeometryError
from ixgs_engine.evaluate.metrics import psnr_3d
from ixgs_engine.geometry.carm import Detector, carm_projection_matrix, circular_orbit
from ixgs_engine.geometry.projection import normalize_projection_matrix
from ixgs_engine.geometry.roi import ROI, grown_grid
from ixgs_engine.phantoms import hu_to_attenuation, make_phantom
from ixgs_engine.projector.joseph import JosephProjector
from ixgs_engine.projector.rtk_bridge import (
    INSTALL_HINT,
    matrices_from_rtk,
    rtk_forward_project,
    rtk_geometry,
)
from ixgs_engine.volume import Volume, VolumeGrid

# ITK's SWIG modules warn on import under Python >= 3.11; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")

SID, SDD = 700.0, 1100.0
IMAGE_SHAPE = (64, 72)  # (H, W): not square, so a u/v mix-up shows
PIXEL_MM = 7.0
DETECTOR = Detector((IMAGE_SHAPE[1], IMAGE_SHAPE[0]), (PIXEL_MM, PIXEL_MM))
OFFSET_DETECTOR = Detector(DETECTOR.pixels, DETECTOR.pixel_spacing, offset=(90.0, -60.0))
CARM_POSES = [(30.0, 20.0), (-65.0, -25.0), (120.0, 10.0), (-150.0, 35.0)]  # (primary, secondary) degrees
RELATIVE_L2_TOLERANCE = 0.01
SART_ITERATIONS = 5
SART_RELAXATION = 0.3


def flip_u(matrices: np.ndarray) -> np.ndarray:
    """The same views stored with the columns reversed: mirrored <-> non-mirrored detector."""
    width = IMAGE_SHAPE[1]
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ matrices


def carm_views(poses: list[tuple[float, float]], detector: Detector = DETECTOR) -> np.ndarray:
    return np.stack([carm_projection_matrix(a, b, SID, SDD, detector) for a, b in poses])


def rotated_about_centre(volume: Volume, rotation: np.ndarray) -> Volume:
    """The same voxels with an oblique direction matrix, keeping the volume's centre."""
    half = volume.spacing * (np.array(volume.size_ijk) - 1.0) / 2.0
    return Volume(volume.array, volume.center() - rotation @ half, volume.spacing, rotation)


GEOMETRIES: dict[str, Callable[[], np.ndarray]] = {
    "circular": lambda: np.stack(circular_orbit(np.arange(8) * 45.0 + 7.0, SID, SDD, DETECTOR)),
    "carm-mirrored": lambda: carm_views(CARM_POSES),
    "carm-unmirrored": lambda: flip_u(carm_views(CARM_POSES)),
    "offset-detector": lambda: carm_views(CARM_POSES, OFFSET_DETECTOR),
}


@pytest.fixture(scope="module")
def spine() -> Volume:
    """Small spine phantom in attenuation (1/mm), air around it, non-cubic grid."""
    return hu_to_attenuation(make_phantom("spine", (44, 48, 52), 4.0))


def ours_forward(volume: Volume, matrices: np.ndarray) -> np.ndarray:
    projector = JosephProjector(volume.grid, matrices, IMAGE_SHAPE)
    return projector.forward(torch.from_numpy(volume.array)).numpy()


def relative_l2(value: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


@pytest.mark.parametrize("name", GEOMETRIES)
def test_rtk_geometry_reproduces_our_matrices(rtk_available, name):
    matrices = GEOMETRIES[name]()
    geometry, spacing = rtk_geometry(matrices, u_spacing=PIXEL_MM)
    expected = np.stack([normalize_projection_matrix(P) for P in matrices])
    atol = 1e-9 * np.abs(expected).max()
    np.testing.assert_allclose(matrices_from_rtk(geometry, spacing), expected, rtol=0, atol=atol)
    # With the true pixel pitch the detector is the true panel (RTK signs it by mirroring).
    np.testing.assert_allclose(np.abs(geometry.GetSourceToDetectorDistances()), SDD, rtol=1e-9)
    assert spacing == pytest.approx((PIXEL_MM, PIXEL_MM), rel=1e-9)


@pytest.mark.parametrize("name", [*GEOMETRIES, "oblique-volume"])
def test_joseph_matches_rtk(rtk_available, spine, name):
    if name == "oblique-volume":
        volume = rotated_about_centre(spine, Rotation.random(random_state=3).as_matrix())
        matrices = carm_views(CARM_POSES)
    else:
        volume, matrices = spine, GEOMETRIES[name]()
    reference = rtk_forward_project(volume, matrices, IMAGE_SHAPE)
    assert reference.shape == (len(matrices), *IMAGE_SHAPE) and reference.max() > 1.0
    assert relative_l2(ours_forward(volume, matrices), reference) <= RELATIVE_L2_TOLERANCE


BORDER_TOLERANCE = 1e-4


@pytest.mark.parametrize("name", ["carm-mirrored", "carm-unmirrored", "oblique-volume"])
def test_joseph_matches_rtk_where_tissue_reaches_the_faces(rtk_available, name):
    """A specimen-like volume, non-zero on every face of its box: RTK's Joseph projector cuts
    rays at the outermost voxel centres and holds the border voxels' values there; ours must
    give the same line integrals, not only on phantoms with an empty border."""
    values = np.random.default_rng(7).uniform(0.005, 0.03, (20, 22, 24)).astype(np.float32)
    volume = Volume(values, np.array([-40.0, -44.0, -48.0]), np.full(3, 4.0), np.eye(3))
    matrices = carm_views(CARM_POSES)
    if name == "carm-unmirrored":
        matrices = flip_u(matrices)
    elif name == "oblique-volume":
        volume = rotated_about_centre(volume, Rotation.random(random_state=3).as_matrix())
    reference = rtk_forward_project(volume, matrices, IMAGE_SHAPE)
    assert (reference > 0).mean() > 0.1  # the box is in view
    assert relative_l2(ours_forward(volume, matrices), reference) <= BORDER_TOLERANCE


SQUARE_PIXELS = np.array([[1000.0, 0.0, 32.0, 0.0], [0.0, 1000.0, 32.0, 0.0], [0.0, 0.0, 1.0, 700.0]])


@pytest.mark.parametrize(
    "other",
    [SQUARE_PIXELS + [[0, 200.0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], SQUARE_PIXELS * [[2.0], [1.0], [1.0]]],
    ids=["skewed", "other-aspect"],
)
def test_rtk_geometry_rejects_what_rtk_cannot_represent(rtk_available, other):
    with pytest.raises(GeometryError):
        rtk_geometry([SQUARE_PIXELS, other])


def test_rtk_bridge_says_how_to_install_rtk(monkeypatch):
    monkeypatch.setitem(sys.modules, "itk", None)
    with pytest.raises(ImportError, match=re.escape(INSTALL_HINT)):
        rtk_geometry(carm_views(CARM_POSES[:1]))


@pytest.fixture(scope="module")
def random_problem() -> tuple[JosephProjector, torch.Tensor, torch.Tensor]:
    """float64 projector on an oblique, anisotropic grid seen by a mirrored, a non-mirrored
    and an off-centre view, with random x (volume) and y (projections)."""
    rng = np.random.default_rng(7)
    direction = Rotation.random(random_state=rng).as_matrix()
    grid = VolumeGrid((20, 24, 28), rng.uniform(-30, -20, 3), (2.0, 1.7, 2.3), direction)
    mirrored = carm_views([(rng.uniform(-90, 90), rng.uniform(-30, 30))])
    off_centre = carm_views([(rng.uniform(-90, 90), rng.uniform(-30, 30))], OFFSET_DETECTOR)
    non_mirrored = flip_u(carm_views([(rng.uniform(-90, 90), rng.uniform(-30, 30))]))
    matrices = np.concatenate([mirrored, off_centre, non_mirrored])
    projector = JosephProjector(grid, matrices, IMAGE_SHAPE, dtype=torch.float64)
    x = torch.from_numpy(rng.uniform(size=grid.shape))
    y = torch.from_numpy(rng.normal(size=(len(matrices), *IMAGE_SHAPE)))
    return projector, x, y


def test_adjoint_is_the_transpose(random_problem):
    projector, x, y = random_problem
    projected = projector.forward(x)
    assert bool((projected.amax(dim=(1, 2)) > 1.0).all())  # every view sees the volume
    lhs = float(torch.sum(projected * y))
    rhs = float(torch.sum(x * projector.adjoint(y)))
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)


def test_forward_gradient_is_the_adjoint(random_problem):
    projector, x, w = random_problem
    leaf = x.clone().requires_grad_(True)
    torch.sum(w * projector.forward(leaf)).backward()
    torch.testing.assert_close(leaf.grad, projector.adjoint(w), rtol=1e-10, atol=1e-12)


def test_sart_matches_rtk_sart(rtk_available, spine):
    """25 arbitrary C-arm poses (varying isocentre and distances), simulated by RTK."""
    rng = np.random.default_rng(11)
    matrices = np.stack(
        [
            carm_projection_matrix(
                primary_deg=rng.uniform(-100, 100),
                secondary_deg=rng.uniform(-35, 35),
                source_to_isocenter=SID,
                source_to_detector=rng.uniform(1000, 1200),
                detector=DETECTOR,
                isocenter=rng.uniform(-8, 8, 3),
            )
            for _ in range(25)
        ]
    )
    projections = rtk_forward_project(spine, matrices, IMAGE_SHAPE)
    options = dict(iterations=SART_ITERATIONS, relaxation=SART_RELAXATION, views_per_subset=1, positivity=True)
    ours = psnr_3d(sart(projections, matrices, spine.grid, **options), spine)
    reference = psnr_3d(rtk_sart(projections, matrices, spine.grid, **options), spine)
    assert reference > 20.0  # RTK reconstructs: the comparison means something
    assert ours >= reference - 1.0


def test_rtk_asd_pocs_is_rtk_sart_passes_each_followed_by_tv_steps_that_help_sparse_views(rtk_available, spine):
    """Passes without TV are RTK's SART of as many iterations, bit for bit, and a run started from
    another's volume goes on where it stopped; from 10 views the TV steps between the passes score
    better than the same passes without them (fewer streaks)."""
    matrices = carm_views([(a, 10.0 * (-1) ** i) for i, a in enumerate(np.linspace(-90.0, 90.0, 10))])
    projections = rtk_forward_project(spine, matrices, IMAGE_SHAPE)
    passes = rtk_asd_pocs(projections, matrices, spine.grid, 3, relaxation=0.5, tv_steps=0)
    np.testing.assert_array_equal(passes.array, rtk_sart(projections, matrices, spine.grid, 3, relaxation=0.5).array)
    first = rtk_asd_pocs(projections, matrices, spine.grid, 1, relaxation=0.5, tv_steps=0)
    resumed = rtk_asd_pocs(projections, matrices, spine.grid, 2, relaxation=0.5, tv_steps=0, initial=first.array)
    np.testing.assert_allclose(resumed.array, passes.array, rtol=0, atol=1e-6 * float(passes.array.max()))
    seen = []
    regularized = rtk_asd_pocs(projections, matrices, spine.grid, 10, 0.5, after_pass=lambda v, n: seen.append(n))
    plain = rtk_asd_pocs(projections, matrices, spine.grid, 10, 0.5, tv_steps=0)
    assert seen == list(range(1, 11))
    assert float(regularized.array.min()) >= 0.0
    assert psnr_3d(regularized, spine) > psnr_3d(plain, spine) + 0.3


def test_sart_without_room_for_its_weights_gives_the_same_volume(random_problem, monkeypatch):
    """Past ``WEIGHT_CACHE_BYTES`` SART recomputes each view's voxel weights instead of holding
    one volume per view (the refinement on a fine output grid); the result is unchanged."""
    from ixgs_engine.classical import sart as sart_module

    projector, x, _ = random_problem
    views = projector.forward(x).numpy()
    cached = sart(views, projector.matrices, projector.grid, 2, initial=0.5 * x.numpy()).array
    monkeypatch.setattr(sart_module, "WEIGHT_CACHE_BYTES", 0)
    recomputed = sart(views, projector.matrices, projector.grid, 2, initial=0.5 * x.numpy()).array
    assert np.abs(cached - 0.5 * x.numpy()).max() > 0.01  # the passes changed the volume
    np.testing.assert_array_equal(recomputed, cached)


def test_a_shell_held_at_zero_everywhere_changes_nothing(random_problem):
    """A shell with no free voxel adds no ray length, no projection and no update: SART is
    plain SART, to the bit."""
    projector, x, _ = random_problem
    views = projector.forward(x).numpy()
    grid = projector.grid
    around = VolumeGrid((8, 8, 8), grid.origin - 20.0, grid.spacing * 6, grid.direction)
    held = Shell(around, np.full(around.shape, 0.3, np.float32), np.ones(around.shape, bool), passes=2)
    plain = sart(views, projector.matrices, grid, 2, initial=0.5 * x.numpy()).array
    shelled = sart(views, projector.matrices, grid, 2, initial=0.5 * x.numpy(), shell=held).array
    np.testing.assert_array_equal(shelled, plain)
    with pytest.raises(ValueError, match="shell's arrays"):
        Shell(around, np.zeros((2, 2, 2), np.float32), np.ones(around.shape, bool), passes=1)


@pytest.fixture(scope="module")
def truncated() -> tuple[Volume, Volume, np.ndarray, np.ndarray]:
    """A truncated patient: a spine box (the ROI) inside tissue on a coarse shell around it that
    carries most of each line integral; 16 C-arm views of both (the shell's voxels are the
    truth there, so the views are exact for a solver of both grids)."""
    roi_volume = hu_to_attenuation(make_phantom("spine", (24, 24, 24), 4.0))
    roi = ROI(roi_volume.center(), np.array(roi_volume.size_ijk) * roi_volume.spacing)
    grid = grown_grid(roi, 2.5, 6)
    held = roi.contains(grid.voxel_centres())
    rng = np.random.default_rng(12)
    tissue = np.where(held, 0.0, rng.uniform(0.015, 0.025, grid.shape)).astype(np.float32)
    around = Volume.on_grid(grid, tissue)
    rng = np.random.default_rng(13)
    matrices = carm_views([(rng.uniform(-100, 100), rng.uniform(-30, 30)) for _ in range(16)])
    views = ours_forward(roi_volume, matrices) + ours_forward(around, matrices)
    assert ours_forward(around, matrices).sum() > 0.5 * views.sum()  # most of what the views measure
    return roi_volume, around, views, matrices


def test_sart_with_a_shell_fits_the_tissue_around_the_volume_there_not_in_the_volume(truncated):
    """SART on the ROI alone piles the surroundings into the ROI (tens of times its mean); with
    the shell solved alongside, from zero or held after the first pass, the ROI comes out near
    the truth, and nearer still from a good start of the shell (the refinement's case: the
    Gaussians around the ROI)."""
    roi_volume, around, views, matrices = truncated
    held = around.array == 0
    zero = np.zeros(around.shape, np.float32)

    def run(shell: Shell | None) -> np.ndarray:
        return sart(views, matrices, roi_volume.grid, 6, relaxation=0.8, shell=shell).array

    def mean_ratio(volume: np.ndarray) -> float:
        return float(volume.mean() / roi_volume.array.mean())

    alone, solved = run(None), run(Shell(around.grid, zero, held, 6))
    held_after_one = run(Shell(around.grid, zero, held, 1))
    from_truth = run(Shell(around.grid, around.array, held, 1))
    assert mean_ratio(alone) > 10.0
    assert mean_ratio(solved) < 1.3 and mean_ratio(held_after_one) < 1.5
    assert abs(mean_ratio(from_truth) - 1.0) < 0.05
    assert psnr_3d(solved, roi_volume) > psnr_3d(alone, roi_volume) + 40.0
    assert psnr_3d(held_after_one, roi_volume) > psnr_3d(alone, roi_volume) + 40.0
    assert psnr_3d(from_truth, roi_volume) > psnr_3d(solved, roi_volume) + 3.0
