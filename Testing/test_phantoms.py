"""Procedural phantoms: tissue values, orientation, symmetry, margins and HU <-> attenuation."""

from __future__ import annotations

import numpy as np
import pytest

from ixgs_engine.phantoms import (
    MU_WATER_70KEV,
    attenuation_to_hu,
    hu_to_attenuation,
    make_phantom,
    shepp_logan_3d,
    shepp_logan_ellipsoids,
    spine_landmarks,
    spine_phantom,
    water_attenuation_per_mm,
)
from ixgs_engine.volume import Volume

SHAPES = [((32, 32, 32), 1.5), ((40, 56, 48), (1.0, 1.2, 2.0)), ((128, 128, 128), 1.5)]


@pytest.fixture(scope="module")
def spine() -> Volume:
    return spine_phantom(seed=0)


@pytest.fixture(scope="module")
def shepp() -> Volume:
    return shepp_logan_3d()


def value_at(volume: Volume, point: np.ndarray, neighbourhood: int = 0) -> np.ndarray:
    """Values of the voxel nearest to a world point and of its neighbours within ``neighbourhood``."""
    i, j, k = np.rint((volume.world_to_index_matrix() @ np.append(point, 1.0))[:3]).astype(int)
    n = neighbourhood
    return volume.array[k - n : k + n + 1, j - n : j + n + 1, i - n : i + n + 1]


def voxel_centres(volume: Volume) -> list[np.ndarray]:
    """World x, y, z of the voxel centres along each index axis (identity direction)."""
    return [volume.origin[a] + volume.spacing[a] * np.arange(n) for a, n in enumerate(volume.size_ijk)]


@pytest.mark.parametrize(
    ("landmark", "low", "high"),
    [
        ("L3_body", 100, 400),
        ("L2_L3_disc", 60, 100),
        ("L3_L4_disc", 60, 100),
        ("spinal_canal", 0, 30),
        ("left_psoas", 45, 65),
        ("soft_tissue", 30, 50),
        ("subcutaneous_fat", -120, -80),
    ],
)
def test_spine_soft_values_at_landmarks(spine: Volume, landmark: str, low: float, high: float) -> None:
    value = float(value_at(spine, spine_landmarks()[landmark]).item())
    assert low <= value <= high, f"{landmark}: {value} HU"


@pytest.mark.parametrize(
    "landmark", ["L3_left_pedicle", "L3_right_pedicle", "L3_left_transverse_process", "L3_spinous_process"]
)
def test_spine_bone_at_posterior_elements(spine: Volume, landmark: str) -> None:
    point = spine_landmarks()[landmark]
    assert float(value_at(spine, point).item()) > 150, "bone inside"
    assert value_at(spine, point, 3).max() > 700, "a cortex around it"


def test_cortical_shell_is_dense_and_core_is_not(spine: Volume) -> None:
    landmarks = spine_landmarks()
    assert value_at(spine, landmarks["L3_anterior_cortex"], 1).max() > 700
    core = value_at(spine, landmarks["L3_body"], 3)
    assert 100 < core.min() and core.max() < 400
    assert core.std() > 10, "the trabecular core should be textured, not flat"


def test_spine_is_posterior_and_air_surrounds_the_torso(spine: Volume) -> None:
    spinous = spine_landmarks()["L3_spinous_process"]
    anterior_mirror = spinous * (1.0, -1.0, 1.0)
    assert value_at(spine, spinous, 1).max() > 700
    assert abs(float(value_at(spine, anterior_mirror).item()) - 40.0) < 20
    nz, ny, nx = spine.array.shape
    assert np.all(spine.array[:: nz - 1, :: ny - 1, :: nx - 1] == -1000.0)


def test_spine_is_left_right_symmetric_apart_from_texture(spine: Volume) -> None:
    mirrored = spine.array[:, :, ::-1]
    difference = np.abs(spine.array - mirrored)
    soft = (spine.array < 100) & (mirrored < 100)
    assert difference[soft].max() < 1e-3
    assert difference.mean() < 2.0


def test_spine_texture_is_deterministic_per_seed() -> None:
    first, again, other = (spine_phantom((48, 48, 48), 4.0, seed=s).array for s in (7, 7, 8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    changed = first != other
    assert np.all(first[changed] > 100), "only the bone texture depends on the seed"


@pytest.mark.parametrize(("shape", "spacing"), SHAPES)
@pytest.mark.parametrize("build", [spine_phantom, shepp_logan_3d])
def test_object_keeps_an_air_margin(build, shape, spacing) -> None:
    volume = build(shape, spacing)
    assert volume.array.shape == shape and volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.center(), 0.0, atol=1e-9)
    np.testing.assert_allclose(volume.direction, np.eye(3))
    occupied = np.nonzero(volume.array > -900)
    extent, voxel = volume.extent(), volume.spacing
    for axis, centres in enumerate(voxel_centres(volume)):
        reach = np.abs(centres[occupied[2 - axis]]).max()
        margin = 0.08 if axis < 2 else 0.05  # x, y: >= 8 % air each side; z: ends 5 % inside
        assert reach <= (0.5 - margin) * extent[axis] + 0.5 * voxel[axis], (axis, reach, extent[axis])
        assert reach >= 0.25 * extent.min(), "the object should fill a good part of the field of view"


@pytest.mark.parametrize("shape", [(8, 8, 8), (16, 16, 16), (16, 24, 20)])
def test_small_grids_still_hold_the_whole_spine(shape) -> None:
    volume = spine_phantom(shape, 1.5, seed=0)
    assert np.all(np.isfinite(volume.array))
    assert volume.array.min() == -1000.0
    assert volume.array.max() > 100, "the spine should still show up"


def test_shepp_logan_values(shepp: Volume) -> None:
    ellipsoids = shepp_logan_ellipsoids()
    half_width = 0.45 * float(np.min(shepp.extent()))
    assert float(value_at(shepp, np.zeros(3)).item()) == pytest.approx(40.0)  # brain
    assert float(value_at(shepp, np.array([0.0, -0.89 * half_width, 0.0])).item()) == pytest.approx(1000.0)
    assert float(value_at(shepp, ellipsoids[2].centre).item()) == pytest.approx(-200.0)  # ventricle
    assert float(value_at(shepp, ellipsoids[4].centre).item()) == pytest.approx(160.0)  # anterior blob
    assert ellipsoids[4].centre[1] < 0, "the large blob is anterior (-y in LPS)"
    assert shepp.array[0, 0, 0] == -1000.0


def test_shepp_logan_partial_volume_preserves_ellipsoid_volumes(shepp: Volume) -> None:
    expected = sum(e.hu * 4.0 / 3.0 * np.pi * np.prod(e.semi_axes) for e in shepp_logan_ellipsoids())
    measured = float((shepp.array.astype(np.float64) + 1000.0).sum()) * np.prod(shepp.spacing)
    assert measured == pytest.approx(expected, rel=2e-3)


def test_make_phantom_names() -> None:
    grid = ((24, 24, 24), 2.0)
    np.testing.assert_array_equal(make_phantom("spine", *grid).array, spine_phantom(*grid, seed=0).array)
    np.testing.assert_array_equal(make_phantom("shepp-logan", *grid).array, shepp_logan_3d(*grid).array)
    with pytest.raises(ValueError, match="shepp-logan, spine"):
        make_phantom("knee", (24, 24, 24), 2.0)


def test_water_attenuation_table() -> None:
    assert water_attenuation_per_mm(60.0) == pytest.approx(0.02059)
    assert water_attenuation_per_mm(80.0) == pytest.approx(0.01837)
    assert MU_WATER_70KEV == pytest.approx(0.01937, abs=1e-5)
    assert water_attenuation_per_mm(60.0) > MU_WATER_70KEV > water_attenuation_per_mm(80.0)
    with pytest.raises(ValueError, match="keV"):
        water_attenuation_per_mm(20.0)


def test_hu_to_attenuation_known_values_and_round_trip() -> None:
    hu = np.array([-1200.0, -1000.0, -100.0, 0.0, 1000.0, 3000.0], dtype=np.float32)
    mu = hu_to_attenuation(hu)
    assert mu.dtype == np.float32
    np.testing.assert_allclose(mu, MU_WATER_70KEV * np.array([0.0, 0.0, 0.9, 1.0, 2.0, 4.0]), rtol=1e-6)
    np.testing.assert_allclose(attenuation_to_hu(mu)[1:], hu[1:], atol=1e-3)
    assert hu_to_attenuation(np.array([0.0]), mu_water_per_mm=0.02)[0] == pytest.approx(0.02)


def test_attenuation_of_a_volume_keeps_its_geometry() -> None:
    volume = shepp_logan_3d((16, 16, 16), 2.0)
    mu = hu_to_attenuation(volume)
    assert isinstance(mu, Volume)
    np.testing.assert_array_equal(mu.origin, volume.origin)
    np.testing.assert_array_equal(mu.spacing, volume.spacing)
    assert mu.array.min() == 0.0
    np.testing.assert_allclose(attenuation_to_hu(mu).array, volume.array, atol=1e-2)
