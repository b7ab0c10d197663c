"""Manual 2-D fiducial points as POINTS_JSON, the file ``ixgs poses detect/estimate --points`` read:
``{"views": {"<view index>": [{"u": px, "v": px, "bead": optional int}, ...]}}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ixgs_engine.errors import IXGSError
from ixgs_engine.io import atomic_output


def write_points_json(path: str | Path, points_by_view: dict[int, list[dict]]) -> Path:
    """Write the points of every view that has some (atomically); returns the path."""
    views = {}
    for view, points in sorted(points_by_view.items()):
        entries = []
        for point in points:
            u, v = float(point["u"]), float(point["v"])
            if not (math.isfinite(u) and math.isfinite(v)):
                raise IXGSError(f"view {view}: a point has no finite pixel position; delete or move it")
            entry = {"u": u, "v": v}
            if point.get("bead") is not None:
                entry["bead"] = int(point["bead"])
            entries.append(entry)
        if entries:
            views[str(int(view))] = entries
    path = Path(path)
    with atomic_output(path) as temp:
        temp.write_text(json.dumps({"views": views}, indent=1))
    return path


def read_points_json(path: str | Path) -> dict[int, list[dict]]:
    """Points per view from a POINTS_JSON file, to show and correct them as markups."""
    path = Path(path)
    try:
        views = json.loads(path.read_text())["views"]
        return {
            int(view): [{"u": float(p["u"]), "v": float(p["v"]), "bead": p.get("bead")} for p in points]
            for view, points in views.items()
        }
    except FileNotFoundError:
        raise IXGSError(f"{path}: file not found") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise IXGSError(
            f'{path}: not a points file ({error}); expected {{"views": {{"<view>": [{{"u": .., "v": ..}}]}}}}'
        ) from None


def manual_points(points: list[dict], detected: list[tuple[float, float]], tolerance_px: float = 0.5) -> list[dict]:
    """The points a user added or changed among markups that started as automatic detections:
    those labelled with a bead index, or farther than ``tolerance_px`` from every detection.
    (Unchanged detections stay with the engine's detections file, which keeps their fitted radii.)"""
    if not detected:
        return list(points)
    centres = np.asarray(detected, dtype=np.float64).reshape(-1, 2)
    kept = []
    for point in points:
        distance = np.min(np.hypot(centres[:, 0] - point["u"], centres[:, 1] - point["v"]))
        if point.get("bead") is not None or distance > tolerance_px:
            kept.append(point)
    return kept
