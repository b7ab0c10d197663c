"""What the benchmarks share: the simulated arbitrary-pose spine scan (projected by RTK, so our
projector does not grade itself), thread settings, timing, the host description, and writing
a JSON record plus a markdown table row under benchmarks/results/."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.phantoms import hu_to_attenuation, make_phantom
from ixgs_engine.projector.rtk_bridge import rtk_forward_project
from ixgs_engine.volume import Volume

RESULTS = Path(__file__).resolve().parent / "results"
FIELD_OF_VIEW_MM = 192.0  # the spine phantom's reference field of view, whatever the grid size
PANEL_MM = 440.0  # wide enough that the whole torso is in every view

T = TypeVar("T")


@dataclass(frozen=True)
class SimulatedScan:
    """The phantom (attenuation, 1/mm), the views' matrices (N, 3, 4) and RTK's line
    integrals (N, H, W) of it."""

    phantom: Volume
    matrices: np.ndarray
    projections: np.ndarray
    pixel_mm: float

    @property
    def voxel_mm(self) -> float:
        return float(self.phantom.spacing[0])


def arbitrary_poses(
    views: int,
    detector: Detector,
    seed: int,
    secondary_deg: float = 35.0,
    jitter_mm: float = 10.0,
    isocenter: np.ndarray | None = None,
) -> np.ndarray:
    """(views, 3, 4) C-arm matrices at random angles (primary ±100°, secondary ±``secondary_deg``),
    distances and isocentre shifts (±``jitter_mm`` around ``isocenter``, default the origin)."""
    rng = np.random.default_rng(seed)
    centre = np.zeros(3) if isocenter is None else np.asarray(isocenter, dtype=np.float64)
    return np.stack(
        [
            carm_projection_matrix(
                primary_deg=rng.uniform(-100.0, 100.0),
                secondary_deg=rng.uniform(-secondary_deg, secondary_deg),
                source_to_isocenter=rng.uniform(650.0, 750.0),
                source_to_detector=rng.uniform(1000.0, 1200.0),
                detector=detector,
                isocenter=centre + rng.uniform(-jitter_mm, jitter_mm, 3),
            )
            for _ in range(views)
        ]
    )


def simulate_spine_scan(
    size: int, detector_pixels: int, views: int, seed: int, panel_mm: float = PANEL_MM
) -> SimulatedScan:
    """The spine phantom on a ``size``³ grid over the reference field of view, seen at
    ``views`` arbitrary poses by a square ``panel_mm`` detector of ``detector_pixels``² pixels."""
    phantom = hu_to_attenuation(make_phantom("spine", (size,) * 3, FIELD_OF_VIEW_MM / size))
    pixel_mm = panel_mm / detector_pixels
    matrices = arbitrary_poses(views, Detector((detector_pixels, detector_pixels), (pixel_mm, pixel_mm)), seed)
    projections = rtk_forward_project(phantom, matrices, (detector_pixels, detector_pixels))
    return SimulatedScan(phantom, matrices, projections, pixel_mm)


def device_name(device: str) -> str:
    """The GPU's name for a CUDA device, else the CPU model."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads in torch and in ITK/RTK (None: their defaults); returns
    ITK's count. Fewer threads than cores keeps timings steadier on a shared machine."""
    import itk

    if threads is not None:
        torch.set_num_threads(threads)
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    return int(itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads())


def load_average() -> float | None:
    """The one-minute load average, where the system reports one."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def timed(run: Callable[[], T]) -> tuple[T, float, float]:
    """The result, wall seconds, and CPU seconds of this process (all threads): on a shared
    machine the CPU time is the less disturbed of the two."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def host_description(device: str, itk_threads: int, load_at_start: float | None) -> dict:
    """Device, threads, load and library versions of this run."""
    return {
        "device": device,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "torch_threads": torch.get_num_threads(),
        "itk_threads": itk_threads,
        "torch": torch.__version__,
        "itk_rtk": importlib.metadata.version("itk-rtk"),
        "python": platform.python_version(),
    }


def save_results(folder: Path, stem: str, record: dict, table: str, table_head: str, row: str) -> Path:
    """Write ``<stem>-<date>.json`` and append ``row`` to the markdown ``table`` (created with
    ``table_head`` first); returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = record["date_utc"].replace(":", "").replace("+0000", "Z")
    path = folder / f"{stem}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    table_path = folder / table
    if not table_path.exists():
        table_path.write_text(table_head)
    with table_path.open("a") as out:
        out.write(row)
    print(f"wrote {path} and a row of {table_path}")
    return path


def add_scan_and_sart_arguments(parser: argparse.ArgumentParser, size: int, detector: int) -> None:
    """The options both benchmarks share: the simulated scan, the SART settings, threads and
    where results go."""
    parser.add_argument("--size", type=int, default=size, help="phantom voxels along each axis (192 mm field of view)")
    parser.add_argument("--detector", type=int, default=detector, help="detector pixels along each axis (square)")
    parser.add_argument("--views", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random C-arm poses")
    parser.add_argument("--relaxation", type=float, default=0.3, help="both SARTs (RTK's default)")
    parser.add_argument("--views-per-subset", type=int, default=1, help="both SARTs")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and ITK/RTK (default: all cores)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
