"""Clinical rating sheets: the criteria rated on the report page (Likert 1-5), and merging
the CSV files evaluators download from it into one summary table per case and criterion.

A rating CSV has one row per criterion: ``case,rater,criterion,score,comment,saved_utc``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ixgs_engine.errors import IXGSError
from ixgs_engine.io import atomic_output

CSV_COLUMNS = ("case", "rater", "criterion", "score", "comment", "saved_utc")

# (key, question) pairs; 1 is the worst and 5 the best answer for every criterion.
CRITERIA: tuple[tuple[str, str], ...] = (
    ("bone_visibility", "Bone structures (vertebral bodies, pedicles, processes) are visible"),
    ("edge_sharpness", "Cortical edges are sharp"),
    ("artifact_freedom", "Free of streaks, blur and ghost structures (5 = none)"),
    ("anatomical_plausibility", "Anatomy is plausible (shapes, proportions, alignment)"),
    ("diagnostic_usability", "Usable for the intraoperative question (e.g. screw position, alignment)"),
    ("overall_quality", "Overall image quality"),
)
LIKERT = (1, 2, 3, 4, 5)


@dataclass
class RatingSummary:
    case: str
    criterion: str
    raters: int
    mean: float
    std: float
    median: float
    minimum: int
    maximum: int


def read_ratings(paths: Iterable[str | Path]) -> list[dict]:
    """Every rating row of the CSV files, checked (columns, score 1-5); problems name the file
    and line."""
    rows = []
    for path in paths:
        path = Path(path)
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                missing = [c for c in ("case", "rater", "criterion", "score") if c not in (reader.fieldnames or [])]
                if missing:
                    raise IXGSError(f"{path}: not a rating sheet (missing columns {', '.join(missing)})")
                for line, row in enumerate(reader, start=2):
                    try:
                        score = int(row["score"])
                    except (TypeError, ValueError):
                        score = 0
                    if score not in LIKERT:
                        raise IXGSError(f"{path}, line {line}: score must be 1-5, got {row['score']!r}")
                    rows.append({**row, "score": score, "file": str(path)})
        except OSError as error:
            raise IXGSError(f"{path}: cannot be read ({error.strerror})") from None
        except (UnicodeDecodeError, csv.Error) as error:
            raise IXGSError(f"{path}: not a UTF-8 CSV rating sheet ({error}); save it again as CSV UTF-8") from None
    return rows


def summarize_ratings(rows: list[dict]) -> list[RatingSummary]:
    """Per case and criterion: number of raters, mean, standard deviation (sample; 0 for one
    rater), median and range. A rater's later sheet for the same case replaces an earlier one."""
    latest: dict[tuple[str, str, str], int] = {}
    for row in sorted(rows, key=lambda r: r.get("saved_utc") or ""):
        latest[(row["case"], row["criterion"], row["rater"])] = row["score"]
    grouped: dict[tuple[str, str], list[int]] = {}
    for (case, criterion, _), score in latest.items():
        grouped.setdefault((case, criterion), []).append(score)
    order = {key: index for index, (key, _) in enumerate(CRITERIA)}
    out = []
    keyed = sorted(grouped.items(), key=lambda item: (item[0][0], order.get(item[0][1], len(order)), item[0][1]))
    for (case, criterion), scores in keyed:
        values = np.array(scores, dtype=np.float64)
        out.append(
            RatingSummary(
                case,
                criterion,
                len(scores),
                float(values.mean()),
                float(values.std(ddof=1)) if len(scores) > 1 else 0.0,
                float(np.median(values)),
                int(values.min()),
                int(values.max()),
            )
        )
    return out


def write_rating_summary(path: str | Path, summary: list[RatingSummary]) -> Path:
    """The summary as CSV (``.csv``) or a markdown table (any other extension), atomically."""
    path = Path(path)
    header = ["case", "criterion", "raters", "mean", "std", "median", "min", "max"]
    rows = [
        [s.case, s.criterion, s.raters, f"{s.mean:.2f}", f"{s.std:.2f}", f"{s.median:g}", s.minimum, s.maximum]
        for s in summary
    ]
    with atomic_output(path) as temp:
        if path.suffix.lower() == ".csv":
            with temp.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                writer.writerows(rows)
        else:
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
            temp.write_text("\n".join(lines) + "\n")
    return path
