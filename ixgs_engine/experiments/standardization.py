"""Does standardization help reconstruction? The ablation on a CT the model never saw.

A standardization model is trained on simulated pairs of spine-phantom variants; then a new
variant (other trabecular seed, stretched and turned anatomy) is imaged with realistic
radiographs at arbitrary poses and reconstructed from four inputs:

- ``raw radiograph``: the processed radiographs, each mapped to [0, 1] between its 1st and 99th
  percentiles, polarity undone with the true inversion flag (as a DICOM reader would from
  PhotometricInterpretation), then one scene-wide factor matching their mean to the ideal DRRs'
  (an oracle scale the baseline could not know: it favours the baseline);
- ``raw -log``: -log of the raw detector signal (the best case, when unprocessed data are
  available: beam hardening, scatter, heel effect and noise remain), negatives clipped, with the
  same oracle scale;
- ``standardized``: the model's output, as is;
- ``ideal DRR``: the bone-enhanced DRRs themselves (the upper bound).

Reconstructions are scored in 3-D against the bone-enhanced attenuation map (PSNR/SSIM of
:mod:`ixgs_engine.evaluate.metrics`), and the input images in 2-D against the ideal DRRs. As a
check that does not favour the bone-enhanced target, each volume is also scored against the
plain attenuation map (bone weight 1) after one least-squares scale factor (``*_plain`` fields).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from pytorch_msssim import ssim

from ixgs_engine.errors import IXGSError
from ixgs_engine.evaluate.metrics import psnr_3d, ssim_3d
from ixgs_engine.io.scan import write_scan
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.reconstruct.config import preset
from ixgs_engine.reconstruct.pipeline import reconstruct_scan
from ixgs_engine.simulate import roi_of_volume
from ixgs_engine.standardize.inference import apply_model
from ixgs_engine.standardize.model import CONFIGS
from ixgs_engine.standardize.pairs import (
    bone_enhanced_attenuation,
    make_simulated_pairs,
    phantom_variant,
    simulate_views,
)
from ixgs_engine.standardize.training import psnr_db, train_model
from ixgs_engine.volume import Volume


@dataclass(frozen=True)
class AblationSettings:
    """Sizes and lengths of one ablation run (defaults: minutes on one CPU core)."""

    size: int = 64  # phantom voxels per side (192 mm field of view)
    detector_pixels: int = 128
    pixel_mm: float = 3.2
    views: int = 25
    train_views: int = 96
    train_variants: int = 4
    train_steps: int = 1500
    model_config: str = "light"
    test_seed: int = 99
    test_variation: float = 0.15
    preset: str = "fast"
    iterations: int = 400
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def images_2d_metrics(images: np.ndarray, ideal: np.ndarray) -> tuple[float, float]:
    """Mean over views of PSNR (dB) and SSIM against the ideal DRRs (peak: each DRR's maximum)."""
    psnrs, ssims = [], []
    for image, reference in zip(images, ideal, strict=True):
        peak = float(reference.max())
        psnrs.append(psnr_db(image, reference))
        pair = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None] for a in (image, reference)]
        ssims.append(float(ssim(pair[0], pair[1], data_range=peak)))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def plain_normalization(radiographs: np.ndarray, inverted: list[bool], reference_mean: float) -> np.ndarray:
    """The non-learned baseline: per-view 1-99 % percentile stretch, true polarity, one
    oracle scale (see module)."""
    out = []
    for image, flip in zip(radiographs, inverted, strict=True):
        low, high = np.percentile(image, (1, 99))
        stretched = np.clip((image - low) / max(float(high - low), 1e-8), 0.0, None)
        out.append(np.max(stretched) - stretched if flip else stretched)
    stack = np.stack(out)
    return (stack * reference_mean / stack.mean()).astype(np.float32)


def scaled_log(log_images: np.ndarray, reference_mean: float) -> np.ndarray:
    """-log images with negatives clipped, scaled by one oracle factor (see module)."""
    clipped = np.maximum(log_images, 0.0)
    return (clipped * reference_mean / clipped.mean()).astype(np.float32)


def scale_fitted(volume: Volume, reference: Volume) -> Volume:
    """``volume`` times the factor that minimizes its squared difference to ``reference``."""
    v = volume.array.astype(np.float64)
    factor = float(np.sum(v * reference.array) / max(float(np.sum(v * v)), 1e-30))
    return volume.with_array((v * factor).astype(np.float32))


def train_ablation_model(
    work_dir: Path, settings: AblationSettings, device: str, progress: ProgressCallback | None
) -> Path:
    """Pairs from ``train_variants`` phantom variants and a model trained on them."""
    cts = [
        (f"spine-{k}", phantom_variant(settings.size, settings.seed + k, settings.test_variation))
        for k in range(settings.train_variants)
    ]
    make_simulated_pairs(
        work_dir / "pairs",
        cts,
        settings.train_views,
        settings.seed,
        settings.detector_pixels,
        settings.pixel_mm,
        device=device,
    )
    model_path = work_dir / "model" / "standardize.pt"
    train_model(
        work_dir / "pairs",
        model_path,
        CONFIGS[settings.model_config],
        settings.train_steps,
        device=device,
        seed=settings.seed,
        progress=progress,
    )
    return model_path


def run_ablation(
    work_dir: str | Path,
    settings: AblationSettings = AblationSettings(),  # noqa: B008 - frozen dataclass, never mutated
    model_path: str | Path | None = None,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> list[dict]:
    """Run the ablation (see module) in ``work_dir``; one result row per input kind. Without
    ``model_path`` a model is first trained on phantom variants that exclude the test CT."""
    work_dir = Path(work_dir)
    if settings.test_seed < settings.seed + settings.train_variants and settings.test_seed >= settings.seed:
        last = settings.seed + settings.train_variants - 1
        raise IXGSError(
            f"the test phantom's seed ({settings.test_seed}) must differ from the training variants' "
            f"seeds ({settings.seed}..{last}); choose another `seed`"
        )
    if model_path is None:
        model_path = train_ablation_model(work_dir, settings, device, progress)
    test_hu = phantom_variant(settings.size, settings.test_seed, settings.test_variation)
    truth = bone_enhanced_attenuation(test_hu)
    plain_truth = bone_enhanced_attenuation(test_hu, bone_weight=1.0)
    views = simulate_views(
        test_hu, settings.views, settings.test_seed, settings.detector_pixels, settings.pixel_mm, device=device
    )
    reference_mean = float(views.targets.mean())
    inputs = {
        "raw radiograph": plain_normalization(views.radiographs, [p["invert"] for p in views.params], reference_mean),
        "raw -log": scaled_log(views.log_images, reference_mean),
        "standardized": apply_model(model_path, views.radiographs, device),
        "ideal DRR": views.targets,
    }
    config = preset(settings.preset, iterations=settings.iterations, seed=settings.seed)
    rows = []
    for name, images in inputs.items():
        folder = work_dir / re.sub(r"[^a-z0-9]+", "-", name.lower())
        write_scan(
            folder / "scan",
            list(images),
            list(views.matrices),
            "line_integral",
            roi_of_volume(truth),
            (settings.pixel_mm, settings.pixel_mm),
        )
        started = time.perf_counter()
        _, volume = reconstruct_scan(
            folder / "scan",
            folder / "reconstruction",
            config,
            device,
            voxel_size=float(truth.spacing[0]),
            progress=progress,
        )
        psnr_2d, ssim_2d = images_2d_metrics(images, views.targets)
        fitted = scale_fitted(volume, plain_truth)
        rows.append(
            {
                "input": name,
                "psnr_2d_db": psnr_2d if math.isfinite(psnr_2d) else None,  # None: identical to the ideal DRRs
                "ssim_2d": ssim_2d,
                "psnr_3d_db": psnr_3d(volume, truth),
                "ssim_3d": ssim_3d(volume, truth),
                "psnr_3d_plain_db": psnr_3d(fitted, plain_truth),
                "ssim_3d_plain": ssim_3d(fitted, plain_truth),
                "reconstruction_seconds": time.perf_counter() - started,
                "volume": str(folder / "reconstruction" / "volume.nrrd"),
            }
        )
    return rows
