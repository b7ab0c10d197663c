"""Progress reporting for long jobs: a tqdm bar for people, JSON lines for programs.

Every long command reports through ``progress_bar``. With the environment variable
``IXGS_PROGRESS=jsonl`` (set by the Slicer modules, which run the engine in a separate
process) each update is instead one JSON object per line on stderr::

    {"progress": "reconstructing", "done": 120, "total": 1000, "loss": 0.0123, "gaussians": 30000}

so a front end can show a progress bar and the live loss without parsing terminal output.
A stage that prepares the job (e.g. the SART start of a reconstruction) reports the same way
under the key ``stage`` instead of ``progress``, so a front end can show it as a status while
the job's own progress stays one rising sequence.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable

PROGRESS_FORMAT_VARIABLE = "IXGS_PROGRESS"

ProgressCallback = Callable[..., None]


def _json_lines(description: str, key: str) -> ProgressCallback:
    def update(done: int, total: int, info: dict | None = None) -> None:
        record: dict = {key: description, "done": int(done), "total": int(total)}
        for name, value in (info or {}).items():
            # NaN and infinities are not JSON (json.dumps would write NaN/Infinity): left out
            finite = not isinstance(value, float) or math.isfinite(value)
            if isinstance(value, (int, float, str, bool)) and finite:
                record[name] = value
        print(json.dumps(record), file=sys.stderr, flush=True)

    return update


def _terminal_bar(description: str, unit: str) -> ProgressCallback:
    from tqdm import tqdm

    bar: dict = {}

    def update(done: int, total: int, info: dict | None = None) -> None:
        if "bar" not in bar:
            # redirected to a file or a CI log: a line every few seconds, not a flood of carriage returns
            interval = 0.1 if sys.stderr.isatty() else 5.0
            bar["bar"] = tqdm(
                total=total,
                initial=done - 1,
                desc=description,
                unit=unit,
                file=sys.stderr,
                leave=False,
                mininterval=interval,
            )
        bar["bar"].update(done - bar["bar"].n)
        if info is not None and done % 10 == 0:
            shown = {
                key: (f"{value:.4g}" if isinstance(value, float) else str(value))
                for key, value in info.items()
                if key in ("loss", "gaussians", "l1", "psnr")
            }
            bar["bar"].set_postfix(shown, refresh=False)
        if done >= total:
            bar["bar"].close()

    return update


def for_front_end() -> bool:
    """True when a front end (the Slicer modules) reads this process's output: progress as JSON
    lines, and messages that name the library's parameters for it to word (``IXGSError``)."""
    return os.environ.get(PROGRESS_FORMAT_VARIABLE, "").lower() == "jsonl"


def progress_bar(description: str, unit: str = "view", stage: bool = False) -> ProgressCallback:
    """A ``(done, total[, info])`` callback: a terminal bar on stderr, or JSON lines when
    ``IXGS_PROGRESS=jsonl``. ``info`` (e.g. a training log entry) adds the loss and similar values.
    ``stage``: a preparatory stage (JSON key ``stage``, see above)."""
    if for_front_end():
        return _json_lines(description, "stage" if stage else "progress")
    return _terminal_bar(description, unit)
