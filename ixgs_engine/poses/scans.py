"""Scans whose poses are still to be found: read them (views may lack projection matrices),
and write them (simulations, tests).

An *uncalibrated* scan is an ``ixgs-scan/1`` scan.json whose views have an ``image`` (and
optionally ``frame`` and ``pixel_spacing``) but no ``projection_matrix`` and no ``geometry``
(docs/poses.md). When the views do carry matrices or a circular geometry, the full scan reader
checks them and they serve as a nominal starting pose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ixgs_engine.errors import GeometryError, ImageReadError, ScanError
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io import atomic_output
from ixgs_engine.io.scan import FORMAT, IMAGE_KINDS, SCAN_FILE, read_scan
from ixgs_engine.io.xray_images import read_xray_image, write_xray_image


@dataclass
class PoseScanView:
    """One view: image path (relative to the folder), frame, pixel size (mm) and the matrix the
    scan gives, if any (a nominal pose to start from)."""

    image: str
    frame: int | None = None
    pixel_spacing: tuple[float, float] | None = None
    nominal_matrix: np.ndarray | None = None


@dataclass
class PoseScan:
    """A scan folder read for pose estimation (``extra``: keys of scan.json this reader keeps as is)."""

    folder: Path
    image_kind: str
    views: list[PoseScanView]
    roi: ROI | None = None
    i0: float | None = None
    extra: dict = field(default_factory=dict)

    def load_image(self, index: int) -> np.ndarray:
        """The stored pixels of a view (float64, ``[v, u]``); problems name the view and file."""
        view = self.views[index]
        try:
            pixels = read_xray_image(self.folder / view.image, frame=view.frame).pixels.astype(np.float64)
        except ImageReadError as error:
            raise ScanError(str(error), index, view.image) from None
        if not np.all(np.isfinite(pixels)):
            raise ScanError(f"{int(np.sum(~np.isfinite(pixels)))} pixels are NaN or infinite", index, view.image)
        return pixels

    def attenuation_image(self, index: int) -> np.ndarray:
        """A view where attenuating things (beads, bone) are bright: line integrals and
        radiographs as stored, intensities as -ln(I)."""
        pixels = self.load_image(index)
        if self.image_kind == "intensity":
            return -np.log(np.maximum(pixels, max(float(pixels[pixels > 0].min(initial=1.0)), 1e-12)))
        return pixels


def _parse_view(index: int, entry) -> PoseScanView:
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise ScanError('each view needs an "image" path (relative to the scan folder)', index)
    spacing = entry.get("pixel_spacing")
    if spacing is not None:
        try:
            spacing = tuple(float(s) for s in spacing)
        except (TypeError, ValueError):
            spacing = ()
        if len(spacing) != 2 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise ScanError(f"pixel_spacing must be two positive numbers, got {entry.get('pixel_spacing')!r}",
                            index, entry["image"])
    frame = entry.get("frame")
    if frame is not None and (not isinstance(frame, int) or frame < 0):
        raise ScanError(f'"frame" must be a whole number >= 0, got {frame!r}', index, entry["image"])
    return PoseScanView(entry["image"], frame, spacing)


def read_pose_scan(path: str | Path) -> PoseScan:
    """Read a calibrated or uncalibrated scan folder (or its scan.json)."""
    path = Path(path)
    json_path = path / SCAN_FILE if path.is_dir() else path
    if not json_path.is_file():
        raise ScanError(f"{json_path} not found: a scan is a folder holding {SCAN_FILE} (see docs/poses.md)")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ScanError(f"{json_path} is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ScanError(f'{json_path}: "format" must be "{FORMAT}"')
    if data.get("image_kind") not in IMAGE_KINDS:
        raise ScanError(f'{json_path}: "image_kind" must be one of {", ".join(IMAGE_KINDS)}')
    entries = data.get("views")
    if not isinstance(entries, list) or not entries:
        raise ScanError(f'{json_path}: "views" must be a non-empty list')
    views = [_parse_view(i, entry) for i, entry in enumerate(entries)]
    calibrated = "geometry" in data or any(isinstance(e, dict) and "projection_matrix" in e for e in entries)
    if calibrated:
        for view, matrix in zip(views, read_scan(json_path).matrices, strict=True):
            view.nominal_matrix = matrix
    roi = None
    if "roi" in data:
        try:
            roi = ROI(data["roi"]["center"], data["roi"]["size"], data["roi"].get("direction", np.eye(3)))
        except (GeometryError, KeyError, TypeError, ValueError) as error:
            raise ScanError(f'{json_path}: bad "roi" ({error})') from None
    known = {"format", "units", "image_kind", "views", "geometry", "roi", "i0"}
    i0 = data.get("i0")
    if i0 is not None and not (isinstance(i0, (int, float)) and np.isfinite(i0) and i0 > 0):
        raise ScanError(f'{json_path}: "i0" must be a positive number, got {i0!r}')
    return PoseScan(json_path.parent, data["image_kind"], views, roi, float(i0) if i0 is not None else None,
                    {k: v for k, v in data.items() if k not in known})


def write_uncalibrated_scan(
    folder: str | Path,
    images: list[np.ndarray] | np.ndarray,
    pixel_spacing: tuple[float, float] | None,
    image_kind: str = "line_integral",
    extra: dict | None = None,
    roi: ROI | None = None,
) -> Path:
    """Write float32 TIFF views and a scan.json without projection matrices; returns its path."""
    folder = Path(folder)
    views = []
    for index, image in enumerate(images):
        name = f"images/{index:03d}.tif"
        write_xray_image(folder / name, np.asarray(image, dtype=np.float32))
        entry: dict = {"image": name}
        if pixel_spacing is not None:
            entry["pixel_spacing"] = [float(s) for s in pixel_spacing]
        views.append(entry)
    document = {"format": FORMAT, "units": "mm", "image_kind": image_kind, "views": views, **(extra or {})}
    if roi is not None:
        document["roi"] = roi.to_dict()
    path = folder / SCAN_FILE
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(document, indent=1))
    return path
