"""Training pairs (radiograph -> bone-enhanced DRR): the folder format and how to make them.

A pairs folder holds ``pairs.json`` and float32 TIFF images::

    {"format": "ixgs-pairs/1", "bone_weight": 2.5,
     "pairs": [{"input": "input/0000.tif", "target": "target/0000.tif", "group": "spine-0", ...}, ...]}

``input`` is a radiograph as the C-arm delivers it (any intensity scale, any polarity: the model
normalizes each image); ``target`` is the bone-enhanced DRR of the same pose, a line integral
(dimensionless) of the bone-enhanced attenuation map of :func:`bone_enhanced_attenuation`.
``group`` names the CT/acquisition a pair comes from (kept for reference; training holds out
every 10th pair for validation, whatever its group). Real pairs (real X-rays + DRRs of the
patient's CT at calibrated poses) use the same format: :func:`make_pairs_from_scan` writes them
from a scan folder and a CT.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import affine_transform

from ixgs_engine.errors import IXGSError, ScanError
from ixgs_engine.geometry.carm import Detector
from ixgs_engine.io import atomic_output
from ixgs_engine.io.scan import load_view_pixels, read_scan
from ixgs_engine.io.xray_images import read_xray_image, write_xray_image
from ixgs_engine.phantoms import spine_phantom
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.simulate import CarmSetup, arbitrary_poses, pose_matrices, render_line_integrals
from ixgs_engine.standardize.radiograph import ParamRanges, sample_params, simulate_radiograph
from ixgs_engine.standardize.spectrum import BONE, REFERENCE_KEV, WATER, decompose_hu, mass_attenuation
from ixgs_engine.volume import Volume

PAIRS_FORMAT = "ixgs-pairs/1"
PAIRS_FILE = "pairs.json"
DEFAULT_BONE_WEIGHT = 2.5  # bone attenuation is multiplied by this in the target
PHANTOM_FIELD_OF_VIEW_MM = 192.0


def _reference_coefficients() -> tuple[float, float]:
    """Water and bone attenuation (per g/cm^3 x mm) at the reference energy."""
    return mass_attenuation(WATER, REFERENCE_KEV) / 10.0, mass_attenuation(BONE, REFERENCE_KEV) / 10.0


def bone_enhanced_from_basis(water: np.ndarray, bone: np.ndarray, bone_weight: float) -> np.ndarray:
    """Bone-enhanced attenuation (1/mm) or line integral from water and bone densities (or
    their line integrals): mu_water(70 keV) x water + bone_weight x mu_bone(70 keV) x bone.
    With bone_weight 1 it is the CT's own attenuation at 70 keV."""
    mu_water, mu_bone = _reference_coefficients()
    return (mu_water * np.asarray(water) + bone_weight * mu_bone * np.asarray(bone)).astype(np.float32)


def bone_enhanced_attenuation(hu: Volume, bone_weight: float = DEFAULT_BONE_WEIGHT) -> Volume:
    """The map whose line integrals are the targets (and which a standardized scan reconstructs)."""
    return hu.with_array(bone_enhanced_from_basis(*decompose_hu(hu.array), bone_weight))


def render_basis(
    hu: Volume,
    matrices: np.ndarray,
    image_shape: tuple[int, int],
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Water and bone line integrals (V, H, W), in g/cm^3 x mm, of a CT at the given views."""
    water, bone = decompose_hu(hu.array)
    rendered = []
    for half, density in enumerate((water, bone)):
        # one progress run over both renderings (views 1..2V), not two runs of 1..V
        def report(done: int, total: int, _half: int = half) -> None:
            if progress is not None:
                progress(_half * total + done, 2 * total)

        rendered.append(render_line_integrals(hu.with_array(density), matrices, image_shape, device, report))
    return rendered[0], rendered[1]


def phantom_variant(size: int, seed: int, variation: float) -> Volume:
    """The spine phantom (HU) with its own trabecular texture (``seed``) and, for variation > 0,
    a random anatomy: each axis stretched by up to +-variation and turned by up to
    +-30 x variation degrees about the vertical axis, so a model can be tested on a body it
    never saw."""
    spacing = PHANTOM_FIELD_OF_VIEW_MM / size
    hu = spine_phantom((size,) * 3, spacing, seed=seed)
    if variation <= 0:
        return hu
    rng = np.random.default_rng(seed)
    stretch = 1.0 + rng.uniform(-variation, variation, 3)
    angle = np.deg2rad(rng.uniform(-30.0, 30.0) * variation)
    rotation = np.eye(3)  # array axes (z, y, x): rotate in the (y, x) plane
    rotation[1:, 1:] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    matrix = rotation @ np.diag(1.0 / stretch)  # output index -> input index about the centre
    centre = (np.array(hu.shape) - 1) / 2.0
    array = affine_transform(hu.array, matrix, centre - matrix @ centre, order=1, cval=-1000.0)
    return hu.with_array(array.astype(np.float32))


@dataclass(frozen=True)
class PairSet:
    """A pairs folder: image paths (absolute) and its metadata."""

    folder: Path
    inputs: list[Path]
    targets: list[Path]
    groups: list[str]
    bone_weight: float

    def __len__(self) -> int:
        return len(self.inputs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(input, target) float32 images of one pair, checked for size and finiteness."""
        source = read_xray_image(self.inputs[index]).pixels.astype(np.float32)
        target = read_xray_image(self.targets[index]).pixels.astype(np.float32)
        if source.shape != target.shape:
            raise IXGSError(
                f"{self.folder}: pair {index}: input {self.inputs[index].name} is {source.shape[1]}x{source.shape[0]} "
                f"but target {self.targets[index].name} is {target.shape[1]}x{target.shape[0]}; they must match"
            )
        for name, image in ((self.inputs[index], source), (self.targets[index], target)):
            if not np.all(np.isfinite(image)):
                raise IXGSError(f"{name}: holds NaN or infinite pixels; fix or remove pair {index} of {self.folder}")
        return source, target


def read_pairs(folder: str | Path) -> PairSet:
    """Parse ``pairs.json`` and check that every image exists."""
    folder = Path(folder)
    path = folder / PAIRS_FILE
    if not path.is_file():
        raise IXGSError(
            f"{folder} is not a pairs folder (no {PAIRS_FILE}); make one with `ixgs standardize make-pairs` "
            "(see docs/standardization.md for the format)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise IXGSError(f"{path} is not valid JSON (line {error.lineno}): {error.msg}") from None
    except UnicodeDecodeError:
        raise IXGSError(f"{path} is not a text (JSON) file") from None
    if not isinstance(data, dict) or data.get("format") != PAIRS_FORMAT or not isinstance(data.get("pairs"), list):
        raise IXGSError(f'{path}: needs "format": "{PAIRS_FORMAT}" and a "pairs" list')
    if not data["pairs"]:
        raise IXGSError(f"{path} lists no pairs")
    inputs, targets, groups = [], [], []
    for index, entry in enumerate(data["pairs"]):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) for key in ("input", "target")):
            raise IXGSError(f'{path}: pair {index} needs "input" and "target" image paths')
        for key in ("input", "target"):
            if not (folder / entry[key]).is_file():
                raise IXGSError(f"{path}: pair {index}: {key} image {entry[key]} not found")
        inputs.append(folder / entry["input"])
        targets.append(folder / entry["target"])
        groups.append(str(entry.get("group", "")))
    bone_weight = data.get("bone_weight", DEFAULT_BONE_WEIGHT)
    if not isinstance(bone_weight, (int, float)) or isinstance(bone_weight, bool) or not math.isfinite(bone_weight):
        raise IXGSError(f'{path}: "bone_weight" must be a number, got {bone_weight!r}')
    return PairSet(folder, inputs, targets, groups, float(bone_weight))


def write_pairs(
    folder: str | Path, inputs: list[np.ndarray], targets: list[np.ndarray], entries: list[dict], info: dict
) -> Path:
    """Write images and ``pairs.json`` (last, atomically); ``entries`` add per-pair metadata."""
    folder = Path(folder)
    pairs = []
    for index, (source, target, entry) in enumerate(zip(inputs, targets, entries, strict=True)):
        names = {"input": f"input/{index:04d}.tif", "target": f"target/{index:04d}.tif"}
        write_xray_image(folder / names["input"], np.asarray(source, np.float32))
        write_xray_image(folder / names["target"], np.asarray(target, np.float32))
        pairs.append({**names, **entry})
    document = {"format": PAIRS_FORMAT, **info, "pairs": pairs}
    path = folder / PAIRS_FILE
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(document, indent=1))
    return path


@dataclass(frozen=True)
class SimulatedViews:
    """Radiographs and their targets for one CT, plus what a baseline or ablation needs."""

    matrices: np.ndarray
    radiographs: np.ndarray  # processed display images (V, H, W)
    log_images: np.ndarray  # -log of the detector signal, before display processing
    targets: np.ndarray  # bone-enhanced DRRs (line integrals)
    params: list[dict]


def simulate_views(
    hu: Volume,
    views: int,
    seed: int,
    detector_pixels: int = 128,
    pixel_mm: float = 3.2,
    bone_weight: float = DEFAULT_BONE_WEIGHT,
    ranges: ParamRanges = ParamRanges(),  # noqa: B008 - frozen dataclass, never mutated
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> SimulatedViews:
    """Realistic radiographs of a CT (HU) at random C-arm poses, each with random acquisition
    and processing settings, and the bone-enhanced DRRs of the same poses."""
    rng = np.random.default_rng(seed)
    setup = CarmSetup(detector=Detector((detector_pixels, detector_pixels), (pixel_mm, pixel_mm)))
    poses = arbitrary_poses(views, isocenter=tuple(hu.center()), isocenter_jitter_mm=15.0, seed=seed)
    matrices = pose_matrices(poses, setup)
    water, bone = render_basis(hu, matrices, (detector_pixels, detector_pixels), device)
    radiographs, logs, params = [], [], []
    for view in range(views):
        settings = sample_params(rng, pixel_mm, ranges)
        simulated = simulate_radiograph(water[view], bone[view], settings, rng)
        radiographs.append(simulated.radiograph)
        logs.append(simulated.log_image)
        params.append(settings.to_dict())
        if progress is not None:
            progress(view + 1, views)
    targets = bone_enhanced_from_basis(water, bone, bone_weight)
    return SimulatedViews(matrices, np.stack(radiographs), np.stack(logs), targets, params)


def make_simulated_pairs(
    output: str | Path,
    cts: list[tuple[str, Volume]],
    views: int,
    seed: int,
    detector_pixels: int = 128,
    pixel_mm: float = 3.2,
    bone_weight: float = DEFAULT_BONE_WEIGHT,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> Path:
    """Pairs from one or more named CTs (HU), ``views`` spread evenly over them; returns pairs.json."""
    inputs, targets, entries = [], [], []
    counts = np.diff(np.linspace(0, views, len(cts) + 1).round().astype(int))
    done = 0
    for index, ((name, hu), count) in enumerate(zip(cts, counts, strict=True)):
        if count == 0:  # fewer views than CTs: this one gets none
            continue
        offset = done

        def report(view: int, _total: int, _offset: int = offset) -> None:
            if progress is not None:
                progress(_offset + view, views)

        simulated = simulate_views(
            hu, int(count), seed + 1000 * index, detector_pixels, pixel_mm, bone_weight, device=device, progress=report
        )
        inputs += list(simulated.radiographs)
        targets += list(simulated.targets)
        entries += [
            {"group": name, "projection_matrix": m.tolist(), "simulation": p}
            for m, p in zip(simulated.matrices, simulated.params, strict=True)
        ]
        done += int(count)
    info = {"bone_weight": bone_weight, "source": "simulated", "parameter_ranges": ParamRanges().to_dict()}
    return write_pairs(output, inputs, targets, entries, info)


def make_pairs_from_scan(
    output: str | Path,
    hu: Volume,
    scan_dir: str | Path,
    bone_weight: float = DEFAULT_BONE_WEIGHT,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> Path:
    """Real pairs: each view of a scan (real X-rays with calibrated projection matrices, the CT
    registered to the scan's world frame) with the bone-enhanced DRR of the CT at its pose."""
    scan = read_scan(scan_dir)
    images = []
    for index, view in enumerate(scan.views):
        images.append(load_view_pixels(scan, index).astype(np.float32))
        if images[-1].shape != images[0].shape:
            raise ScanError("image size differs from view 0; all views must have the same size", index, view.image)
    water, bone = render_basis(hu, scan.matrices, images[0].shape, device, progress)
    targets = bone_enhanced_from_basis(water, bone, bone_weight)
    entries = [
        {"group": str(scan.folder.name), "projection_matrix": v.projection_matrix.tolist(), "scan_image": v.image}
        for v in scan.views
    ]
    info = {"bone_weight": bone_weight, "source": f"scan {scan.folder}", "image_kind": scan.image_kind}
    return write_pairs(output, images, list(targets), entries, info)
