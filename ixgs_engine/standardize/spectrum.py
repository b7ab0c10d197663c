"""X-ray spectra (SpekPy) and a two-material (water + cortical bone) description of a CT.

Tissue attenuation is energy dependent, and bone's more than water's: a polychromatic beam
hardens differently through bone than through soft tissue. We split each CT voxel into a
water-equivalent density and a cortical-bone density (``decompose_hu``), so one view needs two
line integrals (g/cm^3 x mm) and any spectrum's transmission follows from them.

- Spectra: SpekPy (G. Poludniowski et al., "SpekPy v2.0 - a software toolkit for modeling
  x-ray tube spectra", Med. Phys. 48 (2021) 3630), tungsten anode, 12 deg target, aluminium
  (+ optional copper) filtration, photons per keV per cm^2 at 1 m.
- Mass attenuation coefficients (cm^2/g, total with coherent scattering): xraylib
  (T. Schoonjans et al., Spectrochim. Acta B 66 (2011) 776), NIST compounds "Water, Liquid"
  and "Bone, Cortical (ICRP)" (density 1.85 g/cm^3).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from ixgs_engine.errors import IXGSError

WATER = "Water, Liquid"
BONE = "Bone, Cortical (ICRP)"
BONE_DENSITY_G_PER_CM3 = 1.85
REFERENCE_KEV = 70.0  # the effective energy at which the engine converts HU to attenuation
ANODE_ANGLE_DEG = 12.0
SPECTRUM_BIN_KEV = 2.0


def _xraylib():
    try:
        import xraylib
    except ImportError:  # pragma: no cover - depends on the installation
        raise IXGSError("the radiograph simulator needs xraylib: pip install xraylib") from None
    return xraylib


@cache
def mass_attenuation(material: str, kev: float) -> float:
    """mu/rho (cm^2/g) of a NIST compound at one energy (xraylib)."""
    return float(_xraylib().CS_Total_CP(material, float(kev)))


def mass_attenuation_curve(material: str, energies_kev: np.ndarray) -> np.ndarray:
    """mu/rho (cm^2/g) at each energy."""
    return np.array([mass_attenuation(material, round(float(e), 3)) for e in energies_kev])


def bone_hu() -> float:
    """CT number of cortical bone at the reference energy: 1000 (mu_bone / mu_water - 1)."""
    mu_bone = mass_attenuation(BONE, REFERENCE_KEV) * BONE_DENSITY_G_PER_CM3
    return 1000.0 * (mu_bone / mass_attenuation(WATER, REFERENCE_KEV) - 1.0)


def decompose_hu(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Water and cortical-bone densities (g/cm^3) of each voxel.

    Below 0 HU a voxel is water at density 1 + HU/1000 (air 0, fat 0.9). From 0 HU to
    cortical bone's CT number it is a volume mixture of water and bone with bone fraction
    HU / HU_bone; above that, bone denser than nominal. At the reference energy the mixture's
    attenuation reproduces the voxel's HU exactly (linear in HU)."""
    hu = np.asarray(hu, dtype=np.float32)
    top = np.float32(bone_hu())
    fraction = np.clip(hu / top, 0.0, 1.0)
    overdense = np.maximum(hu - top, 0.0) / (1000.0 + top)
    water = np.where(hu < 0, np.maximum(1.0 + hu / 1000.0, 0.0), 1.0 - fraction)
    bone = BONE_DENSITY_G_PER_CM3 * (fraction + overdense)
    return water.astype(np.float32), bone.astype(np.float32)


@dataclass(frozen=True)
class Spectrum:
    """Photon fluence per energy bin (arbitrary scale) of a filtered tube output."""

    energies_kev: np.ndarray
    fluence: np.ndarray

    @property
    def mean_kev(self) -> float:
        return float(np.sum(self.energies_kev * self.fluence) / np.sum(self.fluence))


@lru_cache(maxsize=64)
def _spekpy_spectrum(kvp: float, aluminium_mm: float, copper_mm: float) -> Spectrum:
    try:
        import spekpy
    except ImportError:  # pragma: no cover - depends on the installation
        raise IXGSError("the radiograph simulator needs SpekPy: pip install spekpy") from None
    spek = spekpy.Spek(kvp=kvp, th=ANODE_ANGLE_DEG, dk=SPECTRUM_BIN_KEV)
    spek.filter("Al", aluminium_mm)
    if copper_mm > 0:
        spek.filter("Cu", copper_mm)
    energies, fluence = spek.get_spectrum()
    keep = fluence > fluence.max() * 1e-4
    return Spectrum(np.asarray(energies[keep], dtype=np.float64), np.asarray(fluence[keep], dtype=np.float64))


def tube_spectrum(kvp: float, aluminium_mm: float, copper_mm: float = 0.0) -> Spectrum:
    """SpekPy spectrum, with kVp rounded to 1 kV and filters to 0.1 mm so spectra are cached."""
    if not 40.0 <= kvp <= 150.0:
        raise ValueError(f"tube voltage must be 40-150 kVp, got {kvp}")
    return _spekpy_spectrum(float(round(kvp)), round(float(aluminium_mm), 1), round(float(copper_mm), 1))
