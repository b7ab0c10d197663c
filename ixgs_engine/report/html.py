"""``ixgs report RUN_DIR``: one self-contained HTML page about a reconstruction run.

Everything is inline (PNG images as base64 data URIs, CSS, a few lines of JavaScript), so the
page opens from a USB stick or an e-mail attachment with no network. It shows the run's
settings and timing, the metrics, the volume's slices and MIPs (beside the reference when
there is one), input X-rays beside re-rendered views and residuals, loss curves, per-view
errors, and a rating sheet that clinical evaluators fill in and save as CSV in the browser.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path

import numpy as np

from ixgs_engine.errors import IXGSError
from ixgs_engine.evaluate.evaluation import Evaluation, evaluate_reconstruction, load_reconstruction
from ixgs_engine.evaluate.resample import resample_to
from ixgs_engine.io import atomic_output
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.reconstruct.run_files import read_log
from ixgs_engine.report import plots
from ixgs_engine.report.ratings import CRITERIA, CSV_COLUMNS, LIKERT

REPORT_FILE = "report.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1250px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: .5em 0; }
.note { color: #666; font-size: .9em; }
fieldset { border: 1px solid #ccc; margin-bottom: .6em; }
.likert label { margin-right: 1.2em; }
#rating-status { font-weight: bold; margin-left: 1em; }
details pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: .8em; }
"""

# Builds the ratings CSV (one row per criterion) and saves it as a download; no network.
_SCRIPT = """
const CRITERIA = __CRITERIA__;
const COLUMNS = __COLUMNS__;
function csvField(value) {
  const text = String(value);
  return /[",\\r\\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}
function ratingsCsv() {
  const form = document.getElementById('rating-form');
  const caseId = form.elements['case'].value.trim();
  const rater = form.elements['rater'].value.trim();
  const comment = form.elements['comment'].value.trim();
  if (!rater) { return {error: 'Please enter your rater ID.'}; }
  const saved = new Date().toISOString();
  const lines = [COLUMNS.join(',')];
  const missing = [];
  for (const [key, question] of CRITERIA) {
    const checked = form.querySelector('input[name="' + key + '"]:checked');
    if (!checked) { missing.push(question); continue; }
    lines.push([caseId, rater, key, checked.value, comment, saved].map(csvField).join(','));
  }
  if (missing.length) { return {error: 'Please rate: ' + missing.join('; ')}; }
  return {csv: lines.join('\\r\\n') + '\\r\\n', name: 'ratings_' + caseId + '_' + rater + '.csv'};
}
function downloadRatings() {
  const status = document.getElementById('rating-status');
  const result = ratingsCsv();
  if (result.error) { status.textContent = result.error; status.style.color = '#b00'; return; }
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([result.csv], {type: 'text/csv'}));
  link.download = result.name.replace(/[^A-Za-z0-9_.-]/g, '_');
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 2000);
  status.textContent = 'Saved ' + link.download + ' - send this file to the study coordinator.';
  status.style.color = '#070';
}
document.getElementById('rating-save').addEventListener('click', downloadRatings);
"""


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(rows: list[tuple[str, object]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if np.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_format(v) for v in value)
    return str(value)


def _settings_section(summary: dict) -> str:
    config = summary.get("config", {})
    basics = [
        (k, summary[k])
        for k in (
            "scan",
            "method",
            "views",
            "heldout_views",
            "iterations",
            "gaussians",
            "final_loss",
            "voxel_size_mm",
            "device",
            "backend",
        )
        if k in summary
    ]
    timing = [(k, f"{summary[k]:.1f} s") for k in ("train_seconds", "total_seconds") if k in summary]
    text = "<h2>Run</h2>" + _table(basics + timing)
    if config:
        text += "<details><summary>All reconstruction settings</summary>" + _table(sorted(config.items()))
        text += "</details>"
    return text


def _metrics_section(metrics: dict, comparison_views: list[int], heldout: list[int], psnr, ssim) -> str:
    rows: list[tuple[str, object]] = []
    if "psnr_3d_db" in metrics:
        bone = metrics["bone"]
        rows += [
            ("reference", f"{metrics['reference']} ({metrics['reference_units']})"),
            ("3-D PSNR (dB)", metrics["psnr_3d_db"]),
            ("3-D SSIM", metrics["ssim_3d"]),
            ("reference voxels covered", f"{100 * metrics['reference_coverage']:.1f} %"),
            (f"bone Dice (>= {metrics['bone_threshold_hu']:g} HU)", bone["dice"]),
            ("bone mean surface distance (mm)", bone["mean_surface_distance_mm"]),
            ("bone Hausdorff 95 % (mm)", bone["hausdorff95_mm"]),
        ]
    if comparison_views:
        held = [i for i, v in enumerate(comparison_views) if v in set(heldout)]
        train = [i for i, v in enumerate(comparison_views) if v not in set(heldout)]
        for name, index in (("held-out", held), ("training", train)):
            if index:
                finite = psnr[index][np.isfinite(psnr[index])]
                mean_psnr = float(finite.mean()) if finite.size else float("inf")
                value = f"{mean_psnr:.2f} dB / {ssim[index].mean():.4f}"
                rows.append((f"2-D PSNR / SSIM, {len(index)} {name} views", value))
    if not rows:
        return ""
    note = (
        '<p class="note">3-D metrics follow R&sup2;-Gaussian (volumes divided by the reference maximum; SSIM '
        "averaged over slices along the three axes) on the reference grid, over the part the reconstruction "
        "covers. 2-D metrics compare the volume re-rendered by the voxel projector with the input X-rays.</p>"
    )
    return "<h2>Metrics</h2>" + _table(rows) + note


def _volume_section(evaluation: Evaluation, recon_volume) -> str:
    volumes = [("reconstruction", recon_volume)]
    high = float(np.percentile(recon_volume.array, 99.9))
    if evaluation.reference is not None:
        volumes.append(("reference", resample_to(evaluation.reference, recon_volume.grid)))
        high = float(evaluation.reference.array.max())
    picture = plots.volume_panels(volumes, (0.0, max(high, 1e-6)))
    return (
        '<h2>Volume</h2><p class="note">Mid-slices and maximum intensity projections, attenuation 0 to '
        f"{high:.4g} /mm; the reference is resampled onto the reconstruction grid.</p>"
        + _image(picture, "volume slices")
    )


def _views_section(evaluation: Evaluation, heldout: list[int], max_views: int) -> str:
    comparison = evaluation.comparison
    if comparison is None:
        return ""
    views = comparison.views
    order = sorted(range(len(views)), key=lambda i: (views[i] not in set(heldout), views[i]))
    shown = sorted(order[:max_views])
    picture = plots.view_panels(
        [comparison.views[i] for i in shown], comparison.measured[shown], comparison.rendered[shown], heldout
    )
    errors = plots.per_view_errors(comparison.views, comparison.psnr_db, comparison.ssim, heldout)
    rows = "".join(
        f"<tr><td>{v}</td><td>{'held out' if v in set(heldout) else 'training'}</td><td>{_format(float(p))}</td>"
        f"<td>{s:.4f}</td></tr>"
        for v, p, s in zip(comparison.views, comparison.psnr_db, comparison.ssim, strict=True)
    )
    return (
        "<h2>X-rays: input, re-rendered, residual</h2>"
        + _image(picture, "views")
        + "<h2>Per-view errors</h2>"
        + _image(errors, "per-view errors")
        + "<details><summary>Table</summary><table><tr><th>view</th><th>set</th><th>PSNR (dB)</th><th>SSIM</th></tr>"
        + rows
        + "</table></details>"
    )


def _rating_section(case: str) -> str:
    fieldsets = []
    for key, question in CRITERIA:
        choices = "".join(
            f'<label><input type="radio" name="{key}" value="{score}"> {score}</label>' for score in LIKERT
        )
        fieldsets.append(
            f'<fieldset class="likert"><legend>{html.escape(question)}</legend>'
            f'<span class="note">1 = poor &hellip; 5 = excellent</span><br>{choices}</fieldset>'
        )
    return (
        '<h2>Rating sheet</h2><p class="note">Rate each criterion from 1 (poor) to 5 (excellent) and press '
        "<em>Save ratings (CSV)</em>: the file downloads to this computer; nothing is sent anywhere. "
        "Coordinators merge the files with <code>ixgs ratings FILES... -o summary.csv</code>.</p>"
        '<form id="rating-form" onsubmit="return false">'
        f'<label>Case <input name="case" value="{html.escape(case)}"></label> '
        '<label>Rater ID <input name="rater" placeholder="e.g. R01"></label>'
        + "".join(fieldsets)
        + '<label>Comments<br><textarea name="comment" rows="3" cols="80"></textarea></label><br>'
        '<button type="button" id="rating-save">Save ratings (CSV)</button><span id="rating-status"></span></form>'
    )


def build_report(
    run_dir: str | Path,
    reference: str | Path | None = None,
    reference_units: str = "auto",
    scan_dir: str | Path | None = None,
    output: str | Path | None = None,
    max_views: int = 6,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> tuple[Path, dict]:
    """Write the report page (default RUN_DIR/report.html); returns its path and the metrics.
    All the scan's views are re-rendered for the per-view errors; ``max_views`` of them
    (held-out first) are shown as pictures."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise IXGSError(f"{run_dir} is not a folder; give the output folder of `ixgs reconstruct` or `ixgs baseline`")
    recon = load_reconstruction(run_dir)
    evaluation = evaluate_reconstruction(
        recon, reference, reference_units, scan_dir, "all", device=device, progress=progress
    )
    heldout = recon.heldout_views
    comparison = evaluation.comparison
    log = read_log(run_dir)
    sections = [
        _settings_section(recon.summary),
        _metrics_section(
            evaluation.metrics,
            comparison.views if comparison else [],
            heldout,
            comparison.psnr_db if comparison else None,
            comparison.ssim if comparison else None,
        ),
        _volume_section(evaluation, recon.volume),
        _views_section(evaluation, heldout, max_views),
    ]
    if log:
        sections.append("<h2>Training</h2>" + _image(plots.loss_curves(log), "loss curves"))
    case = run_dir.resolve().name
    sections.append(_rating_section(case))
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    script = _SCRIPT.replace("__CRITERIA__", json.dumps([list(c) for c in CRITERIA])).replace(
        "__COLUMNS__", json.dumps(list(CSV_COLUMNS))
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>IXGS report: {html.escape(case)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>IXGS reconstruction report: {html.escape(case)}</h1>"
        f'<p class="note">{html.escape(str(recon.volume_path))} &middot; created {created}</p>'
        + "".join(sections)
        + f"<script>{script}</script></body></html>\n"
    )
    path = Path(output) if output is not None else run_dir / REPORT_FILE
    with atomic_output(path) as temp:
        temp.write_text(page, encoding="utf-8")
    return path, evaluation.metrics
