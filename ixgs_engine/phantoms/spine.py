"""A procedural lumbar spine in a soft-tissue torso, in Hounsfield units.

The anatomy is modelled in millimetres of a reference field of view (192 x 192 x 150 mm,
x, y, z) and scaled uniformly to fit the requested grid, so any grid size holds the whole
torso. World axes are patient LPS: +x left, +y posterior, +z superior; the volume is centred
on the world origin. Three vertebrae (L4, L3, L2 from inferior to superior) with discs between
and beyond them sit in the posterior half of an elliptic torso (fat layer, soft tissue, psoas
and erector spinae muscles) that ends 5 % inside the z faces and keeps >= 8 % air on each
x and y side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from ixgs_engine.phantoms._shapes import (
    Canvas,
    Region,
    centred_geometry,
    ellipsoid_sdf,
    rotation_x,
    rotation_z,
    rounded_box_sdf,
    smooth_union,
    to_local,
)
from ixgs_engine.volume import Volume

# Tissue values (HU).
HU_AIR = -1000.0
HU_FAT = -100.0
HU_SOFT_TISSUE = 40.0
HU_MUSCLE = 55.0
HU_CSF = 15.0
HU_DISC = 80.0
HU_CORTICAL = 1300.0
HU_TRABECULAR = 225.0  # mean; the texture spreads it over (150, 300)
TRABECULAR_SPREAD = 75.0

# Model geometry, mm at the reference field of view (scale 1).
REFERENCE_FOV_MM = np.array([192.0, 192.0, 150.0])
TORSO_SEMI_AXES = (76.0, 64.0)
FAT_THICKNESS = 7.0
TORSO_END_FRACTION = 0.45  # torso half length as a fraction of the z field of view
VERTEBRAE = {"L4": -35.0, "L3": 0.0, "L2": 35.0}  # body centre z
BODY_Y = -8.0  # vertebral body centre y
BODY_SEMI_AXES = (22.0, 15.5)
BODY_HALF_HEIGHT = 13.0
BODY_POSTERIOR_WALL = 13.0  # flat posterior wall, from the body centre
BODY_WAIST = 0.06  # relative narrowing at mid-height
ENDPLATE_CUP = 1.2  # depth of the concave endplates
CORTEX = 1.5
JOINT_BLEND = 2.0  # fillet size where posterior elements meet
DISC_BULGE = 1.03
CANAL_CENTRE_Y = 21.0  # from the body centre
CANAL_SEMI_AXES = (10.5, 7.5)
SPINE_HALF_LENGTH = 57.0  # top of L2's superior articular processes / end discs
PSOAS = ((36.0, -6.0), (12.0, 11.0))  # left centre (x, y), semi-axes
ERECTOR = ((22.0, 36.0), (15.0, 13.0))
TRABECULAR_GRAIN = (0.6, 1.8)  # band-pass noise scales (sigma)


@dataclass(frozen=True)
class _Block:
    """A rounded box of a vertebra, placed relative to the body centre; ``paired`` ones also get
    a mirror image on the right (-x). ``yaw`` turns it about z, then ``pitch`` about x (degrees)."""

    centre: tuple[float, float, float]
    half_size: tuple[float, float, float]
    rounding: float
    yaw: float = 0.0
    pitch: float = 0.0
    paired: bool = True


POSTERIOR_ELEMENTS = {
    "pedicle": _Block((14.0, 18.0, 3.0), (4.5, 7.0, 7.0), 4.0, yaw=-12.0),
    "lamina": _Block((7.0, 29.0, 0.0), (9.0, 2.6, 9.0), 2.0, yaw=-29.7),
    "transverse_process": _Block((29.0, 21.0, 2.0), (13.0, 3.2, 4.5), 3.0, yaw=10.0),
    "superior_articular_process": _Block((15.5, 29.0, 13.0), (3.2, 5.0, 8.0), 2.5),
    "inferior_articular_process": _Block((9.5, 33.0, -14.0), (2.6, 4.5, 8.0), 2.0),
    "spinous_process": _Block((0.0, 44.0, -3.0), (3.0, 12.0, 8.0), 2.5, pitch=-12.0, paired=False),
}


def _model_scale(geometry: Volume) -> float:
    """mm per model millimetre: the largest uniform scale at which the model fits the grid."""
    return float(np.min(geometry.extent() / REFERENCE_FOV_MM))


def _torso_half_length(geometry: Volume, scale: float) -> float:
    """Model-unit z half length of the torso: it ends 5 % inside the z faces."""
    return TORSO_END_FRACTION * float(geometry.extent()[2]) / scale


def _blocks() -> list[_Block]:
    """Every posterior-element block of one vertebra, mirrored pairs included."""
    blocks = []
    for block in POSTERIOR_ELEMENTS.values():
        blocks.append(block)
        if block.paired:
            x, y, z = block.centre
            blocks.append(_Block((-x, y, z), block.half_size, block.rounding, -block.yaw, block.pitch))
    return blocks


def _body_footprint(x: np.ndarray, y: np.ndarray, widen: np.ndarray | float) -> np.ndarray:
    """Axial outline of a vertebral body (ellipse with a flat posterior wall), scaled by ``widen``."""
    semi = [a * widen for a in BODY_SEMI_AXES]
    return np.maximum(ellipsoid_sdf([x, y - BODY_Y], semi), y - BODY_Y - BODY_POSTERIOR_WALL * widen)


def _vertebra_sdf(region: Region, z_centre: float) -> np.ndarray:
    """Signed distance to one vertebra: waisted body with concave endplates and posterior arch."""
    x, y, z = region.x, region.y, region.z - z_centre
    waist = 1.0 - BODY_WAIST * (1.0 - np.clip(z / BODY_HALF_HEIGHT, -1.0, 1.0) ** 2)
    radial = (x / BODY_SEMI_AXES[0]) ** 2 + ((y - BODY_Y) / BODY_SEMI_AXES[1]) ** 2
    endplates = np.abs(z) - (BODY_HALF_HEIGHT - ENDPLATE_CUP * (1.0 - np.clip(radial, 0.0, 1.0)))
    parts = [np.maximum(_body_footprint(x, y, waist), endplates)]
    for block in _blocks():
        axes = rotation_z(block.yaw) @ rotation_x(block.pitch)
        cx, cy, cz = block.centre
        local = to_local(x, y, z, (cx, BODY_Y + cy, cz), axes)
        parts.append(rounded_box_sdf(local, block.half_size, block.rounding))
    return smooth_union(parts, JOINT_BLEND)


def _trabecular_texture(shape: tuple[int, ...], voxel_in_model: np.ndarray, seed: int | None) -> np.ndarray:
    """Band-pass filtered noise mapped to trabecular HU in (150, 300); deterministic per seed."""
    noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    fine, coarse = (gaussian_filter(noise, sigma / voxel_in_model) for sigma in TRABECULAR_GRAIN)
    band = fine - coarse
    band /= max(float(band.std()), 1e-6)
    return HU_TRABECULAR + TRABECULAR_SPREAD * np.tanh(1.5 * band)


def _elliptic_column(region: Region, centre: Sequence[float], semi_axes: Sequence[float]) -> np.ndarray:
    """Signed distance to an infinite elliptic cylinder along z."""
    return ellipsoid_sdf([region.x - centre[0], region.y - centre[1]], semi_axes)


def _paint_torso(canvas: Canvas, half_length: float) -> None:
    """Fat-lined torso (cut flat at both ends) with psoas and erector spinae muscle pairs."""
    region = canvas.everywhere()
    ends = np.abs(region.z) - half_length
    outline = _elliptic_column(region, (0.0, 0.0), TORSO_SEMI_AXES)
    canvas.paint(region, np.maximum(outline, ends), HU_FAT)
    inner = np.maximum(outline + FAT_THICKNESS, ends)
    canvas.paint(region, inner, HU_SOFT_TISSUE)
    for (x, y), semi in (PSOAS, ERECTOR):
        pair = np.minimum(_elliptic_column(region, (x, y), semi), _elliptic_column(region, (-x, y), semi))
        canvas.paint(region, np.maximum(pair, inner), HU_MUSCLE)


def _paint_spine(canvas: Canvas, seed: int | None) -> None:
    """Spinal canal, discs and the three vertebrae (cortex over a textured trabecular core)."""
    column = canvas.region((-60.0, -30.0, -SPINE_HALF_LENGTH), (60.0, 70.0, SPINE_HALF_LENGTH))
    along_z = np.abs(column.z) - SPINE_HALF_LENGTH
    canal = _elliptic_column(column, (0.0, BODY_Y + CANAL_CENTRE_Y), CANAL_SEMI_AXES)
    canvas.paint(column, np.maximum(canal, along_z), HU_CSF)

    pitch = VERTEBRAE["L3"] - VERTEBRAE["L4"]
    disc_levels = [z + pitch / 2.0 for z in VERTEBRAE.values()] + [min(VERTEBRAE.values()) - pitch / 2.0]
    disc_half_height = (pitch / 2.0 - BODY_HALF_HEIGHT) + ENDPLATE_CUP + 0.5
    footprint = _body_footprint(column.x, column.y, DISC_BULGE)
    for level in disc_levels:
        disc = np.maximum(footprint, np.maximum(np.abs(column.z - level) - disc_half_height, along_z))
        canvas.paint(column, disc, HU_DISC)

    texture = _trabecular_texture(canvas.values[column.slices].shape, canvas.voxel_size_zyx(), seed)
    for z_centre in VERTEBRAE.values():
        bone = _vertebra_sdf(column, z_centre)
        canvas.paint(column, bone, HU_CORTICAL)
        canvas.paint(column, bone + CORTEX, texture)


def spine_phantom(
    shape: tuple[int, int, int] = (128, 128, 128),
    spacing_mm: float | Sequence[float] = 1.5,
    seed: int | None = None,
) -> Volume:
    """A lumbar spine CT-like volume (HU, float32) of ``shape`` (nz, ny, nx).

    ``spacing_mm`` is one number or (sx, sy, sz). ``seed`` drives the trabecular texture only;
    None draws fresh randomness, an integer makes the volume reproducible.
    """
    geometry = centred_geometry(shape, spacing_mm)
    scale = _model_scale(geometry)
    canvas = Canvas(geometry, scale, HU_AIR)
    _paint_torso(canvas, _torso_half_length(geometry, scale))
    _paint_spine(canvas, seed)
    return canvas.volume()


def spine_landmarks(
    shape: tuple[int, int, int] = (128, 128, 128), spacing_mm: float | Sequence[float] = 1.5
) -> dict[str, np.ndarray]:
    """World positions (LPS mm) of named points inside :func:`spine_phantom` of the same grid.

    Useful to check tissue values, orientation and realignment without hard-coding geometry.
    """
    geometry = centred_geometry(shape, spacing_mm)
    scale = _model_scale(geometry)
    mid = VERTEBRAE["L3"]
    elements = POSTERIOR_ELEMENTS
    model_points = {
        "L3_body": (0.0, BODY_Y, mid),
        "L3_anterior_cortex": (0.0, BODY_Y - BODY_SEMI_AXES[1] * (1.0 - BODY_WAIST) + CORTEX / 2.0, mid),
        "L2_L3_disc": (0.0, BODY_Y, (VERTEBRAE["L2"] + mid) / 2.0),
        "L3_L4_disc": (0.0, BODY_Y, (VERTEBRAE["L4"] + mid) / 2.0),
        "L3_left_pedicle": np.add(elements["pedicle"].centre, (0.0, BODY_Y, mid)),
        "L3_right_pedicle": np.add(elements["pedicle"].centre, (0.0, BODY_Y, mid)) * (-1.0, 1.0, 1.0),
        "L3_left_transverse_process": np.add(elements["transverse_process"].centre, (0.0, BODY_Y, mid)),
        "L3_spinous_process": np.add(elements["spinous_process"].centre, (0.0, BODY_Y, mid)),
        "spinal_canal": (0.0, BODY_Y + CANAL_CENTRE_Y, mid),
        "left_psoas": (*PSOAS[0], mid),
        "soft_tissue": (0.0, (BODY_Y - BODY_SEMI_AXES[1] - TORSO_SEMI_AXES[1] + FAT_THICKNESS) / 2.0, mid),
        "subcutaneous_fat": (0.0, -TORSO_SEMI_AXES[1] + FAT_THICKNESS / 2.0, mid),
    }
    return {name: np.asarray(point, dtype=np.float64) * scale for name, point in model_points.items()}
