"""Applying a trained model: radiographs in, line integrals of the bone-enhanced map out.

The standardized images are line integrals (``image_kind: line_integral``) of the bone-enhanced
attenuation map the targets were rendered from (docs/standardization.md), so a standardized
scan reconstructs that map, in 1/mm, with the scan's own geometry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ixgs_engine.device import resolve_device
from ixgs_engine.io.scan import check_output_apart, load_view_pixels, read_scan, write_scan
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.standardize.model import StandardizationModel, load_model


def apply_model(model: str | Path | StandardizationModel, images: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Standardize radiographs (V, H, W) (or one (H, W)) with a model file or a loaded model."""
    loaded = model if isinstance(model, StandardizationModel) else load_model(model, resolve_device(device))
    return loaded.standardize(np.asarray(images, dtype=np.float32))


def standardize_scan(
    model_path: str | Path,
    scan_dir: str | Path,
    output_dir: str | Path,
    device: str = "auto",
    progress: ProgressCallback | None = None,
) -> tuple[Path, int]:
    """Write a new scan folder of standardized line integrals with the input scan's geometry
    (matrices or circular orbit, ROI, pixel spacing); returns (scan.json path, views)."""
    model = load_model(model_path, resolve_device(device))
    scan = read_scan(scan_dir)
    output_dir = Path(output_dir)
    check_output_apart(output_dir, scan.folder, "the standardized scan")
    images = []
    for index in range(len(scan.views)):
        images.append(model.standardize(load_view_pixels(scan, index)[None])[0])
        if progress is not None:
            progress(index + 1, len(scan.views))
    # the ground truth of a simulated scan is the plain attenuation map, not the bone-enhanced one
    extra = {key: value for key, value in scan.extra.items() if key != "ground_truth"}
    extra["standardized"] = {
        "model": str(Path(model_path).resolve()),
        "source_scan": str(scan.folder.resolve()),
        "source_image_kind": scan.image_kind,
        "bone_weight": model.info.get("bone_weight"),
    }
    spacing = scan.views[0].pixel_spacing
    path = write_scan(output_dir, images, list(scan.matrices), "line_integral", scan.roi, spacing, scan.geometry, extra)
    return path, len(images)
