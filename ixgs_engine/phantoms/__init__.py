"""Procedural sample volumes made in code (no downloads), in Hounsfield units.

Each is centred on the world origin (LPS mm, identity direction) with air around the object
on every side, so projections of the whole object fit inside the volume.
"""

from __future__ import annotations

from collections.abc import Sequence

from ixgs_engine.phantoms.attenuation import (
    MU_WATER_70KEV,
    WATER_MASS_ATTENUATION_CM2_PER_G,
    attenuation_to_hu,
    hu_to_attenuation,
    water_attenuation_per_mm,
)
from ixgs_engine.phantoms.shepp_logan import Ellipsoid, shepp_logan_3d, shepp_logan_ellipsoids
from ixgs_engine.phantoms.spine import spine_landmarks, spine_phantom
from ixgs_engine.volume import Volume

SAMPLE_SEED = 0  # sample spines are reproducible


def _sample_spine(shape: tuple[int, int, int], spacing_mm: float | Sequence[float]) -> Volume:
    return spine_phantom(shape, spacing_mm, seed=SAMPLE_SEED)


PHANTOMS = {"spine": _sample_spine, "shepp-logan": shepp_logan_3d}


def make_phantom(
    name: str, shape: tuple[int, int, int] = (128, 128, 128), spacing_mm: float | Sequence[float] = 1.5
) -> Volume:
    """The named sample volume (HU) on a centred grid of ``shape`` (nz, ny, nx)."""
    try:
        build = PHANTOMS[name]
    except KeyError:
        raise ValueError(f"unknown phantom {name!r}; valid names: {', '.join(sorted(PHANTOMS))}") from None
    return build(shape, spacing_mm)


__all__ = [
    "MU_WATER_70KEV",
    "PHANTOMS",
    "WATER_MASS_ATTENUATION_CM2_PER_G",
    "Ellipsoid",
    "attenuation_to_hu",
    "hu_to_attenuation",
    "make_phantom",
    "shepp_logan_3d",
    "shepp_logan_ellipsoids",
    "spine_landmarks",
    "spine_phantom",
    "water_attenuation_per_mm",
]
