"""Analytic bead shadows: the line integral of a metal sphere is mu times the ray's chord
through it, computed exactly per ray and averaged over sub-pixel rays (pixel area)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ixgs_engine.geometry.projection import normalize_projection_matrix, project_points, source_position
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io.scan import write_scan
from ixgs_engine.poses.phantom import BeadPhantom
from ixgs_engine.simulate import add_poisson_noise, render_line_integrals
from ixgs_engine.volume import Volume

# Stainless steel near 70 keV: mu/rho ~ 0.85 cm^2/g (NIST XCOM, iron) x 7.9 g/cm^3 ~ 0.67 / mm.
MU_STEEL_PER_MM = 0.67


def bead_radius_px(matrix: np.ndarray, center: np.ndarray, radius_mm: float) -> float:
    """Largest image radius (px) of a sphere: the Jacobian of the projection at its centre,
    largest singular value, times its radius."""
    P = normalize_projection_matrix(matrix)
    uv, w = project_points(P, center[None])
    jacobian = (P[:2, :3] - uv[0][:, None] * P[2, :3]) / w[0]
    return float(np.linalg.svd(jacobian, compute_uv=False)[0] * radius_mm)


def render_beads(
    phantom: BeadPhantom,
    matrix: np.ndarray,
    image_shape: tuple[int, int],
    mu_per_mm: float = MU_STEEL_PER_MM,
    supersample: int = 4,
) -> np.ndarray:
    """Line integrals (H, W) of the phantom's beads seen through ``matrix``; each pixel is the
    mean over ``supersample``^2 rays spread over its area."""
    P = normalize_projection_matrix(matrix)
    M_inv = np.linalg.inv(P[:, :3])
    source = source_position(P)
    height, width = image_shape
    image = np.zeros(image_shape, dtype=np.float64)
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    sub_u, sub_v = np.meshgrid(offsets, offsets)
    centres, depths = project_points(P, phantom.positions)
    for center, uv, depth, diameter in zip(phantom.positions, centres, depths, phantom.diameters, strict=True):
        if depth <= 0:
            continue
        reach = bead_radius_px(P, center, diameter / 2) + 2
        u0, u1 = max(int(np.floor(uv[0] - reach)), 0), min(int(np.ceil(uv[0] + reach)), width - 1)
        v0, v1 = max(int(np.floor(uv[1] - reach)), 0), min(int(np.ceil(uv[1] + reach)), height - 1)
        if u0 > u1 or v0 > v1:
            continue
        vs, us = np.mgrid[v0 : v1 + 1, u0 : u1 + 1].astype(np.float64)
        su = us[..., None, None] + sub_u
        sv = vs[..., None, None] + sub_v
        rays = np.stack([su, sv, np.ones_like(su)], axis=-1) @ M_inv.T
        rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
        to_center = center - source
        along = rays @ to_center
        miss2 = to_center @ to_center - along**2
        chord = 2 * np.sqrt(np.maximum((diameter / 2) ** 2 - miss2, 0.0))
        image[v0 : v1 + 1, u0 : u1 + 1] += mu_per_mm * chord.mean(axis=(-2, -1))
    return image


def simulate_bead_views(
    attenuation: Volume | None,
    phantom: BeadPhantom,
    matrices: np.ndarray,
    image_shape: tuple[int, int],
    photons: float | None = None,
    seed: int = 0,
    mu_per_mm: float = MU_STEEL_PER_MM,
) -> tuple[np.ndarray, np.ndarray]:
    """Views (N, H, W) of the anatomy with the beads, and of the anatomy alone (both with the
    same Poisson noise draw when ``photons`` is given)."""
    anatomy = (
        render_line_integrals(attenuation, matrices, image_shape)
        if attenuation is not None
        else np.zeros((len(matrices), *image_shape), dtype=np.float32)
    )
    beads = np.stack([render_beads(phantom, P, image_shape, mu_per_mm) for P in matrices])
    with_beads = anatomy + beads
    if photons:
        noise_free = with_beads
        with_beads = add_poisson_noise(noise_free, photons, seed)
        anatomy = anatomy + (with_beads - noise_free)  # the same noise on the bead-free views
    return np.asarray(with_beads, dtype=np.float32), np.asarray(anatomy, dtype=np.float32)


def write_bead_scan(
    folder: str | Path,
    attenuation: Volume | None,
    phantom: BeadPhantom,
    matrices: np.ndarray,
    image_shape: tuple[int, int],
    pixel_spacing: tuple[float, float],
    photons: float | None = None,
    seed: int = 0,
    roi: ROI | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """An uncalibrated scan folder of the anatomy with the bead phantom (the true matrices
    kept under ``simulation.projection_matrices`` for checks); returns the views with and
    without beads."""
    with_beads, anatomy = simulate_bead_views(attenuation, phantom, matrices, image_shape, photons, seed)
    extra = {
        "simulation": {
            "projection_matrices": np.asarray(matrices).tolist(),
            "photons": photons,
            "bead_phantom": phantom.name,
        }
    }
    write_scan(folder, list(with_beads), None, roi=roi, pixel_spacing=pixel_spacing, extra=extra)
    return with_beads, anatomy
