"""The report's pictures as PNG bytes, drawn with matplotlib's Agg canvas (no display, no
pyplot state): volume slices and MIPs, views beside their re-renderings and residuals, loss
curves and per-view errors."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ixgs_engine.evaluate.figures import orthogonal_views
from ixgs_engine.volume import Volume

_DPI = 100
_PLANES = ("axial", "coronal", "sagittal")


def figure_png(figure: Figure) -> bytes:
    """The figure rendered to PNG bytes."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _aspects(volume: Volume) -> list[float]:
    """Row/column pixel aspect of the axial, coronal and sagittal images (spacing x, y, z)."""
    sx, sy, sz = volume.spacing
    return [sy / sx, sz / sx, sz / sy]


def volume_panels(volumes: Sequence[tuple[str, Volume]], window: tuple[float, float]) -> bytes:
    """One row per volume: axial, coronal and sagittal mid-slices in grey over ``window`` (1/mm),
    then the three MIPs, whose window reaches up to the volume's own maximum when that is higher."""
    figure = Figure(figsize=(13, 2.4 * len(volumes)))
    axes = figure.subplots(len(volumes), 6, squeeze=False)
    for row, (label, volume) in enumerate(volumes):
        images = orthogonal_views(volume, "slice") + orthogonal_views(volume, "mip")
        mip_window = (window[0], float(max(window[1], np.max(volume.array))))
        for column, (image, aspect) in enumerate(zip(images, _aspects(volume) * 2, strict=True)):
            ax = axes[row, column]
            low, high = window if column < 3 else mip_window
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            kind = "slice" if column < 3 else "MIP"
            ax.set_title(f"{label}: {_PLANES[column % 3]} {kind}", fontsize=8)
    return figure_png(figure)


def view_panels(views: Sequence[int], measured: np.ndarray, rendered: np.ndarray, heldout: Sequence[int]) -> bytes:
    """One row per view: the input X-ray, the volume re-rendered there, and the residual
    (rendered - input, blue-white-red over a symmetric range)."""
    figure = Figure(figsize=(9, 2.8 * len(views)))
    axes = figure.subplots(len(views), 3, squeeze=False)
    for row, view in enumerate(views):
        high = float(max(measured[row].max(), rendered[row].max(), 1e-12))
        residual = rendered[row] - measured[row]
        limit = float(max(np.abs(residual).max(), 1e-12))
        tag = "held out" if view in set(heldout) else "training"
        for column, (image, title) in enumerate(
            [(measured[row], "input"), (rendered[row], "re-rendered"), (residual, "residual")]
        ):
            ax = axes[row, column]
            if column < 2:
                shown = ax.imshow(image, cmap="gray", vmin=0.0, vmax=high, interpolation="nearest")
            else:
                shown = ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"view {view} ({tag}): {title}", fontsize=8)
    return figure_png(figure)


def loss_curves(log: Sequence[dict]) -> bytes:
    """Training loss terms against the iteration (log scale), with the Gaussian count."""
    figure = Figure(figsize=(8, 3.6))
    ax = figure.subplots()
    iterations = np.array([entry["iteration"] for entry in log])
    for key in ("loss", "l1", "dssim", "tv"):
        values = np.array([entry.get(key, np.nan) for entry in log], dtype=np.float64)
        if np.any(np.isfinite(values) & (values > 0)):
            ax.plot(iterations, values, label=key, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    counts = np.array([entry.get("gaussians", np.nan) for entry in log], dtype=np.float64)
    if np.any(np.isfinite(counts)):
        twin = ax.twinx()
        twin.plot(iterations, counts, color="grey", linestyle="--", linewidth=1, label="Gaussians")
        twin.set_ylabel("Gaussians")
        twin.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    return figure_png(figure)


def per_view_errors(views: Sequence[int], psnr_db: np.ndarray, ssim: np.ndarray, heldout: Sequence[int]) -> bytes:
    """2-D PSNR and SSIM per view as bars, held-out views in orange."""
    figure = Figure(figsize=(max(6.0, 0.3 * len(views) + 2), 4.2))
    top, bottom = figure.subplots(2, 1, sharex=True)
    colors = ["tab:orange" if v in set(heldout) else "tab:blue" for v in views]
    positions = np.arange(len(views))
    finite = np.where(np.isfinite(psnr_db), psnr_db, np.nan)
    top.bar(positions, finite, color=colors)
    top.set_ylabel("PSNR (dB)")
    bottom.bar(positions, ssim, color=colors)
    bottom.set_ylabel("SSIM")
    bottom.set_xticks(positions, [str(v) for v in views], fontsize=7)
    bottom.set_xlabel("view (orange: held out from training)")
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    return figure_png(figure)
