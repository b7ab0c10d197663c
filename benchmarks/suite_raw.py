"""The suite's raw-intensity cases (issue 29, real-world inputs): what a C-arm's panel records.

A specimen's views become raw detector signals by the engine's radiograph simulator
(``standardize.radiograph``): each 0.5 mm voxel split into water and cortical bone
(``standardize.spectrum.decompose_hu``), both projected by RTK's Joseph projector, then a SpekPy
spectrum's polychromatic transmission (beam hardening), scatter from the attenuated photons,
Poisson counts, detector blur and electronic noise, with the settings ``RAW_VIEW``. The scan is
``image_kind: intensity`` with no ``i0``: the engine estimates the air signal from the brightest
pixels, as for a panel without a flat-field record.

The truth is the attenuation at the spectrum's **effective energy** (``effective_kev``): the energy
whose monoenergetic line integrals fit the noise-free polychromatic ``-log`` of the views best (least
squares), so the raw case is not charged for the energy the engine cannot know. Its twin
``REGION-mono-VIEWS`` holds the same views as exact line integrals at that energy: the issue's
"same views given as line integrals", against the same truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ixgs_engine.phantoms.attenuation import attenuation_to_hu
from ixgs_engine.projector.rtk_bridge import rtk_forward_project
from ixgs_engine.standardize.radiograph import RadiographParams, polychromatic_transmission, simulate_radiograph
from ixgs_engine.standardize.spectrum import BONE, WATER, decompose_hu, mass_attenuation_curve, tube_spectrum
from ixgs_engine.volume import Volume

# A fluoroscopy-grade exposure through a specimen: 80 kVp behind 3 mm Al, 3000 photons per pixel
# (median, the 1.6 mm pixels of the suite's panel), scatter of 10 % of the attenuated photons over
# ~50 mm, 0.6 px of scintillator blur, 2 photons of electronic noise; no display processing.
RAW_VIEW = RadiographParams(
    kvp=80.0,
    aluminium_mm=3.0,
    exposure=3000.0,
    electronic_noise=2.0,
    scatter_fraction=0.1,
    scatter_sigma_px=30.0,
    blur_sigma_px=0.6,
)
RAW_SEED = 29


@dataclass(frozen=True)
class RawViews:
    """A raw case's views: the detector signals (V, H, W, photons), the effective energy (keV),
    the same views as line integrals at it, and the true air signal (photons, for the record)."""

    signals: np.ndarray
    effective_kev: float
    line_integrals: np.ndarray
    air_signal: float


def densities(specimen: Volume) -> tuple[Volume, Volume]:
    """Water and cortical-bone densities (g/cm³) of an attenuation volume (1/mm, at 70 keV)."""
    water, bone = decompose_hu(attenuation_to_hu(np.asarray(specimen.array, dtype=np.float32)))
    return specimen.with_array(water), specimen.with_array(bone)


def attenuation_at(water: np.ndarray, bone: np.ndarray, kev: float) -> np.ndarray:
    """Attenuation (1/mm) or line integrals of water and bone densities (or their line integrals) at ``kev``."""
    mu_water, mu_bone = (float(mass_attenuation_curve(m, np.array([kev]))[0]) / 10.0 for m in (WATER, BONE))
    return (mu_water * np.asarray(water) + mu_bone * np.asarray(bone)).astype(np.float32)


def effective_kev(water: np.ndarray, bone: np.ndarray, params: RadiographParams) -> float:
    """The spectrum's energy (1 keV steps) whose monoenergetic line integrals come closest (least
    squares over every pixel) to the noise-free polychromatic ``-log`` of the energy signal."""
    _, energy = polychromatic_transmission(water, bone, params.kvp, params.aluminium_mm, params.copper_mm)
    measured = -np.log(np.maximum(energy, 1e-12))
    spectrum = tube_spectrum(params.kvp, params.aluminium_mm, params.copper_mm)
    candidates = np.arange(np.ceil(spectrum.energies_kev.min()), np.floor(spectrum.energies_kev.max()) + 1)
    errors = [float(np.sum((attenuation_at(water, bone, kev) - measured) ** 2)) for kev in candidates]
    return float(candidates[int(np.argmin(errors))])


def raw_views(fine_densities: tuple[Volume, Volume], matrices: np.ndarray, shape: tuple[int, int]) -> RawViews:
    """The raw detector signals of the views of a specimen's water and bone densities
    (``densities``; see the module), their effective energy and the same views as line integrals at it."""
    water, bone = (rtk_forward_project(part, matrices, shape) for part in fine_densities)
    kev = effective_kev(water, bone, RAW_VIEW)
    rng = np.random.default_rng(RAW_SEED)
    simulated = [simulate_radiograph(w, b, RAW_VIEW, rng) for w, b in zip(water, bone, strict=True)]
    signals = np.stack([view.signal for view in simulated]).astype(np.float32)
    air = float(np.median([view.air_signal for view in simulated]))
    return RawViews(signals, kev, attenuation_at(water, bone, kev), air)


def truth_at(truth_densities: tuple[Volume, Volume], kev: float) -> Volume:
    """The raw case's truth: the (1 mm) water and bone densities' attenuation at ``kev``."""
    water, bone = truth_densities
    return water.with_array(attenuation_at(water.array, bone.array, kev))
