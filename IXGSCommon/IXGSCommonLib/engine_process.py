"""Running the ``ixgs`` engine in a separate process and reading its progress (no Qt, no Slicer).

The Slicer modules never run long jobs in the GUI process: they start
``PythonSlicer -m ixgs_engine <command> ...`` with ``IXGS_PROGRESS=jsonl`` and read its stderr,
where the engine writes one JSON object per progress update (see ``ixgs_engine.progress``).
This module builds those command lines and environments and turns the stderr byte stream into
progress events and log lines; the Qt side (``qt_process``) only moves bytes and signals.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ixgs_engine.errors import name_parameters
from ixgs_engine.progress import PROGRESS_FORMAT_VARIABLE

# What the modules call the engine's parameters that a message may name (the engine, reading
# IXGS_PROGRESS=jsonl, leaves them to its front end); the rest are shown by their own names.
CONTROL_LABELS = {
    "resume": 'the "Resume" option',
    "resume_iterations": '"Iterations"',
    "iterations": '"Iterations"',
    "device": '"Device"',
    "preset": '"Preset"',
    "voxel_size": "the voxel size",
    "points": "points placed on the X-rays",
    "phantom": '"Calibration phantom"',
    "steps": '"Steps"',
}


def python_executable() -> str:
    """The interpreter for engine processes: Slicer's ``PythonSlicer`` launcher when it exists
    (it sets up Slicer's Python environment), else this interpreter (tests, plain Python)."""
    return shutil.which("PythonSlicer") or sys.executable


def engine_command(arguments: Sequence[str]) -> list[str]:
    """The full command line that runs ``ixgs <arguments>`` with the Python of this application."""
    return [python_executable(), "-m", "ixgs_engine", *[str(argument) for argument in arguments]]


def engine_environment(base: dict[str, str] | None = None, engine_parent: str | Path | None = None) -> dict[str, str]:
    """Environment for an engine process: JSON-lines progress, unbuffered output, and
    ``engine_parent`` (the folder that holds the ``ixgs_engine`` package, when it is not installed)
    first on PYTHONPATH."""
    environment = dict(os.environ if base is None else base)
    environment[PROGRESS_FORMAT_VARIABLE] = "jsonl"
    environment["PYTHONUNBUFFERED"] = "1"
    if engine_parent is not None:
        paths = [str(engine_parent)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
        environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


CANCEL_FLAG = "--cancel-file"
CANCEL_FILE_NAME = "cancel-requested"
"""In a run folder: the file whose appearance asks the engine to stop at its next step (with a
checkpoint, so Resume continues). It works where signals do not reach a console process
(Windows); on the other systems Cancel also sends SIGTERM, which the engine treats the same."""
# Where a run with refined poses keeps its refined scan (the engine's run_files.REFINED_SCAN_FOLDER).
REFINED_SCAN_FOLDER = "refined_scan"
# The run's first look, written as soon as its classical start exists (run_files.PREVIEW_FILE).
PREVIEW_FILE = "preview.nrrd"


def cancel_file_in(arguments: Sequence[str]) -> Path | None:
    """The cancel file an engine command line polls (``--cancel-file F``), or None."""
    arguments = [str(a) for a in arguments]
    if CANCEL_FLAG in arguments[:-1]:
        return Path(arguments[arguments.index(CANCEL_FLAG) + 1])
    return None


def request_cancel(cancel_file: Path) -> None:
    """Ask the engine polling ``cancel_file`` to stop at its next step."""
    cancel_file.parent.mkdir(parents=True, exist_ok=True)
    cancel_file.touch()


def reconstruct_arguments(
    scan: str | Path,
    output: str | Path,
    preset: str,
    device: str,
    iterations: int | None = None,
    voxel_size: float | None = None,
    resume: bool = False,
    refine_poses: str | None = None,
) -> list[str]:
    """``ixgs reconstruct`` arguments (the command-line contract between the GUI and the engine),
    with the run folder's cancel file; ``refine_poses`` off / on / auto (None: the engine's default)."""
    arguments = [
        "reconstruct",
        str(scan),
        "-o",
        str(output),
        "--preset",
        preset,
        "--device",
        device,
        CANCEL_FLAG,
        str(Path(output) / CANCEL_FILE_NAME),
    ]
    if iterations:
        arguments += ["--iterations", str(int(iterations))]
    if voxel_size:
        arguments += ["--voxel-size", f"{float(voxel_size):g}"]
    if resume:
        arguments.append("--resume")
    if refine_poses:
        arguments += ["--refine-poses", refine_poses]
    return arguments


def poses_detect_arguments(scan: str | Path, phantom: str | Path, output: str | Path) -> list[str]:
    """``ixgs poses detect`` arguments: detections.json and overlay pictures in ``output``."""
    return ["poses", "detect", str(scan), "--phantom", str(phantom), "-o", str(output), "--overwrite"]


def poses_estimate_arguments(
    scan: str | Path,
    phantom: str | Path,
    output: str | Path,
    points: str | Path | None = None,
    detections: str | Path | None = None,
) -> list[str]:
    """``ixgs poses estimate`` arguments: the automatic ``detections`` (from detect; re-detected
    when None) joined by the user's manual ``points`` (POINTS_JSON)."""
    arguments = ["poses", "estimate", str(scan), "--phantom", str(phantom), "-o", str(output), "--overwrite"]
    if detections is not None:
        arguments += ["--detections", str(detections)]
    if points is not None:
        arguments += ["--points", str(points)]
    return arguments


def standardize_train_arguments(
    pairs: str | Path, model: str | Path, config: str, steps: int | None = None, resume: bool = False
) -> list[str]:
    """``ixgs standardize train`` arguments."""
    arguments = ["standardize", "train", str(pairs), "-o", str(model), "--config", config]
    if steps:
        arguments += ["--steps", str(int(steps))]
    if resume:
        arguments.append("--resume")
    return arguments


def standardize_apply_arguments(model: str | Path, scan: str | Path, output: str | Path) -> list[str]:
    """``ixgs standardize apply`` arguments; an existing output scan is replaced."""
    return ["standardize", "apply", str(model), str(scan), "-o", str(output), "--overwrite"]


def standardize_preview_arguments(model: str | Path, scan: str | Path, view: int, output: str | Path) -> list[str]:
    """``ixgs standardize preview`` arguments: one view standardized into an image file."""
    return ["standardize", "preview", str(model), str(scan), "--view", str(int(view)), "-o", str(output)]


@dataclass
class ProgressEvent:
    """One progress update of the engine: ``stage`` (e.g. "reconstructing"), ``done`` of
    ``total`` steps, and the numbers it carried (loss, gaussians, ...)."""

    stage: str
    done: int
    total: int
    values: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(max(self.done / self.total, 0.0), 1.0) if self.total > 0 else 0.0


def _progress_record(line: str, key: str) -> ProgressEvent | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not {key, "done", "total"} <= record.keys():
        return None
    values = {name: value for name, value in record.items() if name not in (key, "done", "total")}
    return ProgressEvent(str(record[key]), int(record["done"]), int(record["total"]), values)


def parse_progress_line(line: str) -> ProgressEvent | None:
    """The progress event a stderr line holds, or None for any other line (warnings, errors)."""
    return _progress_record(line, "progress")


def parse_stage_line(line: str) -> ProgressEvent | None:
    """The update of a preparatory stage (e.g. the SART start) a stderr line holds, or None."""
    return _progress_record(line, "stage")


class OutputReader:
    """Splits a process's output, arriving in arbitrary chunks, into complete lines, and sorts
    them into progress events, the status of a preparatory stage (``stage``, the latest update)
    and plain log lines (the last log line is the one-line summary or the error message)."""

    def __init__(self) -> None:
        self._pending = ""
        self.log_lines: list[str] = []
        self.last_progress: ProgressEvent | None = None
        self.stage: ProgressEvent | None = None

    def feed(self, chunk: bytes | str) -> tuple[list[ProgressEvent], list[str]]:
        """Add a chunk; return the progress events and log lines it completed."""
        text = chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else chunk
        lines = (self._pending + text).replace("\r\n", "\n").split("\n")
        self._pending = lines.pop()
        return self._sort(lines)

    def finish(self) -> tuple[list[ProgressEvent], list[str]]:
        """Flush a last line that had no newline (call when the process ends)."""
        rest, self._pending = self._pending, ""
        return self._sort([rest] if rest else [])

    def _sort(self, lines: list[str]) -> tuple[list[ProgressEvent], list[str]]:
        events, logs = [], []
        for line in lines:
            event = parse_progress_line(line)
            stage = parse_stage_line(line) if event is None else None
            if event is not None:
                events.append(event)
                self.last_progress = event
            elif stage is not None:
                self.stage = stage
            elif line.strip():
                logs.append(line.rstrip())
        self.log_lines += logs
        return events, logs

    def last_message(self) -> str:
        """The last plain line (the engine's summary or its one-line error, its parameters named
        as the modules' controls), or ''."""
        return name_parameters(self.log_lines[-1], CONTROL_LABELS) if self.log_lines else ""
