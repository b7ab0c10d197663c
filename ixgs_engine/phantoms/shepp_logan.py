"""The 3-D Shepp-Logan head phantom (modified, higher-contrast variant), in Hounsfield units.

Ellipsoid table: the widely used 10-ellipsoid 3-D extension of Shepp & Logan (1974) with the
"modified" intensities of Toft (1996, pp. 199-200), in phantom units where the head fits in
[-1, 1]^3. Each row: amplitude, semi-axes (a, b, c), centre (x0, y0, z0), ZXZ Euler angles
(phi, theta, psi) in degrees. Ellipsoids rotate about their own centres (the common
``phantom3d`` code also rotates the centres, which moves the two ventricles by < 0.03).

Placement: phantom +x is the patient's left, +y anterior (the small ellipsoids at y = -0.6 lie
posteriorly, as the 2-D phantom is usually displayed), +z superior; so world LPS is
(x, -y, z) times half of 90 % of the smallest field-of-view side, centred at the origin.

Intensities: phantom value v (0 outside, 1.0 skull, 0.2 brain, 0.0 ventricles, 0.3-0.4 small
features) maps to HU = 1200 v - 200 inside the skull and -1000 (air) outside: skull 1000 HU,
brain 40 HU, ventricles -200 HU (fat-like), features 160-280 HU. The map is affine, so in
attenuation the phantom stays a plain sum of uniform ellipsoids (see :func:`shepp_logan_ellipsoids`)
and its line integrals stay analytic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ixgs_engine.phantoms._shapes import Canvas, centred_geometry, ellipsoid_sdf, to_local
from ixgs_engine.volume import Volume

# amplitude, a, b, c, x0, y0, z0, phi, theta, psi
MODIFIED_SHEPP_LOGAN = np.array(
    [
        [1.0, 0.6900, 0.920, 0.810, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [-0.8, 0.6624, 0.874, 0.780, 0.0, -0.0184, 0.0, 0.0, 0.0, 0.0],
        [-0.2, 0.1100, 0.310, 0.220, 0.22, 0.0, 0.0, -18.0, 0.0, 10.0],
        [-0.2, 0.1600, 0.410, 0.280, -0.22, 0.0, 0.0, 18.0, 0.0, 10.0],
        [0.1, 0.2100, 0.250, 0.410, 0.0, 0.35, -0.15, 0.0, 0.0, 0.0],
        [0.1, 0.0460, 0.046, 0.050, 0.0, 0.1, 0.25, 0.0, 0.0, 0.0],
        [0.1, 0.0460, 0.046, 0.050, 0.0, -0.1, 0.25, 0.0, 0.0, 0.0],
        [0.1, 0.0460, 0.023, 0.050, -0.08, -0.605, 0.0, 0.0, 0.0, 0.0],
        [0.1, 0.0230, 0.023, 0.020, 0.0, -0.606, 0.0, 0.0, 0.0, 0.0],
        [0.1, 0.0230, 0.046, 0.020, 0.06, -0.605, 0.0, 0.0, 0.0, 0.0],
    ]
)
FOV_FRACTION = 0.9
HU_AIR = -1000.0
HU_PER_UNIT = 1200.0  # HU = HU_PER_UNIT * v + HU_AT_ZERO inside the skull
HU_AT_ZERO = -200.0
_PHANTOM_TO_LPS = np.diag([1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Ellipsoid:
    """A uniform ellipsoid in world LPS mm: the phantom is -1000 HU plus the sum of ``hu``
    over the ellipsoids containing a point. ``axes`` columns are its semi-axis directions."""

    centre: np.ndarray
    semi_axes: np.ndarray
    axes: np.ndarray
    hu: float

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned world box enclosing the ellipsoid."""
        half = np.sqrt(np.square(self.axes * self.semi_axes).sum(axis=1))
        return self.centre - half, self.centre + half


def _euler_zxz(phi: float, theta: float, psi: float) -> np.ndarray:
    """Passive ZXZ rotation (world to ellipsoid frame) from angles in degrees."""
    p, t, s = np.radians([phi, theta, psi])

    def about_z(a: float) -> np.ndarray:
        return np.array([[np.cos(a), np.sin(a), 0.0], [-np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])

    about_x = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), np.sin(t)], [0.0, -np.sin(t), np.cos(t)]])
    return about_z(s) @ about_x @ about_z(p)


def shepp_logan_ellipsoids(
    shape: tuple[int, int, int] = (128, 128, 128), spacing_mm: float | Sequence[float] = 1.5
) -> list[Ellipsoid]:
    """The phantom's ellipsoids placed in the world for a grid of ``shape`` (nz, ny, nx)."""
    geometry = centred_geometry(shape, spacing_mm)
    half_width = FOV_FRACTION * float(np.min(geometry.extent())) / 2.0
    ellipsoids = []
    for index, (amplitude, a, b, c, x0, y0, z0, phi, theta, psi) in enumerate(MODIFIED_SHEPP_LOGAN):
        hu = HU_PER_UNIT * amplitude + (HU_AT_ZERO - HU_AIR if index == 0 else 0.0)
        axes = _PHANTOM_TO_LPS @ _euler_zxz(phi, theta, psi).T
        centre = _PHANTOM_TO_LPS @ np.array([x0, y0, z0]) * half_width
        ellipsoids.append(Ellipsoid(centre, np.array([a, b, c]) * half_width, axes, float(hu)))
    return ellipsoids


def shepp_logan_3d(shape: tuple[int, int, int] = (128, 128, 128), spacing_mm: float | Sequence[float] = 1.5) -> Volume:
    """The modified 3-D Shepp-Logan head (HU, float32), partial-volume anti-aliased edges."""
    canvas = Canvas(centred_geometry(shape, spacing_mm), 1.0, HU_AIR)
    for ellipsoid in shepp_logan_ellipsoids(shape, spacing_mm):
        region = canvas.region(*ellipsoid.bounds())
        local = to_local(region.x, region.y, region.z, ellipsoid.centre, ellipsoid.axes)
        canvas.add(region, ellipsoid_sdf(local, ellipsoid.semi_axes), ellipsoid.hu)
    return canvas.volume()
