"""The suite's cases (``bench_suite.py``): regions of the packaged chest CT, specimens in air, in
situ, and raw detector intensities, each written once as a scan folder with its truth and checks.

- **Specimen in air** (``REGION-specimen-VIEWS``, 10 / 25 / 50 arbitrary poses or a 50-view
  circle): the anatomy resampled at ``FINE_MM`` = 0.5 mm, masked to a rounded block with a soft
  edge that stays inside the box (``specimen_mask``), projected from that grid by RTK; the truth
  is the specimen block-averaged onto 1 mm.
- **In situ** (``REGION-insitu-25``): the whole CT on its own grid in the beam, ROI = the box.
- **Raw** (``REGION-raw-25``): the specimen's views as a C-arm's raw detector signals, and its twin
  ``REGION-mono-25``, the same views as line integrals at the spectrum's effective energy; both
  scored against the attenuation at that energy (``suite_raw``).

``checks.json`` per case: no inverse crime, the truth projects onto the views, nothing at the faces.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_real_ct import BOX_CENTRE_IJK, BOX_MM, BOX_VOXELS, DETECTOR, box_grid, case_matrices, chest_ct, write_case
from suite_raw import attenuation_at, densities, raw_views, truth_at

from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io.volumes import resample_to
from ixgs_engine.phantoms.attenuation import MU_WATER_70KEV
from ixgs_engine.projector.rtk_bridge import rtk_forward_project
from ixgs_engine.volume import Volume, VolumeGrid

# Box centres in the CT's voxel indices (i, j, k); k = 0 is the CT's lowest slice (L3).
REGIONS = {"thoracic": BOX_CENTRE_IJK, "lumbar": (266.0, 200.0, 26.0)}
HELD_OUT = "lumbar"
FINE_MM = 0.5
SPECIMEN_HALF_MM = 54.0
SPECIMEN_POWER = 4.0
SPECIMEN_EDGE_MM = 6.0
FACE_VOXELS = 4
SPECIMEN_VIEWS = ("10", "25", "50", "circular")
CASES = tuple(
    [f"{region}-specimen-{views}" for region in REGIONS for views in SPECIMEN_VIEWS]
    + [f"{region}-insitu-25" for region in REGIONS]
    + [f"{region}-{kind}-25" for region in REGIONS for kind in ("raw", "mono")]
)
CHECKS_FILE = "checks.json"


def parse_case(case: str) -> tuple[str, str, str]:
    """``(region, kind, views)`` of a case name ``REGION-KIND-VIEWS``."""
    region, kind, views = case.split("-")
    return region, kind, views


def specimen_mask(grid: VolumeGrid) -> np.ndarray:
    """(k, j, i) weights in [0, 1] of the rounded specimen about the grid's centre: 1 inside the
    superellipsoid ``sum |x_a / h|^p <= 1`` (``x`` along the grid's axes), falling as a raised
    cosine over ``SPECIMEN_EDGE_MM`` outside it, 0 beyond (the distance to the surface taken
    radially)."""
    counts = grid.shape  # (k, j, i)
    spacing = grid.spacing[::-1]
    k, j, i = np.meshgrid(
        *[(np.arange(n) - (n - 1) / 2.0) * d for n, d in zip(counts, spacing, strict=True)], indexing="ij"
    )
    local = np.stack([i, j, k], axis=-1)
    norm = np.sum(np.abs(local / SPECIMEN_HALF_MM) ** SPECIMEN_POWER, axis=-1) ** (1.0 / SPECIMEN_POWER)
    radius = np.linalg.norm(local, axis=-1)
    beyond = np.where(norm > 1.0, radius * (1.0 - 1.0 / np.maximum(norm, 1e-9)), 0.0)  # mm past the surface
    weight = np.where(beyond < SPECIMEN_EDGE_MM, 0.5 * (1.0 + np.cos(np.pi * beyond / SPECIMEN_EDGE_MM)), 0.0)
    return weight.astype(np.float32)


def block_averaged(volume: Volume, factor: int) -> Volume:
    """``volume`` averaged over ``factor``³ voxel blocks: what each coarser voxel holds."""
    array = torch.as_tensor(np.asarray(volume.array, dtype=np.float32))[None, None]
    coarse = F.avg_pool3d(array, factor)[0, 0].numpy()
    origin = volume.origin + volume.direction @ (volume.spacing * (factor - 1) / 2.0)
    return Volume(coarse, origin, volume.spacing * factor, volume.direction)


def region_volumes(ct: Volume, region: str) -> dict[str, Volume]:
    """The region's fine specimen (projected), its truth (1 mm) and the in-situ truth."""
    centre_ijk = REGIONS[region]
    factor = int(round(BOX_MM / FINE_MM))
    fine_grid = box_grid(ct, centre_ijk, BOX_VOXELS * factor, FINE_MM)
    fine = resample_to(ct, fine_grid)
    specimen = fine.with_array(fine.array * specimen_mask(fine_grid))
    return {
        "fine_specimen": specimen,
        "specimen_truth": block_averaged(specimen, factor),
        "insitu_truth": resample_to(ct, box_grid(ct, centre_ijk, BOX_VOXELS, BOX_MM)),
    }


def case_checks(kind: str, seen: Volume, truth: Volume) -> dict:
    """The inverse-crime and face checks of a case (``SystemExit`` when one fails)."""
    checks = {
        "projected_grid_mm": [float(v) for v in seen.spacing],
        "truth_grid_mm": [float(v) for v in truth.spacing],
        "projected_finer_than_truth": bool(np.all(seen.spacing < truth.spacing - 1e-6) or kind == "insitu"),
    }
    if kind == "insitu":  # the CT's own grid: 0.70 x 0.70 x 2.5 mm, never the 1 mm truth grid
        checks["projected_grid_is_not_the_truths"] = not np.allclose(seen.spacing, truth.spacing)
    else:
        shell = np.ones(truth.shape, dtype=bool)
        shell[(slice(FACE_VOXELS, -FACE_VOXELS),) * 3] = False
        checks["truth_max_on_faces"] = float(truth.array[shell].max())
        checks["specimen_in_air"] = checks["truth_max_on_faces"] == 0.0
        checks["truth_share_nonzero"] = float(np.mean(truth.array > 0))
        checks["specimen_not_empty"] = checks["truth_share_nonzero"] > 0.2
    failed = [name for name, value in checks.items() if value is False]
    if failed:
        raise SystemExit(f"case checks failed: {', '.join(failed)} ({checks})")
    return checks


def prepare(workdir: Path, cases: list[str]) -> None:
    """Write each case's scan folder (RTK projections, ROI = the box, truth and checks beside it) once."""
    missing = [case for case in cases if not (workdir / case / "scan" / "scan.json").exists()]
    if not missing:
        return
    ct = chest_ct()
    shape = (DETECTOR.pixels[1], DETECTOR.pixels[0])
    for region in sorted({parse_case(case)[0] for case in missing}):
        volumes = region_volumes(ct, region)
        raw: dict = {}
        for case in [c for c in missing if parse_case(c)[0] == region]:
            _, kind, views = parse_case(case)
            seen = ct if kind == "insitu" else volumes["fine_specimen"]
            truth = volumes["insitu_truth" if kind == "insitu" else "specimen_truth"]
            matrices = case_matrices("insitu" if kind == "insitu" else views, truth.center())
            began = time.perf_counter()
            image_kind, extra = "line_integral", {}
            if kind in ("raw", "mono"):  # one simulation and one truth for both
                if views not in raw:
                    parts = densities(seen)
                    made = raw_views(parts, matrices, shape)
                    factor = int(round(BOX_MM / FINE_MM))
                    raw[views] = (
                        made,
                        truth_at(tuple(block_averaged(part, factor) for part in parts), made.effective_kev),
                    )
                made, truth = raw[views]
                projections, lines = (
                    (made.signals, made.line_integrals) if kind == "raw" else (made.line_integrals,) * 2
                )
                image_kind = "intensity" if kind == "raw" else image_kind
                extra = {"effective_kev": made.effective_kev, "air_signal": made.air_signal}
                extra["mu_water_per_mm"] = float(attenuation_at(1.0, 0.0, made.effective_kev))
            else:
                projections = lines = rtk_forward_project(seen, matrices, shape)
            checks = case_checks(kind, seen, truth) | extra
            if kind != "insitu":  # the truth lies where the views' specimen is: its own DRRs come close
                own = rtk_forward_project(truth, matrices, shape)
                checks["truth_drr_relative_l2"] = float(np.linalg.norm(own - lines) / np.linalg.norm(lines))
                if checks["truth_drr_relative_l2"] > 0.05:
                    raise SystemExit(f"case {case}: the truth does not project onto the views ({checks})")
            simulation = f"benchmarks/bench_suite.py case {case}"
            write_case(workdir / case / "scan", truth, projections, matrices, simulation, voxel_box(truth), image_kind)
            (workdir / case / CHECKS_FILE).write_text(json.dumps(checks, indent=1) + "\n")
            print(f"case {case}: {len(matrices)} views by RTK in {time.perf_counter() - began:.1f} s, checks {checks}")


def case_water(workdir: Path, case: str) -> float:
    """Water's attenuation (1/mm) at the energy of a case's truth: 70 keV, or a raw case's effective energy."""
    checks = workdir / case / CHECKS_FILE
    recorded = json.loads(checks.read_text()).get("mu_water_per_mm") if checks.exists() else None
    return MU_WATER_70KEV if recorded is None else float(recorded)


def voxel_box(truth: Volume) -> ROI:
    """The ROI of a case: the truth's voxels' box (their outer faces), so a method that writes
    voxels of the truth's size on the ROI writes the truth's voxels and is scored without
    resampling, as the anchor (which reconstructs on the truth's grid) is. The real-CT
    benchmark's ROI, between the outermost voxel centres, put IXGS's 1 mm grid half a voxel off
    the truth's: resampled there and back, the truth itself scored 38.1 / 40.5 dB interior."""
    return ROI(truth.center(), truth.spacing * np.array(truth.size_ijk, dtype=float), truth.direction.T)
