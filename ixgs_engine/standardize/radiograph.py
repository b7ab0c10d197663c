"""A realistic intraoperative radiograph from a view's water and bone line integrals.

The chain, in the order a C-arm produces it (docs/standardization.md lists the ranges):
1. polychromatic transmission of a SpekPy spectrum through water + cortical bone (beam
   hardening), energy-weighted as an energy-integrating flat panel records it;
2. heel effect: the tube output falls off along the anode-cathode axis;
3. collimation: a rectangular field, the shutters let a small fraction through;
4. automatic exposure control: the tube output is set so the median primary signal inside the
   field reaches the view's ``exposure`` (photons per pixel);
5. scatter: scatter-kernel superposition (B. Ohnesorge et al., Eur. Radiol. 9 (1999) 563): each
   pixel's incident photons scatter with the form factor T (-ln T) of its transmission T (air
   and the shutters scatter nothing, very thick paths absorb their scatter), spread by a broad
   Gaussian kernel: a smooth offset that also reaches the shuttered border;
6. quantum noise (Poisson counts), detector blur (scintillator light spread, after the counts so
   the noise is correlated as in a real panel), electronic noise (Gaussian);
7. processing: -log against a slightly mis-estimated air signal, window/level between two
   percentiles of the field, gamma, unsharp-mask edge enhancement, optional inversion, and
   quantization to the display bit depth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from ixgs_engine.standardize.spectrum import BONE, WATER, mass_attenuation_curve, tube_spectrum

SIGNAL_FLOOR = 0.5  # photons: the -log step clips the signal here (dark pixels, shutters)


@dataclass(frozen=True)
class RadiographParams:
    """Every setting of one simulated view; the defaults give an ideal unprocessed radiograph."""

    kvp: float = 80.0
    aluminium_mm: float = 3.0
    copper_mm: float = 0.0
    exposure: float = 1e4  # median photons per pixel inside the field (AEC target)
    electronic_noise: float = 0.0  # std, photons
    scatter_fraction: float = 0.0  # scatter amplitude: fraction x Gaussian-blurred (incident x T (-ln T))
    scatter_sigma_px: float = 20.0
    blur_sigma_px: float = 0.0
    heel: float = 0.0  # relative output change from one edge to the other (+: rises with the index)
    heel_axis: int = 1  # 0: along rows (v), 1: along columns (u)
    collimation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # left, right, top, bottom fractions
    collimator_transmission: float = 0.02
    air_gain_error: float = 1.0  # the air signal the -log step assumes, relative to the true one
    window_percentiles: tuple[float, float] = (0.0, 100.0)
    gamma: float = 1.0
    unsharp_amount: float = 0.0
    unsharp_sigma_px: float = 4.0
    invert: bool = False
    bits: int = 0  # display quantization (0: none)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ParamRanges:
    """Ranges each view's settings are drawn from (uniform unless noted)."""

    kvp: tuple[float, float] = (60.0, 120.0)
    aluminium_mm: tuple[float, float] = (2.5, 4.5)
    copper_mm: tuple[float, float] = (0.0, 0.2)
    exposure: tuple[float, float] = (300.0, 1e4)  # log-uniform
    electronic_noise: tuple[float, float] = (0.5, 5.0)
    scatter_fraction: tuple[float, float] = (0.05, 0.4)
    scatter_sigma_mm: tuple[float, float] = (25.0, 70.0)
    blur_sigma_px: tuple[float, float] = (0.3, 1.2)
    heel: tuple[float, float] = (0.05, 0.25)  # magnitude; the sign and axis are random
    collimation_probability: float = 0.7
    collimation: tuple[float, float] = (0.0, 0.15)  # each side
    collimator_transmission: tuple[float, float] = (0.002, 0.03)
    air_gain_error: tuple[float, float] = (0.9, 1.1)
    window_low: tuple[float, float] = (0.0, 3.0)  # percentiles of the field
    window_high: tuple[float, float] = (97.0, 100.0)
    gamma: tuple[float, float] = (0.6, 1.6)  # log-uniform
    unsharp_amount: tuple[float, float] = (0.0, 1.0)
    unsharp_sigma_px: tuple[float, float] = (2.0, 8.0)
    invert_probability: float = 0.3
    bits: tuple[int, ...] = (8, 10, 12)

    def to_dict(self) -> dict:
        return asdict(self)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def sample_params(
    rng: np.random.Generator,
    pixel_mm: float,
    ranges: ParamRanges = ParamRanges(),  # noqa: B008 - frozen
) -> RadiographParams:
    """One view's random settings; ``pixel_mm`` turns the scatter kernel width into pixels."""
    uniform = lambda bounds: float(rng.uniform(*bounds))  # noqa: E731
    collimated = rng.uniform() < ranges.collimation_probability
    sides = tuple(float(x) for x in rng.uniform(*ranges.collimation, 4)) if collimated else (0.0,) * 4
    return RadiographParams(
        kvp=uniform(ranges.kvp),
        aluminium_mm=uniform(ranges.aluminium_mm),
        copper_mm=uniform(ranges.copper_mm),
        exposure=_log_uniform(rng, ranges.exposure),
        electronic_noise=uniform(ranges.electronic_noise),
        scatter_fraction=uniform(ranges.scatter_fraction),
        scatter_sigma_px=uniform(ranges.scatter_sigma_mm) / pixel_mm,
        blur_sigma_px=uniform(ranges.blur_sigma_px),
        heel=float(rng.choice([-1.0, 1.0])) * uniform(ranges.heel),
        heel_axis=int(rng.integers(0, 2)),
        collimation=sides,
        collimator_transmission=uniform(ranges.collimator_transmission),
        air_gain_error=uniform(ranges.air_gain_error),
        window_percentiles=(uniform(ranges.window_low), uniform(ranges.window_high)),
        gamma=_log_uniform(rng, ranges.gamma),
        unsharp_amount=uniform(ranges.unsharp_amount),
        unsharp_sigma_px=uniform(ranges.unsharp_sigma_px),
        invert=bool(rng.uniform() < ranges.invert_probability),
        bits=int(rng.choice(ranges.bits)),
    )


@dataclass
class SimulatedRadiograph:
    """One simulated view: the detector signal (photons), its -log, the processed radiograph
    (display values in [0, 1]) and the collimated field (True inside)."""

    signal: np.ndarray
    log_image: np.ndarray
    radiograph: np.ndarray
    field: np.ndarray
    air_signal: float


def polychromatic_transmission(
    water: np.ndarray, bone: np.ndarray, kvp: float, aluminium_mm: float, copper_mm: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Photon transmission and energy-weighted transmission (signal relative to air) through
    ``water`` and ``bone`` line integrals (g/cm^3 x mm) for a SpekPy spectrum."""
    spectrum = tube_spectrum(kvp, aluminium_mm, copper_mm)
    mu_water = mass_attenuation_curve(WATER, spectrum.energies_kev) / 10.0  # per (g/cm^3 x mm)
    mu_bone = mass_attenuation_curve(BONE, spectrum.energies_kev) / 10.0
    photons = np.zeros(water.shape, dtype=np.float64)
    energy = np.zeros(water.shape, dtype=np.float64)
    for kev, fluence, mw, mb in zip(spectrum.energies_kev, spectrum.fluence, mu_water, mu_bone, strict=True):
        transmitted = fluence * np.exp(-mw * water - mb * bone)
        photons += transmitted
        energy += kev * transmitted
    total = float(np.sum(spectrum.fluence))
    return photons / total, energy / (total * spectrum.mean_kev)


def collimator_field(shape: tuple[int, int], sides: tuple[float, float, float, float]) -> np.ndarray:
    """Boolean mask of the open field: ``sides`` are the shuttered fractions (left, right, top, bottom)."""
    height, width = shape
    left, right, top, bottom = sides
    rows = np.arange(height)
    cols = np.arange(width)
    inside_rows = (rows >= round(top * height)) & (rows < height - round(bottom * height))
    inside_cols = (cols >= round(left * width)) & (cols < width - round(right * width))
    return inside_rows[:, None] & inside_cols[None, :]


def heel_profile(shape: tuple[int, int], heel: float, axis: int) -> np.ndarray:
    """Relative tube output over the panel: 1 + heel x (position from -1/2 to 1/2 along ``axis``)."""
    count = shape[axis]
    ramp = 1.0 + heel * (np.arange(count) / max(count - 1, 1) - 0.5)
    return ramp[:, None] * np.ones(shape) if axis == 0 else np.ones(shape) * ramp[None, :]


def display_processing(log_image: np.ndarray, field: np.ndarray, params: RadiographParams) -> np.ndarray:
    """Window/level (percentiles of the field), gamma, unsharp masking, inversion, quantization."""
    low, high = np.percentile(log_image[field], params.window_percentiles)
    image = np.clip((log_image - low) / max(high - low, 1e-6), 0.0, 1.0) ** params.gamma
    if params.unsharp_amount > 0:
        image = np.clip(image + params.unsharp_amount * (image - gaussian_filter(image, params.unsharp_sigma_px)), 0, 1)
    if params.invert:
        image = 1.0 - image
    if params.bits:
        levels = 2**params.bits - 1
        image = np.round(image * levels) / levels
    return image.astype(np.float32)


def simulate_radiograph(
    water: np.ndarray, bone: np.ndarray, params: RadiographParams, rng: np.random.Generator
) -> SimulatedRadiograph:
    """A processed radiograph from one view's water and bone line integrals (see module)."""
    photon_fraction, energy_fraction = polychromatic_transmission(
        np.asarray(water, np.float64), np.asarray(bone, np.float64), params.kvp, params.aluminium_mm, params.copper_mm
    )
    shape = photon_fraction.shape
    field = collimator_field(shape, params.collimation)
    output = heel_profile(shape, params.heel, params.heel_axis) * np.where(field, 1.0, params.collimator_transmission)
    # AEC: tube output such that the median energy signal in the field reaches the exposure.
    air = params.exposure / max(float(np.median((output * energy_fraction)[field])), 1e-12)
    incident = air * output
    primary_photons = incident * photon_fraction
    primary_signal = incident * energy_fraction
    source = incident * energy_fraction * -np.log(np.maximum(energy_fraction, 1e-12))
    scatter = params.scatter_fraction * gaussian_filter(source, params.scatter_sigma_px, mode="nearest")
    expected_photons = primary_photons + scatter
    expected_signal = primary_signal + scatter
    counts = rng.poisson(expected_photons).astype(np.float64)
    signal = counts * expected_signal / np.maximum(expected_photons, 1e-12)
    if params.blur_sigma_px > 0:
        signal = gaussian_filter(signal, params.blur_sigma_px, mode="nearest")
    signal = signal + rng.normal(0.0, params.electronic_noise, shape) if params.electronic_noise > 0 else signal
    log_image = -np.log(np.maximum(signal, SIGNAL_FLOOR) / (air * params.air_gain_error))
    radiograph = display_processing(log_image, field, params)
    return SimulatedRadiograph(signal.astype(np.float32), log_image.astype(np.float32), radiograph, field, air)
