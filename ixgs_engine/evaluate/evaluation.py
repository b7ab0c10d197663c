"""``ixgs evaluate``: score a reconstruction against a reference volume (3-D PSNR/SSIM, bone
Dice and surface distances) and against its scan's X-rays (2-D PSNR/SSIM of re-rendered
views, held-out ones by default), and write the numbers as JSON.

A reconstruction is a volume file or a run folder (``ixgs reconstruct``'s output, whose
summary.json names the volume, the scan and the held-out views). A reference in Hounsfield
units (a CT) is converted to attenuation (1/mm, water at 70 keV) first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ixgs_engine.errors import IXGSError
from ixgs_engine.evaluate.metrics import psnr_3d, ssim_3d
from ixgs_engine.evaluate.projections import ViewComparison, compare_views
from ixgs_engine.evaluate.resample import align_to_reference
from ixgs_engine.evaluate.surface import DEFAULT_BONE_HU, bone_threshold, surface_metrics
from ixgs_engine.io import atomic_output
from ixgs_engine.io.scan import load_projections, read_scan
from ixgs_engine.io.volumes import read_volume, require_finite
from ixgs_engine.phantoms import hu_to_attenuation
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.reconstruct import run_files
from ixgs_engine.volume import Volume

METRICS_FILE = "metrics.json"
HU_MINIMUM_BELOW = -500.0  # a volume whose minimum is below this is taken to be in HU (air = -1000)


@dataclass
class Reconstruction:
    """A volume to evaluate and, for a run folder, what its summary.json records."""

    volume: Volume
    volume_path: Path
    run_dir: Path | None = None
    summary: dict = field(default_factory=dict)

    @property
    def scan_dir(self) -> Path | None:
        """The run's scan folder (see ``run_files.scan_path``); None for a bare volume file."""
        if self.run_dir is None:
            return None
        path = run_files.scan_path(self.run_dir, self.summary)
        if path is not None and not path.is_dir():
            where = self.run_dir / run_files.SUMMARY_FILE
            raise IXGSError(f"the run's scan folder {path} (from {where}) is not found; give `scan_dir`")
        return path

    @property
    def heldout_views(self) -> list[int]:
        return [int(v) for v in self.summary.get("heldout_views", [])]


def load_reconstruction(path: str | Path) -> Reconstruction:
    """A volume file, or a run folder holding summary.json (its ``volume_path``, relative to
    the folder, so a copied folder reads its own volume from any working directory)."""
    path = Path(path)
    if path.is_dir():
        summary = run_files.read_summary(path)
        if not summary.get("volume_path"):
            raise IXGSError(f"{path / run_files.SUMMARY_FILE} names no volume; re-run the reconstruction")
        volume_path = run_files.run_path(path, summary["volume_path"])
        return Reconstruction(read_volume(volume_path), volume_path, path, summary)
    return Reconstruction(read_volume(path), path)


def as_attenuation(volume: Volume, units: str = "auto") -> tuple[Volume, str]:
    """The volume in 1/mm and the units it was in: ``hu`` (converted), ``mu`` or ``auto``
    (HU when its minimum is below -500)."""
    if units not in ("auto", "hu", "mu"):
        raise ValueError(f"units must be auto, hu or mu, got {units!r}")
    if units == "auto":
        units = "hu" if float(np.min(volume.array)) < HU_MINIMUM_BELOW else "mu"
    return (hu_to_attenuation(volume) if units == "hu" else volume), units


def volume_metrics(volume: Volume, reference: Volume, bone_hu: float = DEFAULT_BONE_HU) -> dict:
    """3-D PSNR/SSIM and bone-surface metrics of ``volume`` against ``reference`` (both 1/mm),
    on the reference grid over their overlap."""
    pair = align_to_reference(volume, reference)
    threshold = bone_threshold(bone_hu)
    if not float(np.max(pair.reference.array)) > 0:
        raise IXGSError(
            "the reference has no positive attenuation where the volumes overlap; check the reference "
            "and `reference_units`"
        )
    try:
        bone = surface_metrics(pair.test, pair.reference, threshold).to_dict()
    except ValueError as error:  # no reference voxel at or above the bone threshold
        raise IXGSError(f"{error} ({bone_hu:g} HU); lower `bone_hu` or check `reference_units`") from None
    return {
        "psnr_3d_db": psnr_3d(pair.test, pair.reference),
        "ssim_3d": ssim_3d(pair.test, pair.reference),
        "reference_coverage": pair.coverage,
        "compared_shape_zyx": list(pair.reference.shape),
        "bone_threshold_hu": bone_hu,
        "bone_threshold_per_mm": threshold,
        "bone": bone,
    }


def choose_views(selection: str | Sequence[int] | None, count: int, heldout: Sequence[int]) -> tuple[list[int], str]:
    """View indices and their name: ``heldout`` (the run's held-out views), ``training``,
    ``all``, or explicit indices. None picks the held-out views when there are any, else all."""
    if selection is None:
        selection = "heldout" if heldout else "all"
    if selection == "heldout":
        if not heldout:
            raise IXGSError("the run held out no views; reconstruct with `holdout_every` K, or evaluate `views` all")
        return list(heldout), "heldout"
    if selection == "all":
        return list(range(count)), "all"
    if selection == "training":
        return [v for v in range(count) if v not in set(heldout)], "training"
    if isinstance(selection, str):
        try:
            return [int(v) for v in selection.split(",") if v.strip()], "listed"
        except ValueError:
            raise IXGSError(
                f"`views` takes heldout, training, all or comma-separated indices, got {selection!r}"
            ) from None
    return [int(v) for v in selection], "listed"


def scan_reference_path(scan_dir: Path) -> Path | None:
    """The ground truth a simulated scan records (scan.json ``ground_truth``), if any."""
    name = read_scan(scan_dir).extra.get("ground_truth")
    return scan_dir / name if isinstance(name, str) and (scan_dir / name).is_file() else None


@dataclass
class Evaluation:
    """Everything ``ixgs evaluate`` computed: the metrics JSON and the data behind it."""

    metrics: dict
    reference: Volume | None = None
    comparison: ViewComparison | None = None


def evaluate_reconstruction(
    recon: Reconstruction,
    reference_path: str | Path | None = None,
    reference_units: str = "auto",
    scan_dir: str | Path | None = None,
    views: str | Sequence[int] | None = None,
    bone_hu: float = DEFAULT_BONE_HU,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> Evaluation:
    """Score a reconstruction. The scan defaults to the run's; the reference to the scan's
    recorded ground truth. Without a reference only the 2-D metrics are computed, without a
    scan only the 3-D ones; with neither, IXGSError."""
    scan_dir = Path(scan_dir) if scan_dir is not None else recon.scan_dir
    if reference_path is None and scan_dir is not None:
        reference_path = scan_reference_path(scan_dir)
    if reference_path is None and scan_dir is None:
        raise IXGSError(
            "nothing to compare with: give `reference_path` (a CT or volume) and/or `scan_dir` (the X-rays)"
        )
    metrics: dict = {"volume": str(recon.volume_path)}
    evaluation = Evaluation(metrics)
    if reference_path is not None:
        reference, units = as_attenuation(require_finite(read_volume(reference_path), reference_path), reference_units)
        metrics |= {"reference": str(reference_path), "reference_units": units}
        metrics |= volume_metrics(recon.volume, reference, bone_hu)
        evaluation.reference = reference
    if scan_dir is not None:
        projections = load_projections(read_scan(scan_dir))
        chosen, kind = choose_views(views, len(projections.values), recon.heldout_views)
        comparison = compare_views(recon.volume, projections, chosen, device, progress)
        metrics |= {"scan": str(scan_dir), "view_set": kind} | comparison.summary()
        evaluation.comparison = comparison
    return evaluation


def write_metrics(path: str | Path, metrics: dict) -> Path:
    """The metrics as indented JSON (infinities as the strings "inf"), written atomically."""

    def plain(value):
        if isinstance(value, float) and not np.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    path = Path(path)
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(plain(metrics), indent=1))
    return path
