"""Poses of a whole scan: detect beads in every view, match them to the phantom, estimate each
view's matrix (PnP with known intrinsics, else DLT), refine all views jointly, and judge them.

Every view gets a status and a message saying what went wrong and what to try.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ixgs_engine.errors import GeometryError, IXGSError
from ixgs_engine.io import atomic_output, read_json
from ixgs_engine.io.scan import Scan, load_view_pixels
from ixgs_engine.poses.correspondence import best_match
from ixgs_engine.poses.detection import Detection, detect_beads, merge_manual, view_confidence
from ixgs_engine.poses.estimation import dlt, extrinsics_matrix, pnp, polish_matrix, reprojection_errors
from ixgs_engine.poses.phantom import BeadPhantom
from ixgs_engine.poses.refinement import ViewObservations, refine_views
from ixgs_engine.progress import ProgressCallback

DETECTIONS_FORMAT = "ixgs-bead-detections/1"
MAGNIFICATION_RANGE = (1.0, 2.5)  # beads lie between source and detector
# Matched beads a pose must explain: more than the minimal PnP (4) / DLT (6) sets, because a
# wrong labelling of that few beads can still fit exactly.
MIN_MATCHED_KNOWN_INTRINSICS = 6
MIN_MATCHED_DLT = 8
GUESS_SOURCE_TO_DETECTOR_MM = 1000.0  # only steers the matching search when the intrinsics are unknown


@dataclass
class ViewDetections:
    """A view's detections, their confidence (0..1) and what is wrong with them ("" if nothing)."""

    view: int
    image: str
    detections: list[Detection]
    confidence: float
    message: str = ""

    def to_dict(self) -> dict:
        return {
            "view": self.view,
            "image": self.image,
            "confidence": round(self.confidence, 4),
            "message": self.message,
            "detections": [d.to_dict() for d in self.detections],
        }


@dataclass
class ViewPose:
    """A view's estimated matrix and how well it explains its beads (``matrix`` None: failed)."""

    view: int
    image: str
    matrix: np.ndarray | None = None
    pairs: list[tuple[int, int]] = field(default_factory=list)
    rms_px: float = math.nan
    max_px: float = math.nan
    pixel_mm: float | None = None
    detections: int = 0
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.matrix is not None

    def to_dict(self) -> dict:
        def number(x: float) -> float | None:
            return round(float(x), 5) if math.isfinite(x) else None

        return {
            "view": self.view,
            "image": self.image,
            "status": "ok" if self.ok else "failed",
            "message": self.message,
            "detections": self.detections,
            "matched_beads": len(self.pairs),
            "rms_px": number(self.rms_px),
            "max_px": number(self.max_px),
            "rms_mm": number(self.rms_px * self.pixel_mm) if self.pixel_mm else None,
            "pairs": [[int(b), int(d)] for b, d in self.pairs],
            "projection_matrix": self.matrix.tolist() if self.matrix is not None else None,
        }


def attenuation_image(scan: Scan, index: int) -> np.ndarray:
    """A view where attenuating things (beads, bone) are bright: line integrals and
    radiographs as stored, intensities as -ln(I)."""
    pixels = load_view_pixels(scan, index)
    if scan.image_kind == "intensity":
        return -np.log(np.maximum(pixels, max(float(pixels[pixels > 0].min(initial=1.0)), 1e-12)))
    return pixels


def view_pixel_mm(scan: Scan, phantom: BeadPhantom, index: int) -> float | None:
    """Detector pixel size (mm) of a view: scan.json's, else the phantom's intrinsics'."""
    spacing = scan.views[index].pixel_spacing or (phantom.intrinsics.pixel_spacing if phantom.intrinsics else None)
    return float(np.mean(spacing)) if spacing else None


def radius_range_px(
    scan: Scan, phantom: BeadPhantom, index: int, override: tuple[float, float] | None = None
) -> tuple[float, float]:
    """Shadow radii (px) to look for: bead radii x magnification 1-2.5 / pixel size."""
    if override is not None:
        return override
    pixel = view_pixel_mm(scan, phantom, index)
    if pixel is None:
        raise IXGSError(
            f"view {index} ({scan.views[index].image}): no pixel spacing in scan.json or in the phantom's "
            "intrinsics, so the bead size in pixels is unknown; add pixel_spacing or pass `bead_radius_px`"
        )
    low = max(float(phantom.diameters.min()) / 2 * MAGNIFICATION_RANGE[0] / pixel, 0.7)
    return low, max(float(phantom.diameters.max()) / 2 * MAGNIFICATION_RANGE[1] / pixel, low)


def detect_view(
    scan: Scan,
    phantom: BeadPhantom,
    index: int,
    manual: list[Detection] | None = None,
    automatic: bool = True,
    radius_override: tuple[float, float] | None = None,
) -> ViewDetections:
    """Detections of one view (automatic, manual, or both) with a confidence and a message."""
    image = scan.views[index].image
    found: list[Detection] = []
    if automatic:
        found = detect_beads(
            attenuation_image(scan, index),
            radius_range_px(scan, phantom, index, radius_override),
            max_beads=2 * phantom.count + 8,
        )
    found = merge_manual(found, manual or [])
    return ViewDetections(index, image, found, view_confidence(found, phantom.count), detection_problem(found, phantom))


def detection_problem(found: list[Detection], phantom: BeadPhantom) -> str:
    """What is wrong with a view's detections for a pose ("" if nothing)."""
    minimum = MIN_MATCHED_KNOWN_INTRINSICS if phantom.intrinsics else MIN_MATCHED_DLT
    if not found:
        return (
            "no beads found: check that `phantom` is the phantom in the images, the image kind in "
            "scan.json (beads must look bright in line integrals) and the pixel spacing; or place points "
            "by hand (`points`)"
        )
    if len(found) < minimum:
        return (
            f"only {len(found)} beads found; a pose needs at least {minimum} "
            f"({'known intrinsics' if phantom.intrinsics else 'no intrinsics in the phantom file: DLT'}); "
            "add manual points (`points`)"
        )
    return ""


def _intrinsics_options(scan: Scan, phantom: BeadPhantom, index: int, shape: tuple[int, int]) -> list[np.ndarray]:
    """K matrices to search with: the phantom's (both mirror states unless it says), or a guess."""
    if phantom.intrinsics is not None:
        mirrored = phantom.intrinsics.mirrored
        states = [mirrored] if mirrored is not None else [True, False]
        return [phantom.intrinsics.matrix(shape, state) for state in states]
    pixel = view_pixel_mm(scan, phantom, index) or 1.0
    height, width = shape
    focal = GUESS_SOURCE_TO_DETECTOR_MM / pixel
    return [
        np.array([[focal, 0, (width - 1) / 2], [0, sign * focal, (height - 1) / 2], [0, 0, 1.0]])
        for sign in (-1.0, 1.0)
    ]


def estimate_view(scan: Scan, phantom: BeadPhantom, found: ViewDetections, shape: tuple[int, int]) -> ViewPose:
    """Match and solve one view (no joint refinement yet)."""
    pose = ViewPose(
        found.view, found.image, pixel_mm=view_pixel_mm(scan, phantom, found.view), detections=len(found.detections)
    )
    if found.message:
        pose.message = found.message
        return pose
    nominal = scan.views[found.view].projection_matrix
    match = best_match(phantom, found.detections, _intrinsics_options(scan, phantom, found.view, shape), shape, nominal)
    minimum = MIN_MATCHED_KNOWN_INTRINSICS if phantom.intrinsics else MIN_MATCHED_DLT
    if match is None or len(match.pairs) < minimum:
        pose.message = (
            f"could not match the {len(found.detections)} detections to the phantom's beads "
            f"({0 if match is None else len(match.pairs)} consistent pairs, {minimum} needed): is it the "
            'right phantom file? add labelled manual points (`points` with "bead")'
        )
        return pose
    pose.pairs = match.pairs
    matrix = match.matrix
    beads, dets = (list(x) for x in zip(*match.pairs, strict=True))
    uv = np.array([[found.detections[j].u, found.detections[j].v] for j in dets])
    if phantom.intrinsics is not None:
        # The search may end in a local minimum of PnP for these pairs: also solve them globally (SQPnP).
        try:
            solved = extrinsics_matrix(match.intrinsics, *pnp(phantom.positions[beads], uv, match.intrinsics))
        except GeometryError:
            solved = None
        if solved is not None and (
            np.sum(reprojection_errors(solved, phantom.positions[beads], uv) ** 2)
            < np.sum(reprojection_errors(matrix, phantom.positions[beads], uv) ** 2)
        ):
            matrix = solved
    else:
        try:
            matrix = polish_matrix(dlt(phantom.positions[beads], uv), phantom.positions[beads], uv)
        except GeometryError as error:
            pose.message = f"DLT failed: {error}"
            return pose
    pose.matrix = matrix
    return pose


def score_view(pose: ViewPose, phantom: BeadPhantom, detections: list[Detection], max_rms_px: float) -> None:
    """Fill in the reprojection errors; a view above ``max_rms_px`` is marked failed."""
    beads, dets = (list(x) for x in zip(*pose.pairs, strict=True))
    uv = np.array([[detections[j].u, detections[j].v] for j in dets])
    errors = reprojection_errors(pose.matrix, phantom.positions[beads], uv)
    pose.rms_px, pose.max_px = float(np.sqrt(np.mean(errors**2))), float(errors.max())
    if pose.rms_px > max_rms_px:
        pose.message = (
            f"reprojection RMS {pose.rms_px:.2f} px exceeds {max_rms_px} px: beads mismatched or "
            "detections off; check the overlay and add labelled manual points"
        )
        pose.matrix = None


def estimate_scan(
    scan: Scan,
    phantom: BeadPhantom,
    detections: list[ViewDetections],
    refine: bool = True,
    refine_intrinsics: bool = False,
    max_rms_px: float = 1.0,
    progress: ProgressCallback | None = None,
) -> list[ViewPose]:
    """Poses of every view; successful views refined jointly (shared intrinsics)."""
    poses = []
    for count, found in enumerate(detections, start=1):
        shape = load_view_pixels(scan, found.view).shape
        poses.append(estimate_view(scan, phantom, found, shape))
        if progress is not None:
            progress(count, len(detections))
    good = [p for p in poses if p.ok]
    by_view = {d.view: d.detections for d in detections}
    if refine and good:
        observations = []
        for pose in good:
            beads, dets = (list(x) for x in zip(*pose.pairs, strict=True))
            uv = np.array([[by_view[pose.view][j].u, by_view[pose.view][j].v] for j in dets])
            observations.append(ViewObservations(phantom.positions[beads], uv, pose.matrix))
        known = None
        if phantom.intrinsics is not None:
            known = phantom.intrinsics.matrix(load_view_pixels(scan, good[0].view).shape, mirrored=False)
        for pose, matrix in zip(good, refine_views(observations, known, refine_intrinsics), strict=True):
            pose.matrix = matrix
    for pose in good:
        score_view(pose, phantom, by_view[pose.view], max_rms_px)
    return poses


def write_detections(path: Path, scan: Scan, phantom: BeadPhantom, detections: list[ViewDetections]) -> None:
    """The detections JSON (``ixgs-bead-detections/1``), atomically."""
    document = {
        "format": DETECTIONS_FORMAT,
        "scan": str(scan.folder),
        "phantom": phantom.name,
        "views": [d.to_dict() for d in detections],
    }
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(document, indent=1))


def read_detections(path: str | Path, scan: Scan) -> list[ViewDetections]:
    """Detections written by `ixgs poses detect` for this scan (one entry per view)."""
    path = Path(path)
    data = read_json(path, "write one with `ixgs poses detect`")
    if not isinstance(data, dict) or data.get("format") != DETECTIONS_FORMAT:
        raise IXGSError(f'{path}: not a detections file ("format" must be "{DETECTIONS_FORMAT}")')
    views = data.get("views")
    indices = [v.get("view") for v in views if isinstance(v, dict)] if isinstance(views, list) else []
    if (
        len(indices) != len(views or [])
        or not all(type(i) is int for i in indices)
        or sorted(indices) != list(range(len(scan.views)))
    ):
        raise IXGSError(f"{path}: needs one entry per view of the scan (views 0..{len(scan.views) - 1})")
    out = []
    for entry in sorted(views, key=lambda v: v["view"]):
        try:
            found = [Detection.from_dict(d) for d in entry.get("detections", [])]
            confidence = float(entry.get("confidence", 0.0))
        except (KeyError, TypeError, ValueError):
            raise IXGSError(f"{path}: view {entry['view']}: malformed detection (needs numbers u, v)") from None
        out.append(
            ViewDetections(
                entry["view"], scan.views[entry["view"]].image, found, confidence, str(entry.get("message", ""))
            )
        )
    return out
