"""Classical baselines on a scan folder through RTK: SART (any geometry) and FDK (circular
orbits only). The volume lands on the same ROI grid, with world geometry, as an IXGS run."""

from __future__ import annotations

import time
from pathlib import Path

from ixgs_engine.errors import IXGSError
from ixgs_engine.geometry.roi import roi_grid
from ixgs_engine.io.scan import check_output_apart, load_projections, read_scan
from ixgs_engine.io.volumes import write_volume
from ixgs_engine.reconstruct import run_files
from ixgs_engine.reconstruct.data import detector_voxel_size
from ixgs_engine.volume import Volume

METHODS = ("sart", "fdk")


def run_baseline(
    method: str,
    scan_dir: str | Path,
    output_dir: str | Path,
    iterations: int = 10,
    voxel_size: float | None = None,
    volume_format: str = "nrrd",
) -> tuple[dict, Volume]:
    """Reconstruct ``scan_dir`` with RTK's ``method`` into ``output_dir`` (volume.<fmt> and
    summary.json); returns the summary and the volume. ``iterations`` are SART's full passes."""
    from ixgs_engine.classical import rtk

    if method not in METHODS:
        raise IXGSError(f"unknown baseline {method!r}; choose {' or '.join(METHODS)}")
    started = time.perf_counter()
    check_output_apart(output_dir, scan_dir, "the baseline")
    projections = load_projections(read_scan(scan_dir))
    voxel = voxel_size if voxel_size is not None else detector_voxel_size(projections.matrices, projections.roi)
    grid = roi_grid(projections.roi, voxel)
    try:
        if method == "sart":
            volume = rtk.rtk_sart(projections.values, projections.matrices, grid, iterations)
        else:
            volume = rtk.rtk_fdk(projections.values, projections.matrices, grid)
    except ImportError as error:
        raise IXGSError(str(error)) from None
    output_dir = Path(output_dir)
    volume_path = output_dir / f"volume.{volume_format}"
    write_volume(volume_path, volume)
    summary = {
        "method": f"rtk-{method}",
        "scan": str(Path(scan_dir).resolve()),
        "views": int(len(projections.values)),
        "iterations": iterations if method == "sart" else None,
        "voxel_size_mm": voxel,
        "volume_path": str(volume_path),
        "total_seconds": time.perf_counter() - started,
    }
    run_files.write_summary(output_dir, summary)
    return summary, volume
