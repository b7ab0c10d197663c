"""Assembling scan folders from what a Slicer user picks (no Qt, no Slicer).

X-ray files (DICOM, TIFF, PNG, ...) with or without projection-matrix files become an
``ixgs-scan/1`` folder in a working directory (the inputs are never modified); a reconstruction
box edited in Slicer becomes a new scan.json that points at the same images.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ixgs_engine.errors import GeometryError, IXGSError
from ixgs_engine.geometry.projection import validate_projection_matrix
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io import atomic_output
from ixgs_engine.io.scan import SCAN_FILE, write_scan
from ixgs_engine.io.xray_images import frame_count, read_xray_image


def natural_order(paths: Sequence[str | Path]) -> list[str | Path]:
    """Paths sorted as a person numbers views: ``view2`` before ``view10`` (digit runs compare as
    numbers, the rest without case)."""

    def key(path: str | Path) -> list[tuple[int, int | str]]:
        parts = re.split(r"(\d+)", str(path))
        return [(0, int(part)) if part.isdigit() else (1, part.lower()) for part in parts]

    return sorted(paths, key=key)


def dicom_series_choices(
    series: Sequence[tuple[str, Sequence[str]]], instance_number: Callable[[str], str]
) -> list[tuple[str, list[str]]]:
    """(label, files) per DICOM series for a picker: labels made unique (a repeated description
    gets " (2)", " (3)", ...) so no series hides another, and each series' files ordered by
    Instance Number (files without one last, in natural order)."""

    def order(path: str) -> tuple[int, float]:
        text = (instance_number(path) or "").strip()
        try:
            return (0, float(text))
        except ValueError:
            return (1, 0.0)

    seen: dict[str, int] = {}
    choices = []
    for label, files in series:
        seen[label] = seen.get(label, 0) + 1
        unique = label if seen[label] == 1 else f"{label} ({seen[label]})"
        choices.append((unique, sorted(natural_order(list(files)), key=order)))
    return choices


def read_matrix_file(path: str | Path) -> np.ndarray:
    """A 3x4 projection matrix from a text file (12 numbers, whitespace or comma separated)."""
    path = Path(path)
    try:
        numbers = np.array(path.read_text().replace(",", " ").split(), dtype=np.float64)
    except (OSError, UnicodeDecodeError) as error:
        raise IXGSError(f"{path}: cannot be read ({error})") from None
    except ValueError:
        raise IXGSError(f"{path}: holds text that is not a number; a P-matrix file holds 12 numbers") from None
    if numbers.size != 12:
        raise IXGSError(f"{path}: holds {numbers.size} numbers; a P-matrix file holds 12 (3 rows of 4)")
    try:
        return validate_projection_matrix(numbers.reshape(3, 4))
    except GeometryError as error:
        raise IXGSError(f"{path}: {error}") from None


def _frames(path: str | Path) -> list[int | None]:
    """Frames to read from an X-ray file: every frame of a multi-frame DICOM, else the one image."""
    count = frame_count(path)
    return list(range(count)) if count > 1 else [None]


def build_scan(
    folder: str | Path,
    image_paths: Sequence[str | Path],
    matrix_paths: Sequence[str | Path] | None = None,
    image_kind: str = "radiograph",
) -> Path:
    """Write a scan folder from X-ray files (one view per image, or per frame of a multi-frame
    DICOM, in the given order) and, optionally, one P-matrix file per view; without matrices
    the scan is uncalibrated (poses come from fiducials). Returns the scan.json path."""
    if not image_paths:
        raise IXGSError("no X-ray files were given")
    images = [read_xray_image(path, frame) for path in image_paths for frame in _frames(path)]
    if matrix_paths is not None and len(images) != len(matrix_paths):
        raise IXGSError(f"{len(images)} X-ray images but {len(matrix_paths)} P-matrix files; give one per image")
    shapes = {image.pixels.shape for image in images}
    if len(shapes) > 1:
        raise IXGSError(f"the X-rays have different sizes {sorted(shapes)}; a scan needs one detector size")
    spacing = images[0].pixel_spacing
    pixels = [image.pixels for image in images]
    matrices = None if matrix_paths is None else [read_matrix_file(path) for path in matrix_paths]
    return write_scan(folder, pixels, matrices, image_kind, pixel_spacing=spacing)


def scan_with_roi(scan_dir: str | Path, roi: ROI, folder: str | Path) -> Path:
    """A copy of a scan's scan.json in ``folder`` with ``roi`` as its reconstruction box; the
    views keep pointing at the original images. Returns the new scan folder."""
    source = Path(scan_dir) / SCAN_FILE if Path(scan_dir).is_dir() else Path(scan_dir)
    try:
        document = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise IXGSError(f"{source}: cannot be read as a scan ({error})") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for view in document.get("views", []):
        image = source.parent / view["image"]
        view["image"] = Path(os.path.relpath(image.resolve(), folder.resolve())).as_posix()
    document["roi"] = roi.to_dict()
    with atomic_output(folder / SCAN_FILE) as temp:
        temp.write_text(json.dumps(document, indent=1))
    return folder
