"""2-D agreement of a volume with a scan's X-rays: re-render the volume at chosen views with
the voxel projector and score each rendering against the measured line integrals.

Views held out from training (recorded by a reconstruction with ``holdout_every``) measure how
well the volume predicts X-rays it has not seen; training views measure the fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ixgs_engine.errors import IXGSError
from ixgs_engine.evaluate.metrics import psnr_2d, ssim_2d
from ixgs_engine.io.scan import Projections
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.simulate import render_line_integrals
from ixgs_engine.volume import Volume


@dataclass
class ViewComparison:
    """Measured and re-rendered line integrals (N, H, W) of the chosen views, with per-view
    PSNR (dB) and SSIM."""

    views: list[int]
    measured: np.ndarray
    rendered: np.ndarray
    psnr_db: np.ndarray
    ssim: np.ndarray

    def summary(self) -> dict:
        """Means and per-view values, JSON-ready."""
        finite = self.psnr_db[np.isfinite(self.psnr_db)]
        return {
            "views": self.views,
            "psnr_2d_db_mean": float(finite.mean()) if finite.size else float("inf"),
            "ssim_2d_mean": float(self.ssim.mean()),
            "per_view": [
                {"view": v, "psnr_db": float(p), "ssim": float(s)}
                for v, p, s in zip(self.views, self.psnr_db, self.ssim, strict=True)
            ],
        }


def check_views(views: Sequence[int], count: int) -> list[int]:
    """The view indices as ints, each checked against the scan's ``count`` views."""
    chosen = [int(v) for v in views]
    bad = [v for v in chosen if not 0 <= v < count]
    if bad or not chosen:
        raise IXGSError(f"view indices must be in 0..{count - 1} (the scan has {count} views), got {bad or 'none'}")
    return chosen


def compare_views(
    volume: Volume,
    projections: Projections,
    views: Sequence[int],
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> ViewComparison:
    """Re-render ``volume`` at ``views`` of a scan and score each view (PSNR/SSIM with the
    measured view's maximum as the peak)."""
    chosen = check_views(views, len(projections.values))
    measured = projections.values[chosen]
    blank = [v for v, image in zip(chosen, measured, strict=True) if not float(image.max()) > 0]
    if blank:
        raise IXGSError(
            f"views {blank} have no positive line integral (no object in the X-ray); leave them out with `views`"
        )
    rendered = render_line_integrals(volume, projections.matrices[chosen], projections.image_shape, device, progress)
    return ViewComparison(chosen, measured, rendered, psnr_2d(rendered, measured), ssim_2d(rendered, measured))
