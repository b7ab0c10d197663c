"""An experiment's results as one table (markdown and CSV; the JSON is the result store) and
one plot, IXGS beside RTK SART."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ixgs_engine.experiments.sweeps import knee
from ixgs_engine.io import atomic_output
from ixgs_engine.report.plots import figure_png

METHODS = (("ixgs", "IXGS"), ("sart", "RTK SART"))
SCORES = (
    ("psnr_db", "PSNR dB", ".2f"),
    ("ssim", "SSIM", ".3f"),
    ("bone_dice", "bone Dice", ".3f"),
    ("bone_msd_mm", "bone MSD mm", ".2f"),
    ("seconds", "s", ".1f"),
)
CONFIG_COLUMNS = (
    ("orbit", "orbit"),
    ("views", "views"),
    ("init", "IXGS init"),
    ("rotation_noise_deg", "pose error deg"),
    ("translation_noise_mm", "pose error mm"),
    ("refine_poses", "IXGS refine poses"),
)
# The pose error IXGS's refinement leaves (poses rows): median over views, gauge removed.
POSE_ERROR_COLUMNS = (("ixgs_pose_error_deg", "IXGS pose error after, deg"), ("ixgs_pose_error_mm", "mm"))


def _markdown_table(title: str, head: list[str], body: list[list[str]]) -> list[str]:
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _write_files(
    output_dir: Path, kind: str, lines: list[str], head: list[str], body: list[list[str]], png: bytes
) -> dict[str, Path]:
    """``<kind>.md`` (``lines``), ``<kind>.csv`` (``head`` + ``body``) and ``<kind>.png``, atomically."""
    paths = {
        "markdown": output_dir / f"{kind}.md",
        "csv": output_dir / f"{kind}.csv",
        "plot": output_dir / f"{kind}.png",
    }
    with atomic_output(paths["markdown"]) as temp:
        temp.write_text("\n".join(lines) + "\n")
    with atomic_output(paths["csv"]) as temp, temp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(head)
        writer.writerows(body)
    with atomic_output(paths["plot"]) as temp:
        temp.write_bytes(png)
    return paths


def write_tables(output_dir: str | Path, kind: str, rows: list[dict], title: str) -> dict[str, Path]:
    """``<kind>.md``, ``<kind>.csv`` and ``<kind>.png`` in ``output_dir``; returns their paths."""
    output_dir = Path(output_dir)
    extra = POSE_ERROR_COLUMNS if kind == "poses" else ()
    head = [label for _, label in CONFIG_COLUMNS] + [f"{m} {label}" for _, m in METHODS for _, label, _ in SCORES]
    head += [label for _, label in extra]
    body = []
    for row in rows:
        # rows stored before a column existed show it empty
        cells = [str(row.get(key, "")) for key, _ in CONFIG_COLUMNS]
        cells += [format(row[f"{method}_{key}"], fmt) for method, _ in METHODS for key, _, fmt in SCORES]
        cells += [format(row[key], ".3f") if key in row else "" for key, _ in extra]
        body.append(cells)
    lines = _markdown_table(title, head, body)
    if kind == "views":
        for method, name in METHODS:
            bend = knee([r["views"] for r in rows], [r[f"{method}_psnr_db"] for r in rows])
            lines.append("")
            lines.append(f"{name}: knee of PSNR vs views at " + (f"{bend:g} views." if bend else "- (no bend found)."))
    png = _views_plot(rows) if kind == "views" else _poses_plot(rows)
    return _write_files(output_dir, kind, lines, head, body, png)


def _views_plot(rows: list[dict]) -> bytes:
    figure = Figure(figsize=(10, 3.6))
    axes = figure.subplots(1, 3, gridspec_kw={"wspace": 0.35})
    views = [r["views"] for r in rows]
    for ax, (key, label, _) in zip(axes, SCORES[:3], strict=True):
        for method, name in METHODS:
            ax.plot(views, [r[f"{method}_{key}"] for r in rows], marker="o", label=name)
        ax.set_xlabel("views")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle("View-count sweep")
    return figure_png(figure)


def _poses_plot(rows: list[dict]) -> bytes:
    labels = [
        f"{r['orbit']}, {r['init']}, {r['rotation_noise_deg']:g}°/{r['translation_noise_mm']:g} mm, "
        f"refine {r.get('refine_poses', 'off')}"
        for r in rows
    ]
    figure = Figure(figsize=(10, 0.35 * len(rows) + 1.8))
    axes = figure.subplots(1, 2, sharey=True)
    positions = np.arange(len(rows))
    for ax, (key, label, _) in zip(axes, SCORES[:2], strict=True):
        for offset, (method, name) in zip((-0.2, 0.2), METHODS, strict=True):
            ax.barh(positions + offset, [r[f"{method}_{key}"] for r in rows], height=0.4, label=name)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions, labels, fontsize=8)
    axes[0].invert_yaxis()
    figure.legend(*axes[0].get_legend_handles_labels(), loc="upper right", fontsize=8)
    figure.suptitle("Pose robustness (orbit, IXGS init, pose error, IXGS pose refinement)")
    return figure_png(figure)


def write_generic_tables(
    output_dir: str | Path, kind: str, rows: list[dict], title: str, label: str
) -> dict[str, Path]:
    """Rows of any keys (numbers formatted to 4 significant digits, paths left out) as
    ``<kind>.md`` and ``.csv``, and a bar plot of their 3-D PSNR and SSIM per ``label``."""
    output_dir = Path(output_dir)
    head = [k for k in rows[0] if k != "volume"]
    body = [[format(r[k], ".4g") if isinstance(r[k], float) else str(r[k]) for k in head] for r in rows]
    figure = Figure(figsize=(9, 3.4))
    axes = figure.subplots(1, 2)
    names = [str(r[label]) for r in rows]
    for ax, (key, name) in zip(axes, (("psnr_3d_db", "3-D PSNR dB"), ("ssim_3d", "3-D SSIM")), strict=True):
        ax.bar(names, [r[key] for r in rows])
        ax.set_ylabel(name)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(title, fontsize=9)
    return _write_files(output_dir, kind, _markdown_table(title, head, body), head, body, figure_png(figure))
