"""The ``ixgs-scan/1`` scan folder (docs/scan-format.md): read, validate, load, write.

Every problem names the view and its image file. Readers never write into the scan folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ixgs_engine.errors import GeometryError, ImageReadError, ScanError
from ixgs_engine.geometry.carm import Detector, circular_orbit
from ixgs_engine.geometry.projection import validate_projection_matrix
from ixgs_engine.geometry.roi import ROI, box_fraction_in_view, default_roi
from ixgs_engine.io import atomic_output
from ixgs_engine.io.xray_images import read_xray_image, write_xray_image

FORMAT = "ixgs-scan/1"
SCAN_FILE = "scan.json"
IMAGE_KINDS = ("line_integral", "intensity", "radiograph")
# A line integral above this means a transmission below e^-20 (2e-9), far below any detector's
# range: a typical value above it means the image holds counts or intensities, not line integrals.
MAX_LINE_INTEGRAL = 20.0
# A line-integral view is rejected when more than this fraction of its pixels lies below
# -NEGATIVE_TOLERANCE x its 99th percentile: more than noise, e.g. an inverted image.
NEGATIVE_FRACTION = 0.01
NEGATIVE_TOLERANCE = 0.05
# The air of an intensity view without i0 (see _estimate_i0): pixels whose image smoothed over
# this many pixels is within this share of its brightest.
AIR_SMOOTHING_PX = 2.0
AIR_BAND = 0.02


@dataclass
class View:
    """One X-ray: its image file (relative to the scan folder) and its projection matrix (None
    in a scan whose poses are still to be found, read with ``require_poses=False``)."""

    image: str
    projection_matrix: np.ndarray | None
    pixel_spacing: tuple[float, float] | None = None
    frame: int | None = None
    i0: float | None = None

    def to_dict(self) -> dict:
        out: dict = {"image": self.image}
        if self.projection_matrix is not None:
            out["projection_matrix"] = np.asarray(self.projection_matrix).tolist()
        if self.pixel_spacing is not None:
            out["pixel_spacing"] = [float(s) for s in self.pixel_spacing]
        if self.frame is not None:
            out["frame"] = int(self.frame)
        if self.i0 is not None:
            out["i0"] = float(self.i0)
        return out


@dataclass
class Scan:
    """The contents of scan.json, with circular geometry already expanded into matrices."""

    folder: Path
    image_kind: str
    views: list[View]
    roi: ROI | None = None
    i0: float | None = None
    fiducials: dict | None = None
    geometry: dict | None = None
    extra: dict = field(default_factory=dict)

    def image_path(self, index: int) -> Path:
        return self.folder / self.views[index].image

    @property
    def has_poses(self) -> bool:
        return all(view.projection_matrix is not None for view in self.views)

    @property
    def matrices(self) -> np.ndarray:
        for index, view in enumerate(self.views):
            if view.projection_matrix is None:
                raise ScanError("has no pose yet; estimate the poses first (`ixgs poses estimate`)", index, view.image)
        return np.stack([view.projection_matrix for view in self.views])


@dataclass
class Projections:
    """Line-integral images (N, H, W) ready for reconstruction, with their geometry."""

    values: np.ndarray
    matrices: np.ndarray
    roi: ROI
    roi_is_default: bool

    @property
    def image_shape(self) -> tuple[int, int]:
        return int(self.values.shape[1]), int(self.values.shape[2])


def _scan_json_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / SCAN_FILE
    if not path.is_file():
        raise ScanError(f"{path} not found: a scan is a folder holding {SCAN_FILE} (see docs/scan-format.md)")
    return path


def check_output_apart(output_dir: str | Path, scan_dir: str | Path, what: str = "the run") -> None:
    """Refuse an output folder that is the scan folder being read: a tool's outputs never mix
    with its input (a scan's folder holds only the scan)."""
    scan_folder = Path(scan_dir)
    scan_folder = scan_folder.parent if scan_folder.name == SCAN_FILE else scan_folder
    if Path(output_dir).resolve() == scan_folder.resolve():
        raise ScanError(
            f"the output folder {output_dir} is the scan folder {scan_dir} itself; IXGS never writes into "
            f"the scan it reads: give another folder for {what} (e.g. {scan_folder.resolve().parent / (scan_folder.resolve().name + '-run')})"
        )


def _number_list(value, length: int, what: str, view: int | None = None, image: str | None = None) -> list[float]:
    try:
        numbers = [float(x) for x in value]
    except (TypeError, ValueError):
        raise ScanError(f"{what} must be a list of {length} numbers, got {value!r}", view, image) from None
    if len(numbers) != length or not all(np.isfinite(numbers)):
        raise ScanError(f"{what} must be {length} finite numbers, got {value!r}", view, image)
    return numbers


def _parse_roi(data: dict) -> ROI:
    if not isinstance(data, dict) or "center" not in data or "size" not in data:
        raise ScanError('"roi" needs "center" and "size" (world mm)')
    center = _number_list(data["center"], 3, '"roi.center"')
    size = _number_list(data["size"], 3, '"roi.size"')
    direction = np.eye(3)
    if "direction" in data:
        try:
            direction = np.asarray(data["direction"], dtype=np.float64).reshape(3, 3)
        except (TypeError, ValueError):
            raise ScanError('"roi.direction" must be a 3x3 matrix (rows = box axes in world coordinates)') from None
    try:
        return ROI(np.array(center), np.array(size), direction)
    except GeometryError as error:
        raise ScanError(f'"roi": {error}') from None


def _expand_circular(geometry: dict, count: int) -> list[np.ndarray]:
    if geometry.get("type") != "circular":
        raise ScanError(f'"geometry.type" must be "circular", got {geometry.get("type")!r}')
    missing = [k for k in ("source_to_isocenter", "source_to_detector", "angles_deg", "detector") if k not in geometry]
    if missing:
        raise ScanError(f'"geometry" lacks {", ".join(missing)}')
    detector = geometry["detector"]
    if not isinstance(detector, dict) or "pixels" not in detector or "pixel_spacing" not in detector:
        raise ScanError('"geometry.detector" needs "pixels" [W, H] and "pixel_spacing" [su, sv]')
    angles = geometry["angles_deg"]
    if not isinstance(angles, list) or len(angles) != count:
        raise ScanError(
            f'"geometry.angles_deg" has {len(angles) if isinstance(angles, list) else "no list of"} angles '
            f"but there are {count} views; give one angle per view"
        )
    pixels = _number_list(detector["pixels"], 2, '"geometry.detector.pixels"')
    try:
        return circular_orbit(
            _number_list(angles, count, '"geometry.angles_deg"'),
            float(geometry["source_to_isocenter"]),
            float(geometry["source_to_detector"]),
            Detector(
                pixels=(int(pixels[0]), int(pixels[1])),
                pixel_spacing=tuple(_number_list(detector["pixel_spacing"], 2, '"geometry.detector.pixel_spacing"')),
                offset=tuple(_number_list(detector.get("offset", [0, 0]), 2, '"geometry.detector.offset"')),
            ),
            _number_list(geometry.get("isocenter", [0, 0, 0]), 3, '"geometry.isocenter"'),
        )
    except (GeometryError, TypeError, ValueError) as error:
        raise ScanError(f'"geometry": {error}') from None


def _parse_view(index: int, entry, matrix_from_geometry: np.ndarray | None, require_pose: bool) -> View:
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise ScanError('each view needs an "image" path (relative to the scan folder)', index)
    image = entry["image"]
    if "projection_matrix" in entry and matrix_from_geometry is not None:
        raise ScanError('has a "projection_matrix" and the scan a "geometry"; give one or the other', index, image)
    if matrix_from_geometry is not None:
        matrix = matrix_from_geometry
    elif "projection_matrix" in entry:
        try:
            matrix = validate_projection_matrix(np.asarray(entry["projection_matrix"], dtype=np.float64))
        except (GeometryError, TypeError, ValueError) as error:
            raise ScanError(f"bad projection_matrix: {error}", index, image) from None
    elif require_pose:
        raise ScanError('has no "projection_matrix" and the scan has no "geometry"', index, image)
    else:
        matrix = None
    spacing = None
    if "pixel_spacing" in entry:
        spacing = tuple(_number_list(entry["pixel_spacing"], 2, '"pixel_spacing"', index, image))
        if min(spacing) <= 0:
            raise ScanError(f"pixel_spacing must be positive, got {list(spacing)}", index, image)
    frame = entry.get("frame")
    if frame is not None and (not isinstance(frame, int) or frame < 0):
        raise ScanError(f'"frame" must be a whole number >= 0, got {frame!r}', index, image)
    i0 = entry.get("i0")
    if i0 is not None and not (isinstance(i0, (int, float)) and np.isfinite(i0) and i0 > 0):
        raise ScanError(f'"i0" must be a positive number, got {i0!r}', index, image)
    return View(image=image, projection_matrix=matrix, pixel_spacing=spacing, frame=frame, i0=i0)


def read_scan(path: str | Path, require_poses: bool = True) -> Scan:
    """Parse and check scan.json (not the images). ``path`` is the folder or its scan.json.
    With ``require_poses=False`` views may lack a projection matrix (an uncalibrated scan whose
    poses come from fiducials, docs/poses.md); the matrices that are given are still checked."""
    json_path = _scan_json_path(path)
    try:
        data = json.loads(json_path.read_text())
    except json.JSONDecodeError as error:
        raise ScanError(
            f"{json_path} is not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}"
        ) from None
    except UnicodeDecodeError as error:
        raise ScanError(f"{json_path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ScanError(f"{json_path} must hold a JSON object")
    if data.get("format") != FORMAT:
        raise ScanError(f'{json_path}: "format" must be "{FORMAT}", got {data.get("format")!r}')
    if data.get("units", "mm") != "mm":
        raise ScanError(f'{json_path}: "units" must be "mm" (the only unit), got {data.get("units")!r}')
    kind = data.get("image_kind")
    if kind not in IMAGE_KINDS:
        raise ScanError(f'{json_path}: "image_kind" must be one of {", ".join(IMAGE_KINDS)}, got {kind!r}')
    views = data.get("views")
    if not isinstance(views, list) or not views:
        raise ScanError(f'{json_path}: "views" must be a non-empty list')
    geometry = data.get("geometry")
    matrices: Sequence[np.ndarray | None] = [None] * len(views)
    if geometry is not None:
        if not isinstance(geometry, dict):
            raise ScanError('"geometry" must be an object')
        matrices = _expand_circular(geometry, len(views))
    parsed = [_parse_view(i, entry, matrices[i], require_poses) for i, entry in enumerate(views)]
    i0 = data.get("i0")
    if i0 is not None and not (isinstance(i0, (int, float)) and np.isfinite(i0) and i0 > 0):
        raise ScanError(f'"i0" must be a positive number, got {i0!r}')
    known = {"format", "units", "image_kind", "views", "geometry", "roi", "i0", "fiducials"}
    return Scan(
        folder=json_path.parent,
        image_kind=kind,
        views=parsed,
        roi=_parse_roi(data["roi"]) if "roi" in data else None,
        i0=float(i0) if i0 is not None else None,
        fiducials=data.get("fiducials"),
        geometry=geometry,
        extra={k: v for k, v in data.items() if k not in known},
    )


def _estimate_i0(pixels: np.ndarray) -> float:
    """Air intensity of a view without ``i0``: the median of the pixels of its brightest region.

    The brightest pixels themselves are the photon noise's upper tail: at 3000 photons a pixel
    their median sits 3-5 % above the air signal (3 % on the suite's blurred views), which adds
    that much to every line integral, air included. So the region is found on the image smoothed over ``AIR_SMOOTHING_PX`` (the noise
    averaged out): the pixels whose smoothed value is within ``AIR_BAND`` of its 99.5th
    percentile (the air's slow variation, e.g. scatter near the patient, stays inside the band),
    and the median of their raw values, which symmetric noise does not bias. A view with no flat
    air (textured to its brightest pixels) would get negative line integrals beyond noise from
    that median; it keeps the median of its brightest 0.5 % instead."""
    brightest = float(np.median(pixels[pixels >= np.percentile(pixels, 99.5)]))
    smoothed = ndimage.gaussian_filter(np.asarray(pixels, dtype=np.float64), AIR_SMOOTHING_PX, mode="nearest")
    band = float(np.median(pixels[smoothed >= (1.0 - AIR_BAND) * np.percentile(smoothed, 99.5)]))
    if not band > 0:
        return brightest
    return band if _negative_share(_log_ratio(pixels, band)) <= NEGATIVE_FRACTION else brightest


def _negative_share(values: np.ndarray) -> float:
    """The share of line integrals below ``-NEGATIVE_TOLERANCE`` x their 99th percentile (more
    than noise, see ``NEGATIVE_FRACTION``)."""
    scale = max(float(np.percentile(np.abs(values), 99)), 1e-12)
    return float(np.mean(values < -NEGATIVE_TOLERANCE * scale))


def _intensity_to_line_integral(pixels: np.ndarray, i0: float | None, index: int, image: str) -> np.ndarray:
    air = i0 if i0 is not None else _estimate_i0(pixels)
    if not air > 0:
        raise ScanError("cannot estimate the air intensity I0 (no bright pixels); give i0 in scan.json", index, image)
    positive = pixels > 0
    if positive.mean() < 0.99:
        raise ScanError(
            f"{100 * (1 - positive.mean()):.1f} % of the intensity pixels are <= 0; an intensity image must "
            "be the raw detector signal (is image_kind right?)",
            index,
            image,
        )
    return _log_ratio(pixels, air)


def _log_ratio(pixels: np.ndarray, air: float) -> np.ndarray:
    """``ln(air / pixel)``, pixels at or below zero taken as the smallest positive one."""
    floor = pixels[pixels > 0].min()
    return np.log(air) - np.log(np.maximum(pixels, floor))


def _check_line_integral(values: np.ndarray, index: int, image: str) -> None:
    if not np.any(values):
        raise ScanError(
            "is zero everywhere: no line integral at all (an empty, dark or unexposed image?); remove the view "
            "or fix the file",
            index,
            image,
        )
    typical = float(np.median(np.abs(values)))
    if typical > MAX_LINE_INTEGRAL:
        raise ScanError(
            f"half the pixels exceed {MAX_LINE_INTEGRAL:g} (median {typical:.4g}), which no line integral "
            f"reaches (a transmission below e^-{MAX_LINE_INTEGRAL:g}); these look like raw detector counts or "
            'intensities: set "image_kind" to "intensity" (with "i0" if known)',
            index,
            image,
        )
    negative = _negative_share(values)
    if negative > NEGATIVE_FRACTION:
        raise ScanError(
            f"{100 * negative:.1f} % of the pixels are negative line integrals beyond noise "
            f"(min {values.min():.3g}); the image may be inverted, or be a radiograph or raw intensity: "
            'set "image_kind" accordingly',
            index,
            image,
        )


def load_view_pixels(scan: Scan, index: int) -> np.ndarray:
    """The stored pixels of a view (float64, ``[v, u]``); unreadable or non-finite ones raise a
    ScanError naming the view and file."""
    view = scan.views[index]
    try:
        pixels = read_xray_image(scan.image_path(index), frame=view.frame).pixels.astype(np.float64)
    except ImageReadError as error:
        raise ScanError(str(error), index, view.image) from None
    if not np.all(np.isfinite(pixels)):
        raise ScanError(f"{int(np.sum(~np.isfinite(pixels)))} pixels are NaN or infinite", index, view.image)
    return pixels


def _view_problems(scan: Scan, roi: ROI | None) -> Iterator[tuple[int, np.ndarray | None, ScanError | None]]:
    """Load each view in turn; yield (index, line integrals or None, problem or None)."""
    shape: tuple[int, int] | None = None
    for index, view in enumerate(scan.views):
        try:
            pixels = load_view_pixels(scan, index)
            if shape is None:
                shape = pixels.shape
            elif pixels.shape != shape:
                raise ScanError(
                    f"image is {pixels.shape[1]}x{pixels.shape[0]} (WxH) but view 0 is {shape[1]}x{shape[0]}; "
                    "all views must have the same size",
                    index,
                    view.image,
                )
            if scan.geometry is not None:
                expected = tuple(int(p) for p in scan.geometry["detector"]["pixels"])
                if (pixels.shape[1], pixels.shape[0]) != expected:
                    raise ScanError(
                        f"image is {pixels.shape[1]}x{pixels.shape[0]} (WxH) but geometry.detector.pixels is "
                        f"{expected[0]}x{expected[1]}",
                        index,
                        view.image,
                    )
            if scan.image_kind == "radiograph":
                raise ScanError(
                    "is a processed radiograph; standardize the scan first (`ixgs standardize apply`) "
                    "to get line integrals",
                    index,
                    view.image,
                )
            if scan.image_kind == "intensity":
                values = _intensity_to_line_integral(
                    pixels, view.i0 if view.i0 is not None else scan.i0, index, view.image
                )
            else:
                values = pixels
            _check_line_integral(values, index, view.image)
            if roi is not None and box_fraction_in_view(view.projection_matrix, pixels.shape, roi) == 0.0:
                raise ScanError(
                    "does not see the ROI (no part of the box projects onto the detector); check its "
                    "projection matrix or the ROI",
                    index,
                    view.image,
                )
            yield index, values, None
        except ScanError as problem:
            yield index, None, problem


def load_projections(scan: Scan) -> Projections:
    """Read every view as line integrals (float32), checking sizes, finiteness, sign and
    ROI visibility; the first problem raises ScanError naming the view and file."""
    values: list[np.ndarray] = []
    for _, view_values, problem in _view_problems(scan, scan.roi):
        if problem is not None:
            raise problem
        values.append(view_values)
    stack = np.stack(values).astype(np.float32)
    roi, is_default = scan.roi, False
    if roi is None:
        try:
            roi, is_default = default_roi(list(scan.matrices), stack.shape[1:]), True
        except GeometryError as error:
            raise ScanError(str(error)) from None
    return Projections(values=stack, matrices=scan.matrices, roi=roi, roi_is_default=is_default)


@dataclass
class ScanReport:
    """Everything `ixgs info` shows: the parsed scan (if it parses), image size, ROI, problems."""

    scan: Scan | None
    image_shape: tuple[int, int] | None
    roi: ROI | None
    roi_is_default: bool
    problems: list[str]


def inspect_scan(path: str | Path) -> ScanReport:
    """Like :func:`load_projections` but collects every problem instead of stopping at the first."""
    try:
        scan = read_scan(path)
    except ScanError as error:
        return ScanReport(None, None, None, False, [str(error)])
    problems: list[str] = []
    shape = None
    for _, values, problem in _view_problems(scan, scan.roi):
        if problem is not None:
            problems.append(str(problem))
        elif shape is None:
            shape = values.shape
    roi, is_default = scan.roi, False
    if roi is None and shape is not None:
        try:
            roi, is_default = default_roi(list(scan.matrices), shape), True
        except GeometryError as error:
            problems.append(str(error))
    return ScanReport(scan, shape, roi, is_default, problems)


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_output(path) as temp:
        temp.write_text(text)


def write_scan(
    folder: str | Path,
    images: Sequence[np.ndarray],
    matrices: Sequence[np.ndarray] | None,
    image_kind: str = "line_integral",
    roi: ROI | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    geometry: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a scan folder: float32 TIFF images under images/ and scan.json (each written
    atomically, scan.json last so a folder with scan.json is complete). With a circular
    ``geometry`` block the views carry no matrices of their own; with ``matrices=None`` the scan
    is uncalibrated (poses to be estimated from fiducials). Returns its path."""
    if image_kind not in IMAGE_KINDS:
        raise ValueError(f"image_kind must be one of {IMAGE_KINDS}, got {image_kind!r}")
    if matrices is None:
        matrices = [None] * len(images)
    if len(images) != len(matrices):
        raise ValueError(f"{len(images)} images but {len(matrices)} projection matrices")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    views = []
    for index, (image, matrix) in enumerate(zip(images, matrices, strict=True)):
        name = f"images/{index:03d}.tif"
        write_xray_image(folder / name, np.asarray(image, dtype=np.float32))
        entry = View(name, None if matrix is None else validate_projection_matrix(matrix), pixel_spacing).to_dict()
        if geometry is not None:
            entry.pop("projection_matrix", None)
        views.append(entry)
    document: dict = {"format": FORMAT, "units": "mm", "image_kind": image_kind}
    if geometry is not None:
        document["geometry"] = geometry
    if roi is not None:
        document["roi"] = roi.to_dict()
    document["views"] = views
    document.update(extra or {})
    path = folder / SCAN_FILE
    _atomic_write_text(path, json.dumps(document, indent=1))
    return path
