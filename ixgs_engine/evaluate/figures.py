"""Pictures for people: orthogonal mid-slices of volumes side by side, as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ixgs_engine.io import atomic_output
from ixgs_engine.volume import Volume

LABEL_HEIGHT = 14
MIN_PANEL_PIXELS = 256  # small volumes are enlarged to at least this many pixels a side


def _mid_slices(volume: Volume) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid-slices, displayed with superior up where it applies."""
    array = volume.array
    nz, ny, nx = array.shape
    axial = array[nz // 2]
    coronal = array[::-1, ny // 2, :]
    sagittal = array[::-1, :, nx // 2]
    return [axial, coronal, sagittal]


def orthogonal_views(volume: Volume, projection: str = "slice") -> list[np.ndarray]:
    """Axial, coronal and sagittal images of a volume, oriented as :func:`orthogonal_slices_png`
    shows them: mid-slices (``projection="slice"``) or maximum intensity projections ("mip")."""
    if projection == "slice":
        return _mid_slices(volume)
    if projection != "mip":
        raise ValueError(f"projection must be 'slice' or 'mip', got {projection!r}")
    array = volume.array
    return [array.max(axis=0), array.max(axis=1)[::-1], array.max(axis=2)[::-1]]


def orthogonal_slices_png(path: str | Path, volumes: list[tuple[str, Volume]], window: tuple[float, float]) -> Path:
    """One row per volume (axial, coronal, sagittal mid-slices), grey levels over ``window``
    (the same for all rows so they compare), each row captioned with its label."""
    low, high = window
    rows = []
    for label, volume in volumes:
        panels = [np.clip((s - low) / max(high - low, 1e-12), 0.0, 1.0) for s in _mid_slices(volume)]
        height = max(p.shape[0] for p in panels)
        padded = [np.pad(p, ((0, height - p.shape[0]), (0, 2))) for p in panels]
        strip = Image.fromarray((np.concatenate(padded, axis=1) * 255).astype(np.uint8))
        zoom = max(1, MIN_PANEL_PIXELS // height)
        strip = strip.resize((strip.width * zoom, strip.height * zoom), Image.Resampling.NEAREST)
        row = Image.new("L", (strip.width, strip.height + LABEL_HEIGHT), 0)
        row.paste(strip, (0, LABEL_HEIGHT))
        ImageDraw.Draw(row).text((2, 1), label, fill=255)
        rows.append(row)
    width = max(r.width for r in rows)
    sheet = Image.new("L", (width, sum(r.height for r in rows)), 0)
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height
    path = Path(path)
    with atomic_output(path) as temp:
        sheet.save(temp, format="PNG")
    return path
