"""``ixgs batch``: reconstruct several scan folders with one configuration, locally or on a
cluster, skipping cases already reconstructed; one results table for all of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ixgs_engine.device import resolve_device
from ixgs_engine.errors import IXGSError
from ixgs_engine.evaluate.evaluation import scan_reference_path, volume_metrics
from ixgs_engine.experiments.runner import ResultStore, run_tasks
from ixgs_engine.io import atomic_output
from ixgs_engine.io.volumes import read_volume
from ixgs_engine.progress import ProgressCallback
from ixgs_engine.reconstruct import run_files
from ixgs_engine.reconstruct.config import ReconstructionConfig
from ixgs_engine.reconstruct.pipeline import reconstruct_scan

RESULTS_FILE = "batch.json"


def case_names(scans: Sequence[str | Path]) -> list[str]:
    """One output folder name per scan: the folder's name, numbered when names repeat."""
    names = [Path(s).resolve().name for s in scans]
    return [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def reconstruct_case(task: tuple[str, str, ReconstructionConfig, str, float | None, str, float | None]) -> dict:
    """Reconstruct one scan (a picklable task: scan, output, config, device, voxel size,
    volume format, label threshold); with a recorded ground truth, score it too. A case
    interrupted earlier continues from its checkpoint. A user error (a bad scan) is returned as
    ``{"error": message}`` so the other cases go on."""
    scan, output, config, device, voxel_size, volume_format, threshold = task
    unfinished = run_files.has_checkpoint(output) and not (Path(output) / run_files.SUMMARY_FILE).is_file()
    try:
        summary, volume = reconstruct_scan(
            scan,
            output,
            config,
            device,
            resume=unfinished,
            voxel_size=voxel_size,
            volume_format=volume_format,
            threshold=threshold,
            overwrite=True,
        )
    except IXGSError as error:
        return {"scan": scan, "error": str(error)}
    result = {
        "scan": scan,
        "output": output,
        "views": summary.views,
        "iterations": summary.iterations,
        "final_loss": summary.final_loss,
        "seconds": summary.total_seconds,
        "volume": summary.volume_path,
    }
    truth = scan_reference_path(Path(scan))
    if truth is not None:
        metrics = volume_metrics(volume, read_volume(truth))
        result |= {
            "psnr_3d_db": metrics["psnr_3d_db"],
            "ssim_3d": metrics["ssim_3d"],
            "bone_dice": metrics["bone"]["dice"],
        }
    return result


@dataclass
class BatchResult:
    """The finished cases (``rows``, as kept in batch.json) and the failed ones (case name ->
    the message saying what is wrong; they are retried by the next run)."""

    rows: dict[str, dict]
    failures: dict[str, str] = field(default_factory=dict)
    table: Path | None = None


def run_batch(
    scans: Sequence[str | Path],
    output_dir: str | Path,
    config: ReconstructionConfig,
    device: str = "auto",
    cluster: str | None = None,
    progress: ProgressCallback | None = None,
    voxel_size: float | None = None,
    volume_format: str = "nrrd",
    threshold: float | None = None,
) -> BatchResult:
    """Reconstruct every scan into ``output_dir/<name>``; cases already in batch.json are
    skipped, a case that fails is reported and the others go on; batch.md lists them all."""
    output_dir = Path(output_dir)
    names = case_names(scans)
    store = ResultStore(output_dir / RESULTS_FILE, "batch", {"config": config.to_dict()})
    gpu = resolve_device(device).type == "cuda"
    if cluster is not None and device == "auto":
        device = "cuda" if gpu else "cpu"
    tasks = {
        n: (str(s), str(output_dir / n), config, device, voxel_size, volume_format, threshold)
        for n, s in zip(names, scans, strict=True)
        if n not in store.rows
    }
    done = len(names) - len(tasks)
    failures: dict[str, str] = {}
    for name, result in run_tasks(reconstruct_case, tasks, cluster, use_gpu=gpu):
        if "error" in result:
            failures[name] = result["error"]
        else:
            store.add(name, result)
        done += 1
        if progress is not None:
            progress(done, len(names), {"case": name})
    table = write_batch_table(
        output_dir / "batch.md",
        [(n, store.rows.get(n, {"error": failures.get(n, "")})) for n in names if n in store.rows or n in failures],
    )
    return BatchResult(dict(store.rows), failures, table)


def write_batch_table(path: Path, rows: list[tuple[str, dict]]) -> Path:
    """The cases as a markdown table (metrics where a ground truth was recorded; a failed case
    with its message)."""
    lines = [
        "| case | views | iterations | final loss | seconds | 3-D PSNR dB | 3-D SSIM | bone Dice | volume |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'].replace('|', '/')} | | | | | | | |")
            continue
        metrics = [f"{r[k]:.3f}" if k in r else "-" for k in ("psnr_3d_db", "ssim_3d", "bone_dice")]
        lines.append(
            f"| {name} | {r['views']} | {r['iterations']} | {r['final_loss']:.4g} | {r['seconds']:.1f} | "
            + " | ".join(metrics)
            + f" | {r['volume']} |"
        )
    with atomic_output(path) as temp:
        temp.write_text("\n".join(lines) + "\n")
    return path
