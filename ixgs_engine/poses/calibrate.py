"""The pose tools' entry points, as ``reconstruct_scan`` is reconstruction's: a scan folder and a
bead phantom in, files out. :func:`detect_scan` writes the beads found in every view
(``detections.json``) with an overlay per view; :func:`calibrate_scan` estimates every view's
projection matrix and writes a new, calibrated scan folder beside a report of every view
(``poses_report.json``) and overlays of the phantom reprojected by each pose. The command line
(``ixgs poses``) and the Slicer module call these and only word what they return.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ixgs_engine.errors import IXGSError
from ixgs_engine.io import atomic_output
from ixgs_engine.io.scan import SCAN_FILE, Scan, check_output_apart, load_view_pixels, write_scan
from ixgs_engine.poses.detection import Detection, merge_manual, view_confidence
from ixgs_engine.poses.inpainting import bead_mask, inpaint
from ixgs_engine.poses.overlays import overlay_png
from ixgs_engine.poses.phantom import BeadPhantom
from ixgs_engine.poses.pipeline import (
    ViewDetections,
    ViewPose,
    attenuation_image,
    detect_view,
    detection_problem,
    estimate_scan,
    read_detections,
    write_detections,
)
from ixgs_engine.progress import ProgressCallback

REPORT_FILE = "poses_report.json"
DETECTIONS_FILE = "detections.json"
OVERLAYS_FOLDER = "overlays"
LISTED_PROBLEMS = 3  # distinct problems the message of a scan with no pose names (all are in the report)

StageProgress = Callable[[str], ProgressCallback]
"""Makes the progress callback of a named stage ("detecting beads", "estimating poses")."""


@dataclass(frozen=True)
class DetectionOptions:
    """How beads are found: ``points`` are manual 2-D points per view index (merged with what
    detection finds, or used alone without ``auto``); ``bead_radius_px`` the shadows' radius
    range in pixels (None: from the beads' sizes and the pixel spacing)."""

    points: Mapping[int, list[Detection]] | None = None
    auto: bool = True
    bead_radius_px: tuple[float, float] | None = None


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate_scan` found and wrote: every view's pose (failed ones with their
    message), the report, and the calibrated scan's ``scan.json``."""

    poses: list[ViewPose]
    report: Path
    scan_file: Path

    @property
    def calibrated(self) -> list[ViewPose]:
        return [pose for pose in self.poses if pose.ok]


def _check_output(scan: Scan, output: Path, options: DetectionOptions) -> None:
    check_output_apart(output, scan.folder, "the poses' outputs")
    if not options.auto and not options.points:
        raise IXGSError("without automatic detection, give manual `points`")


def _detect_views(
    scan: Scan, phantom: BeadPhantom, options: DetectionOptions, progress: ProgressCallback | None
) -> list[ViewDetections]:
    points = options.points or {}
    found = []
    for index in range(len(scan.views)):
        found.append(detect_view(scan, phantom, index, points.get(index), options.auto, options.bead_radius_px))
        if progress is not None:
            progress(index + 1, len(scan.views))
    return found


def _progress(stage_progress: StageProgress | None, stage: str) -> ProgressCallback | None:
    return stage_progress(stage) if stage_progress is not None else None


def detect_scan(
    scan: Scan,
    phantom: BeadPhantom,
    output: str | Path,
    options: DetectionOptions = DetectionOptions(),
    overwrite: bool = False,
    stage_progress: StageProgress | None = None,
) -> tuple[list[ViewDetections], Path]:
    """Find the phantom's bead shadows in every view of ``scan``; write ``detections.json`` and
    an overlay PNG per view into ``output`` (never the scan's own folder). Returns every view's
    detections (a view that cannot be used carries its message) and the detections file."""
    output = Path(output)
    _check_output(scan, output, options)
    path = output / DETECTIONS_FILE
    if path.exists() and not overwrite:
        raise IXGSError(f"{path} exists; pass `overwrite` or choose another folder")
    found = _detect_views(scan, phantom, options, _progress(stage_progress, "detecting beads"))
    write_detections(path, scan, phantom, found)
    for view in found:
        overlay_png(
            output / OVERLAYS_FOLDER / f"view_{view.view:03d}.png",
            attenuation_image(scan, view.view),
            view.detections,
            caption=f"view {view.view}: {len(view.detections)} detections, confidence {view.confidence:.2f}",
        )
    return found, path


def _detections_from_file(
    path: str | Path, scan: Scan, phantom: BeadPhantom, options: DetectionOptions
) -> list[ViewDetections]:
    """Detections read back, with the manual points merged in and each view judged again:
    manual points may complete a view whose detection failed (and this phantom may differ)."""
    points = options.points or {}
    found = read_detections(path, scan)
    for view in found:
        view.detections = merge_manual(view.detections, points.get(view.view, []))
        view.confidence = view_confidence(view.detections, phantom.count)
        view.message = detection_problem(view.detections, phantom)
    return found


def _write_report(path: Path, scan: Scan, phantom: BeadPhantom, poses: list[ViewPose]) -> None:
    good = sum(1 for pose in poses if pose.ok)
    report = {
        "scan": str(scan.folder),
        "phantom": phantom.name,
        "views": [pose.to_dict() for pose in poses],
        "ok_views": good,
        "failed_views": len(poses) - good,
    }
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(report, indent=1))


def _write_calibrated_scan(
    scan: Scan, phantom: BeadPhantom, output: Path, good: list[ViewPose], fill_beads: bool
) -> Path:
    """The views that got a pose, with their matrices (and the bead shadows filled with
    ``fill_beads``), as a new scan whose ``poses`` entry says where it came from."""
    images = []
    for pose in good:
        pixels = load_view_pixels(scan, pose.view)
        images.append(inpaint(pixels, bead_mask(pose.matrix, phantom, pixels.shape)) if fill_beads else pixels)
    spacings = {scan.views[pose.view].pixel_spacing for pose in good}
    extra: dict = {
        "poses": {
            "source_scan": str(scan.folder.resolve()),
            "source_views": [pose.view for pose in good],
            "phantom": phantom.name,
            "report": REPORT_FILE,
            "inpainted": bool(fill_beads),
        }
    }
    if scan.i0 is not None:
        extra["i0"] = scan.i0
    return write_scan(
        output,
        images,
        [pose.matrix for pose in good],
        scan.image_kind,
        scan.roi,
        spacings.pop() if len(spacings) == 1 else None,
        extra=extra,
    )


def _failures(poses: list[ViewPose]) -> str:
    """The views' problems, each once with the views that have it (``views 0, 3: ...``)."""
    views_of: dict[str, list[str]] = {}
    for pose in poses:
        views_of.setdefault(pose.message, []).append(f"{pose.view} ({pose.image})")
    listed = [
        f"view{'s' if len(views) > 1 else ''} {', '.join(views)}: {message}"
        for message, views in list(views_of.items())[:LISTED_PROBLEMS]
    ]
    more = len(views_of) - LISTED_PROBLEMS
    return "; ".join(listed) + (f"; and {more} other problems" if more > 0 else "")


def calibrate_scan(
    scan: Scan,
    phantom: BeadPhantom,
    output: str | Path,
    options: DetectionOptions = DetectionOptions(),
    detections: str | Path | None = None,
    inpaint_beads: bool = True,
    refine_intrinsics: bool = False,
    max_rms_px: float = 1.0,
    overwrite: bool = False,
    stage_progress: StageProgress | None = None,
) -> Calibration:
    """Estimate the projection matrix of every view of ``scan`` from ``phantom``'s beads (found
    by detection as ``options`` say, or read from a ``detections`` file) and write into
    ``output`` (never the scan's own folder): ``poses_report.json`` (every view, failed ones with
    their message), an overlay per view, and a calibrated scan of the views that got a pose
    (reprojection RMS at most ``max_rms_px``), their bead shadows filled with ``inpaint_beads``.
    ``refine_intrinsics`` also refines known intrinsics (unknown ones always are). Raises
    :class:`IXGSError`, after writing the report, when no view got a pose."""
    output = Path(output)
    _check_output(scan, output, options)
    if (output / SCAN_FILE).exists() and not overwrite:
        raise IXGSError(f"{output} already holds a scan; pass `overwrite` or choose another folder")
    if detections is not None:
        found = _detections_from_file(detections, scan, phantom, options)
    else:
        found = _detect_views(scan, phantom, options, _progress(stage_progress, "detecting beads"))
    poses = estimate_scan(
        scan,
        phantom,
        found,
        refine_intrinsics=refine_intrinsics,
        max_rms_px=max_rms_px,
        progress=_progress(stage_progress, "estimating poses"),
    )
    for pose in poses:
        overlay_png(
            output / OVERLAYS_FOLDER / f"view_{pose.view:03d}.png",
            attenuation_image(scan, pose.view),
            found[pose.view].detections,
            phantom,
            pose.matrix,
            caption=f"view {pose.view}: "
            + (f"{len(pose.pairs)} beads, RMS {pose.rms_px:.2f} px" if pose.ok else "FAILED"),
        )
    report = output / REPORT_FILE
    _write_report(report, scan, phantom, poses)
    good = [pose for pose in poses if pose.ok]
    if not good:
        raise IXGSError(f"no view got a pose ({_failures(poses)}; every view is in {report}); no scan written")
    return Calibration(poses, report, _write_calibrated_scan(scan, phantom, output, good, inpaint_beads))


def reprojection_summary(calibration: Calibration) -> tuple[float, float]:
    """Median and worst reprojection RMS (px) over the calibrated views."""
    rms = np.array([pose.rms_px for pose in calibration.calibrated])
    return float(np.median(rms)), float(rms.max())
