"""The files of a run folder, in one place: their names, and how each is read and written.

A run folder (``ixgs reconstruct -o RUN``, ``ixgs baseline``) holds ``checkpoint.pt`` (the
training state, for a resumed run), ``log.jsonl`` (one JSON object per step), ``summary.json``
(what the run did and which files it wrote) and the outputs it names (``volume.<fmt>``,
``gaussians.npz``, ``label.<fmt>``); ``preview.nrrd``, the run's classical start on the output
grid, is written as soon as it exists (a first look, replaced by the volume when the run ends).

- **Self-contained.** Paths in ``summary.json`` are relative to the run folder, so a copied or
  moved folder still names its own files whatever the working directory; the scan (outside the
  folder) is recorded both absolute and relative to the folder, and the relative one wins when
  it exists (a copied demo folder finds its own scan).
- **No code on load.** The checkpoint holds tensors, numbers, strings, lists and dicts only and
  is read with ``torch.load(weights_only=True)``: a crafted file cannot run code.
- **Atomic.** Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ixgs_engine.errors import IXGSError
from ixgs_engine.io import atomic_output

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.jsonl"
SUMMARY_FILE = "summary.json"
PREVIEW_FILE = "preview.nrrd"
REFINED_SCAN_FOLDER = "refined_scan"  # the scan with the refined poses, when they were refined
CHECKPOINT_FORMAT = "ixgs-checkpoint/1"
PATH_FIELDS = ("volume_path", "gaussians_path", "label_path", "preview_path")


# ---------------------------------------------------------------- log
def read_log(run_dir: str | Path) -> list[dict]:
    """A run's training log (one JSON object per line); [] when the run has none."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise IXGSError(f"{path}, line {number}: not JSON; the log is damaged") from None
    return entries


def write_log(run_dir: str | Path, entries: list[dict]) -> Path:
    """Replace the log with exactly ``entries`` (atomically); later steps are appended to it."""
    path = Path(run_dir) / LOG_FILE
    with atomic_output(path) as temp:
        temp.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


# ---------------------------------------------------------------- checkpoint
def save_checkpoint(run_dir: str | Path, state: dict) -> Path:
    """Write a training state (tensors, numbers, strings, lists, dicts) atomically."""
    path = Path(run_dir) / CHECKPOINT_FILE
    with atomic_output(path) as temp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, temp)
    return path


def load_checkpoint(run_dir: str | Path) -> dict:
    """The training state in a run folder's checkpoint, read without unpickling code; a clear
    error naming the file for anything that is not an IXGS checkpoint."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise IXGSError(f"no checkpoint in {Path(run_dir)}; start the run without resuming")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # damaged, foreign, or holding objects other than tensors
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise IXGSError(f"{path}: cannot read the checkpoint ({reason}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise IXGSError(f"{path} is not an IXGS checkpoint; delete it to start over")
    return state


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CHECKPOINT_FILE).is_file()


# ---------------------------------------------------------------- summary
def write_summary(run_dir: str | Path, summary: dict) -> Path:
    """Write ``summary.json``: output paths made relative to the run folder, the scan recorded
    both absolute and relative to it."""
    run_dir = Path(run_dir)
    record = dict(summary)
    for name in PATH_FIELDS:
        if record.get(name):
            record[name] = _relative_to(Path(record[name]), run_dir)
    if record.get("scan"):
        scan = Path(record["scan"]).resolve()
        record["scan"] = str(scan)
        record["scan_relative"] = os.path.relpath(scan, run_dir.resolve())
    path = run_dir / SUMMARY_FILE
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(record, indent=1))
    return path


def read_summary(run_dir: str | Path) -> dict:
    """``summary.json`` of a run folder as written (relative paths); see ``run_path``."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise IXGSError(f"{Path(run_dir)} is a folder without {SUMMARY_FILE}; give a volume file or a run folder")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IXGSError(f"{path} is not valid JSON ({error}); re-run the reconstruction") from None
    if not isinstance(summary, dict):
        raise IXGSError(f"{path} is not a run summary (a JSON object); re-run the reconstruction")
    return summary


def run_path(run_dir: str | Path, recorded: str) -> Path:
    """A path recorded in a run's summary, as a path usable from here: relative ones are
    relative to the run folder; absolute ones (runs written before paths were relative) fall
    back to the same file name in the run folder when they no longer exist."""
    run_dir = Path(run_dir)
    path = Path(recorded)
    if not path.is_absolute():
        return run_dir / path
    return path if path.exists() else run_dir / path.name


def scan_path(run_dir: str | Path, summary: dict) -> Path | None:
    """The run's scan folder: relative to the run folder when that exists (a copied folder that
    carries its scan beside it), else the absolute path recorded; None when none is recorded."""
    relative = summary.get("scan_relative")
    if relative:
        candidate = Path(run_dir) / relative
        if candidate.is_dir():
            return candidate
    return Path(summary["scan"]) if summary.get("scan") else None


def _relative_to(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:  # a file outside the run folder keeps its absolute path
        return str(path.resolve())
