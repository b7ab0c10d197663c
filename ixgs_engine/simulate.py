"""Simulated scans: C-arm poses (circular or arbitrary), DRRs of a volume, detector noise.

Writes a scan folder of float32 TIFF line integrals with the ground-truth attenuation
volume beside it, so every later stage can be checked against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io.scan import write_scan
from ixgs_engine.io.volumes import write_volume
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.projector.joseph import JosephProjector
from ixgs_engine.volume import Volume

GROUND_TRUTH_FILE = "ground_truth.nrrd"
BYTES_PER_VIEW_PIXEL = 16  # the float32 image, its float64 line integrals and noise
BYTES_PER_VOLUME_VOXEL = 24  # the phantom in HU, its attenuation and the projector's copy


@dataclass(frozen=True)
class CarmSetup:
    """Distances (mm) and detector of the simulated C-arm."""

    source_to_isocenter: float = 600.0
    source_to_detector: float = 1000.0
    detector: Detector = Detector(pixels=(256, 256), pixel_spacing=(1.6, 1.6))


@dataclass(frozen=True)
class Pose:
    """One C-arm pose: positioner angles (deg) and the isocentre (world mm)."""

    primary_deg: float
    secondary_deg: float
    isocenter: tuple[float, float, float]


def simulation_bytes(views: int, width: int, height: int, volume_voxels: int = 0) -> int:
    """About how much memory a simulation of ``views`` views of ``width`` x ``height`` pixels
    of a volume of ``volume_voxels`` voxels needs (to check before starting)."""
    return views * width * height * BYTES_PER_VIEW_PIXEL + volume_voxels * BYTES_PER_VOLUME_VOXEL


def circular_poses(count: int, arc_deg: tuple[float, float] = (0.0, 360.0), isocenter=(0.0, 0.0, 0.0)) -> list[Pose]:
    """Evenly spaced primary angles over an arc (a full 360 deg arc excludes its end)."""
    start, stop = arc_deg
    full = np.isclose(abs(stop - start), 360.0)
    angles = np.linspace(start, stop, count, endpoint=not full)
    return [Pose(float(a), 0.0, tuple(isocenter)) for a in angles]


def arbitrary_poses(
    count: int,
    primary_range: tuple[float, float] = (-100.0, 100.0),
    secondary_range: tuple[float, float] = (-30.0, 30.0),
    isocenter_jitter_mm: float = 0.0,
    isocenter=(0.0, 0.0, 0.0),
    seed: int = 0,
) -> list[Pose]:
    """Random C-arm poses: primary angles stratified over their range (one per stratum, so the
    views spread out), secondary angles uniform, isocentre moved by up to the jitter."""
    rng = np.random.default_rng(seed)
    edges = np.linspace(primary_range[0], primary_range[1], count + 1)
    primary = rng.uniform(edges[:-1], edges[1:])
    secondary = rng.uniform(secondary_range[0], secondary_range[1], count)
    shifts = rng.uniform(-isocenter_jitter_mm, isocenter_jitter_mm, (count, 3))
    center = np.asarray(isocenter, dtype=np.float64)
    return [Pose(float(p), float(s), tuple(center + d)) for p, s, d in zip(primary, secondary, shifts, strict=True)]


def pose_matrices(poses: list[Pose], setup: CarmSetup) -> np.ndarray:
    """Projection matrices (N, 3, 4) of the poses."""
    return np.stack(
        [
            carm_projection_matrix(
                p.primary_deg,
                p.secondary_deg,
                setup.source_to_isocenter,
                setup.source_to_detector,
                setup.detector,
                p.isocenter,
            )
            for p in poses
        ]
    )


def render_line_integrals(
    attenuation: Volume,
    matrices: np.ndarray,
    image_shape: tuple[int, int],
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """DRRs (N, H, W) of an attenuation volume (1/mm), one view at a time."""
    volume = torch.as_tensor(np.asarray(attenuation.array, dtype=np.float32), device=device)
    projector = JosephProjector(attenuation.grid, matrices, image_shape, device=device)
    images = []
    for view in range(projector.num_views):
        images.append(projector.subset([view]).forward(volume)[0].cpu().numpy())
        if progress is not None:
            progress(view + 1, projector.num_views)
    return np.stack(images)


def add_poisson_noise(line_integrals: np.ndarray, photons: float, seed: int = 0) -> np.ndarray:
    """Quantum noise for ``photons`` unattenuated counts per pixel: counts ~ Poisson(N0
    exp(-p)), back to -ln(counts / N0) with zero counts floored at one."""
    if photons <= 0:
        raise ValueError(f"photons per pixel must be positive, got {photons}")
    rng = np.random.default_rng(seed)
    counts = rng.poisson(photons * np.exp(-np.asarray(line_integrals, dtype=np.float64)))
    return (-np.log(np.maximum(counts, 1) / photons)).astype(np.float32)


def roi_of_volume(volume: Volume) -> ROI:
    """The box a volume's voxels cover, as a scan ROI."""
    return ROI(center=volume.center(), size=volume.extent(), direction=volume.direction.T)


def write_simulated_scan(
    folder: str | Path,
    attenuation: Volume,
    poses: list[Pose],
    setup: CarmSetup,
    images: np.ndarray,
    circular: dict | None = None,
) -> Path:
    """Write the scan folder (views with matrices, or the circular geometry) and the ground
    truth; returns the scan.json path."""
    folder = Path(folder)
    matrices = pose_matrices(poses, setup)
    extra = {
        "ground_truth": GROUND_TRUTH_FILE,
        "simulation": {
            "source_to_isocenter": setup.source_to_isocenter,
            "source_to_detector": setup.source_to_detector,
            "poses_deg": [[p.primary_deg, p.secondary_deg] for p in poses],
        },
    }
    write_volume(folder / GROUND_TRUTH_FILE, attenuation)
    return write_scan(
        folder,
        list(images),
        list(matrices),
        roi=roi_of_volume(attenuation),
        pixel_spacing=setup.detector.pixel_spacing,
        geometry=circular,
        extra=extra,
    )


def circular_geometry_block(poses: list[Pose], setup: CarmSetup) -> dict:
    """The scan.json ``geometry`` block of a circular orbit (all poses share an isocentre)."""
    return {
        "type": "circular",
        "source_to_isocenter": setup.source_to_isocenter,
        "source_to_detector": setup.source_to_detector,
        "angles_deg": [p.primary_deg for p in poses],
        "isocenter": list(poses[0].isocenter),
        "detector": {
            "pixels": list(setup.detector.pixels),
            "pixel_spacing": list(setup.detector.pixel_spacing),
            "offset": list(setup.detector.offset),
        },
    }


def simulate_scan(
    folder: str | Path,
    attenuation: Volume,
    poses: list[Pose],
    setup: CarmSetup,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    photons: float | None = None,
    seed: int = 0,
    circular: bool = False,
) -> Path:
    """Render, optionally add noise, and write a scan folder; returns the scan.json path."""
    width, height = setup.detector.pixels
    images = render_line_integrals(attenuation, pose_matrices(poses, setup), (height, width), device, progress)
    if photons:
        images = add_poisson_noise(images, photons, seed)
    geometry = circular_geometry_block(poses, setup) if circular else None
    return write_simulated_scan(folder, attenuation, poses, setup, images, geometry)


def simulate_phantom_scan(
    folder: str | Path,
    phantom: str,
    size: int,
    spacing_mm: float,
    views: int,
    detector_pixels: int,
    pixel_size_mm: float,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    seed: int = 0,
) -> Volume:
    """An embedded phantom at ``views`` arbitrary C-arm poses (default ranges and distances);
    returns the ground-truth attenuation volume."""
    from ixgs_engine.phantoms import hu_to_attenuation, make_phantom

    attenuation = hu_to_attenuation(make_phantom(phantom, (size, size, size), spacing_mm))
    setup = CarmSetup(detector=Detector((detector_pixels, detector_pixels), (pixel_size_mm, pixel_size_mm)))
    simulate_scan(
        folder,
        attenuation,
        arbitrary_poses(views, isocenter=tuple(attenuation.center()), seed=seed),
        setup,
        device,
        progress,
    )
    return attenuation
