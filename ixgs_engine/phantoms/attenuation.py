"""Hounsfield units <-> linear attenuation coefficients (1/mm).

Water: mass attenuation coefficients mu/rho (total, with coherent scattering) of liquid water
from J. H. Hubbell and S. M. Seltzer, "Tables of X-Ray Mass Attenuation Coefficients and Mass
Energy-Absorption Coefficients", NIST Standard Reference Database 126 (NISTIR 5632), Table 4,
"Water, Liquid" (the same values XCOM gives on that energy grid). Times the density
1 g/cm^3 they give mu in 1/cm; divided by 10, in 1/mm.

70 keV is not on the tabulated grid: the default effective energy's value is the log-log
interpolation between 60 keV (0.2059 cm^2/g) and 80 keV (0.1837 cm^2/g), 0.1937 cm^2/g,
i.e. mu_water = 0.01937 /mm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from ixgs_engine.volume import Volume

# photon energy (keV) -> mu/rho of liquid water (cm^2/g), NIST SRD 126 Table 4.
WATER_MASS_ATTENUATION_CM2_PER_G: dict[float, float] = {
    40.0: 0.2683,
    50.0: 0.2269,
    60.0: 0.2059,
    80.0: 0.1837,
    100.0: 0.1707,
    150.0: 0.1505,
}
WATER_DENSITY_G_PER_CM3 = 1.0

Values = TypeVar("Values", np.ndarray, Volume)


def water_attenuation_per_mm(kev: float) -> float:
    """Linear attenuation coefficient of water (1/mm) at ``kev``, log-log interpolated in the
    NIST table; energies outside 40-150 keV raise ValueError rather than extrapolate."""
    energies = np.array(sorted(WATER_MASS_ATTENUATION_CM2_PER_G))
    if not energies[0] <= kev <= energies[-1]:
        raise ValueError(f"water attenuation is tabulated for {energies[0]:g}-{energies[-1]:g} keV, got {kev} keV")
    mass = np.array([WATER_MASS_ATTENUATION_CM2_PER_G[e] for e in energies])
    mass_at_kev = np.exp(np.interp(np.log(kev), np.log(energies), np.log(mass)))
    return float(mass_at_kev * WATER_DENSITY_G_PER_CM3 / 10.0)


MU_WATER_70KEV = water_attenuation_per_mm(70.0)  # 0.01937 /mm


def _map(values: Values, function: Callable[[np.ndarray], np.ndarray]) -> Values:
    """Apply ``function`` to an array (as floating point) or to a volume's array."""
    if isinstance(values, Volume):
        return values.with_array(_map(values.array, function))
    array = np.asarray(values)
    return function(array.astype(np.result_type(array.dtype, np.float32), copy=False))


def hu_to_attenuation(hu: Values, mu_water_per_mm: float = MU_WATER_70KEV) -> Values:
    """mu = mu_water (1 + HU / 1000), clipped at 0 so air and below give no attenuation."""
    return _map(hu, lambda a: np.maximum(mu_water_per_mm * (1.0 + a / 1000.0), 0.0).astype(a.dtype))


def attenuation_to_hu(mu: Values, mu_water_per_mm: float = MU_WATER_70KEV) -> Values:
    """HU = 1000 (mu / mu_water - 1), the inverse of :func:`hu_to_attenuation` above -1000 HU."""
    return _map(mu, lambda a: (1000.0 * (a / mu_water_per_mm - 1.0)).astype(a.dtype))
