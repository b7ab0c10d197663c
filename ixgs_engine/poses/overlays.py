"""A PNG per view for checking by eye: the X-ray with detections (green circles, manual
points yellow) and the beads reprojected through the estimated matrix (red crosses, numbered)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from ixgs_engine.io import atomic_output
from ixgs_engine.poses.correspondence import projected_beads
from ixgs_engine.poses.detection import Detection
from ixgs_engine.poses.phantom import BeadPhantom

GREEN, YELLOW, RED, WHITE = (60, 220, 60), (0, 220, 255), (40, 40, 255), (255, 255, 255)  # BGR


def overlay_png(
    path: str | Path,
    image: np.ndarray,
    detections: list[Detection],
    phantom: BeadPhantom | None = None,
    matrix: np.ndarray | None = None,
    caption: str = "",
    min_size: int = 512,
) -> Path:
    """Write the overlay (the image is scaled up by a whole factor to at least ``min_size``)."""
    low, high = np.percentile(image, [1.0, 99.5])
    grey = np.clip((np.asarray(image, dtype=np.float64) - low) / max(high - low, 1e-12) * 255, 0, 255).astype(np.uint8)
    zoom = max(1, math.ceil(min_size / min(grey.shape)))
    canvas = cv2.cvtColor(cv2.resize(grey, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR)

    def at(u: float, v: float) -> tuple[int, int]:
        return int(round((u + 0.5) * zoom - 0.5)), int(round((v + 0.5) * zoom - 0.5))

    for d in detections:
        radius = d.radius if math.isfinite(d.radius) else 3.0
        colour = YELLOW if d.source == "manual" else GREEN
        cv2.circle(canvas, at(d.u, d.v), max(int(round(radius * zoom)), 2), colour, 1, cv2.LINE_AA)
    if phantom is not None and matrix is not None:
        uv, _, depth = projected_beads(matrix, phantom)
        for index, ((u, v), w) in enumerate(zip(uv, depth, strict=True)):
            if w > 0 and -0.5 <= u < image.shape[1] - 0.5 and -0.5 <= v < image.shape[0] - 0.5:
                cv2.drawMarker(canvas, at(u, v), RED, cv2.MARKER_CROSS, 2 * zoom + 4, 1, cv2.LINE_AA)
                x, y = at(u, v)
                cv2.putText(
                    canvas,
                    str(index),
                    (x + zoom + 3, y - zoom - 3),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.35,
                    RED,
                    1,
                    cv2.LINE_AA,
                )
    if caption:
        cv2.putText(canvas, caption, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, WHITE, 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the overlay PNG")
    path = Path(path)
    with atomic_output(path) as temp:
        temp.write_bytes(encoded.tobytes())
    return path
