"""Bead shadows in an X-ray: multi-scale LoG blob candidates, a ridge (edge) test, and a
sub-pixel fit of the projected-sphere profile on a local plane background.

Images must show attenuation as bright (line integrals; see ``pipeline.attenuation_image``).
Manual 2-D points (POINTS_JSON, docs/poses.md) join or replace the automatic detections.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.optimize import least_squares

from ixgs_engine.errors import IXGSError
from ixgs_engine.io import read_json

SUBSAMPLES = 4  # rays per pixel side in the bead model (pixel area), as in simulation.render_beads
SCALES = 6
MAX_RELATIVE_MISFIT = 0.05  # residual RMS over the bead's disc, as a fraction of its amplitude


@dataclass
class Detection:
    """A bead shadow: centre (u, v) px, fitted radius px (NaN for a manual point), peak line
    integral, signal-to-noise ratio, where it came from, and the bead index when known."""

    u: float
    v: float
    radius: float = math.nan
    amplitude: float = math.nan
    snr: float = math.nan
    source: str = "auto"
    bead: int | None = None

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> Detection:
        values = {k: (math.nan if data.get(k) is None else float(data[k])) for k in ("radius", "amplitude", "snr")}
        bead = data.get("bead")
        return cls(
            float(data["u"]),
            float(data["v"]),
            source=str(data.get("source", "auto")),
            bead=None if bead is None else int(bead),
            **values,
        )


def noise_sigma(image: np.ndarray) -> float:
    """Robust white-noise level (Immerkaer's Laplacian-difference kernel, median absolute value)."""
    kernel = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    response = ndimage.convolve(image, kernel, mode="reflect")[1:-1, 1:-1]
    return float(np.median(np.abs(response)) / (0.6745 * 6.0))


def bead_profile(du: np.ndarray, dv: np.ndarray, radius: float) -> np.ndarray:
    """Mean of sqrt(1 - rho^2 / r^2) over each pixel's area: a sphere's normalized shadow."""
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5
    su, sv = np.meshgrid(offsets, offsets)
    rho2 = (du[..., None, None] + su) ** 2 + (dv[..., None, None] + sv) ** 2
    return np.sqrt(np.maximum(1.0 - rho2 / radius**2, 0.0)).mean(axis=(-2, -1))


def _fit_bead(image: np.ndarray, u0: float, v0: float, r0: float, bounds_r: tuple[float, float], sigma: float):
    """Robust least-squares fit of centre, radius, amplitude and a plane background on a
    patch (neighbouring beads are down-weighted); returns (u, v, r, amplitude, rms of the
    residual over the bead's disc) or None."""
    height, width = image.shape
    half = int(math.ceil(1.5 * r0 + 3))
    ua, ub = max(int(round(u0)) - half, 0), min(int(round(u0)) + half, width - 1)
    va, vb = max(int(round(v0)) - half, 0), min(int(round(v0)) + half, height - 1)
    if ub - ua < 4 or vb - va < 4:
        return None
    patch = image[va : vb + 1, ua : ub + 1]
    vs, us = np.mgrid[va : vb + 1, ua : ub + 1].astype(np.float64)
    ring = np.hypot(us - u0, vs - v0) > r0 + 1
    background = float(np.median(patch[ring])) if ring.any() else float(patch.min())
    amplitude0 = max(float(image[int(round(v0)), int(round(u0))]) - background, 1e-6)
    lower = [u0 - r0, v0 - r0, bounds_r[0], 0.0, -np.inf, -np.inf, -np.inf]
    upper = [u0 + r0, v0 + r0, bounds_r[1], np.inf, np.inf, np.inf, np.inf]
    start = np.clip([u0, v0, r0, amplitude0, background, 0.0, 0.0], np.array(lower) + 1e-9, np.array(upper) - 1e-9)

    def residuals(p: np.ndarray) -> np.ndarray:
        model = p[3] * bead_profile(us - p[0], vs - p[1], p[2]) + p[4] + p[5] * (us - u0) + p[6] * (vs - v0)
        return (model - patch).ravel()

    fit = least_squares(
        residuals,
        start,
        bounds=(lower, upper),
        x_scale="jac",
        max_nfev=200,
        loss="soft_l1",
        f_scale=max(3 * sigma, 0.01 * amplitude0),
    )
    u, v, r, amplitude = (float(x) for x in fit.x[:4])
    disc = (np.hypot(us - u, vs - v) <= r + 1).ravel()
    rms = float(np.sqrt(np.mean(residuals(fit.x)[disc] ** 2)))
    return u, v, r, amplitude, rms


def _candidates(
    image: np.ndarray, sigmas: np.ndarray, sigma_noise: float, min_snr: float, edge_ratio: float, limit: int
) -> list[tuple[float, float, float, float]]:
    """Scale-space maxima of the normalized LoG that look like blobs, not ridges:
    (u, v, scale sigma, response), strongest first."""
    delta = np.zeros((33, 33))
    delta[16, 16] = 1.0
    stack = np.stack([-(s**2) * ndimage.gaussian_laplace(image, s) for s in sigmas])
    noise = np.array([sigma_noise * s**2 * np.linalg.norm(ndimage.gaussian_laplace(delta, s)) for s in sigmas])
    peaks = (stack == ndimage.maximum_filter(stack, size=(3, 3, 3), mode="nearest")) & (stack > 0)
    scale, vs, us = np.nonzero(peaks)
    response = stack[scale, vs, us]
    floor = np.maximum(min_snr * noise[scale], 0.05 * response.max(initial=0.0))
    keep = response > floor
    order = np.argsort(-response[keep])[: 4 * limit]
    found = []
    smooth = ndimage.gaussian_filter
    for s, v, u, value in zip(scale[keep][order], vs[keep][order], us[keep][order], response[keep][order], strict=True):
        half = int(math.ceil(4 * sigmas[s])) + 1  # the Gaussian's support: the window adds no border effect
        window = image[max(v - half, 0) : v + half + 1, max(u - half, 0) : u + half + 1]
        cv, cu = v - max(v - half, 0), u - max(u - half, 0)
        hvv = smooth(window, sigmas[s], order=(2, 0))[cv, cu]
        huu = smooth(window, sigmas[s], order=(0, 2))[cv, cu]
        huv = smooth(window, sigmas[s], order=(1, 1))[cv, cu]
        trace, det = huu + hvv, huu * hvv - huv**2
        if trace < 0 and det > 0 and trace**2 / det < (edge_ratio + 1) ** 2 / edge_ratio:
            found.append((float(u), float(v), float(sigmas[s]), float(value)))
        if len(found) >= limit:
            break
    return found


def detect_beads(
    image: np.ndarray,
    radius_range_px: tuple[float, float],
    max_beads: int = 64,
    min_snr: float = 8.0,
    edge_ratio: float = 5.0,
    max_misfit: float = 2.5,
) -> list[Detection]:
    """Bead shadows whose radius (px) lies in ``radius_range_px``, strongest first.

    A candidate is kept when the sphere-shadow fit converges inside the radius range (not on its
    bounds), its amplitude is ``min_snr`` times the noise, and its residual is at most
    ``max_misfit`` times the image's noise or 5 % of its amplitude, whichever is larger (quantum
    noise behind metal is well above the image's median noise): a bead over a bone edge or
    overlapping another bead does not fit and is left out.
    """
    image = np.asarray(image, dtype=np.float64)
    r_min, r_max = radius_range_px
    if not 0 < r_min <= r_max:
        raise IXGSError(f"bead radius range must be 0 < min <= max pixels, got {radius_range_px}")
    sigma_noise = noise_sigma(image)
    sigmas = np.geomspace(max(r_min / math.sqrt(2), 0.5), max(r_max / math.sqrt(2), 0.5), SCALES)
    bounds = (0.7 * r_min, 1.3 * r_max)
    detections: list[Detection] = []
    for u0, v0, scale, _ in _candidates(image, sigmas, sigma_noise, min_snr, edge_ratio, 2 * max_beads):
        fitted = _fit_bead(image, u0, v0, scale * math.sqrt(2), bounds, sigma_noise)
        if fitted is None:
            continue
        u, v, r, amplitude, rms = fitted
        misfit_limit = max(max_misfit * sigma_noise, MAX_RELATIVE_MISFIT * amplitude)
        if amplitude < min_snr * sigma_noise or rms > misfit_limit or not 1.02 * bounds[0] < r < 0.98 * bounds[1]:
            continue
        if not (r <= u <= image.shape[1] - 1 - r and r <= v <= image.shape[0] - 1 - r):
            continue  # cut by the image border: its centre would be biased
        if any(math.hypot(u - d.u, v - d.v) < max(r, d.radius) for d in detections):
            continue
        detections.append(Detection(u, v, r, amplitude, min(amplitude / max(sigma_noise, 1e-12), 1e4)))
        if len(detections) >= max_beads:
            break
    return detections


def view_confidence(detections: list[Detection], bead_count: int) -> float:
    """0..1: the fraction of the phantom's beads found (capped at 1) times the median
    detection quality (SNR / 20, capped at 1; manual points count as 1)."""
    if not detections:
        return 0.0
    quality = [1.0 if not math.isfinite(d.snr) else min(d.snr / 20.0, 1.0) for d in detections]
    return float(min(len(detections) / bead_count, 1.0) * np.median(quality))


def merge_manual(automatic: list[Detection], manual: list[Detection], snap_px: float = 3.0) -> list[Detection]:
    """Manual points join the automatic detections: one that falls on an automatic detection
    (within its radius or ``snap_px``) lends it its bead index; the others are added."""
    merged = [Detection(**asdict(d)) for d in automatic]
    for point in manual:
        near = [
            d
            for d in merged
            if d.source == "auto"
            and math.hypot(d.u - point.u, d.v - point.v) <= max(snap_px, d.radius if math.isfinite(d.radius) else 0.0)
        ]
        if near:
            closest = min(near, key=lambda d: math.hypot(d.u - point.u, d.v - point.v))
            closest.bead, closest.source = point.bead, "auto+manual"
        else:
            merged.append(point)
    return merged


def read_points(path: str | Path, view_count: int, bead_count: int) -> dict[int, list[Detection]]:
    """Manual points ``{"views": {"<view>": [{"u": px, "v": px, "bead": optional int}]}}``."""
    path = Path(path)
    data = read_json(path, "give the manual points file (docs/poses.md)")
    views = data.get("views") if isinstance(data, dict) else None
    if not isinstance(views, dict):
        raise IXGSError(f'{path}: expected {{"views": {{"<view index>": [{{"u": .., "v": .., "bead": ..}}]}}}}')
    points: dict[int, list[Detection]] = {}
    for key, entries in views.items():
        if not str(key).isdigit() or int(key) >= view_count:
            raise IXGSError(f"{path}: view {key!r} is not a view index of this scan (0..{view_count - 1})")
        if not isinstance(entries, list):
            raise IXGSError(f"{path}: view {key}: expected a list of points")
        for number, entry in enumerate(entries):
            try:
                u, v = float(entry["u"]), float(entry["v"])
                bead = entry.get("bead")
                bead = None if bead is None else int(bead)
            except (KeyError, TypeError, ValueError):
                raise IXGSError(
                    f'{path}: view {key} point {number}: needs numbers "u" and "v" (and an optional whole "bead" index)'
                ) from None
            if not (math.isfinite(u) and math.isfinite(v)) or (bead is not None and not 0 <= bead < bead_count):
                raise IXGSError(
                    f"{path}: view {key} point {number}: non-finite u/v or bead index outside 0..{bead_count - 1}"
                )
            points.setdefault(int(key), []).append(Detection(u, v, source="manual", bead=bead))
    return points
