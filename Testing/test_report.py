"""The HTML report (self-contained; opens in headless Chromium without errors; its rating
sheet saves a CSV) and merging rating CSVs."""

import base64
import csv
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_settings import HOLDOUT_RUN

from ixgs_engine.cli import main
from ixgs_engine.errors import IXGSError
from ixgs_engine.geometry.carm import Detector
from ixgs_engine.phantoms import hu_to_attenuation, make_phantom
from ixgs_engine.report.html import build_report
from ixgs_engine.report.ratings import CRITERIA, read_ratings, summarize_ratings
from ixgs_engine.simulate import CarmSetup, arbitrary_poses, simulate_scan

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A tiny reconstruction run (with held-out views) and its report."""
    folder = tmp_path_factory.mktemp("report")
    truth = hu_to_attenuation(make_phantom("spine", (24, 24, 24), 8.0))
    setup = CarmSetup(detector=Detector((32, 32), (12.8, 12.8)))
    simulate_scan(folder / "scan", truth, arbitrary_poses(8, isocenter=tuple(truth.center())), setup)
    assert main(["reconstruct", str(folder / "scan"), "-o", str(folder / "run"), *HOLDOUT_RUN]) == 0
    path, metrics = build_report(folder / "run", max_views=3)
    assert metrics["views"] == list(range(8))
    return path


def test_report_is_self_contained_with_real_pictures(report):
    page = report.read_text()
    assert "<h2>Rating sheet</h2>" in page and "Per-view errors" in page and "Training" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "the page must not load anything from a network"
    assert "<link" not in page and "<script src" not in page
    sources = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [alt for alt, _ in sources] == ["volume slices", "views", "per-view errors", "loss curves"]
    for alt, data in sources:
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"), dtype=np.float64)
        assert image.shape[0] > 100 and image.shape[1] > 100, alt
        assert image.std() > 10, f"{alt} looks blank"
    # The per-view table marks the run's held-out views (every 4th: 3 and 7).
    assert page.count("<td>held out</td>") == 2
    assert "<tr><td>3</td><td>held out</td>" in page and "<tr><td>7</td><td>held out</td>" in page


def test_report_needs_a_run_folder(tmp_path):
    with pytest.raises(IXGSError, match="not a folder"):
        build_report(tmp_path / "missing")
    with pytest.raises(IXGSError, match="without summary.json"):
        build_report(tmp_path)


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium found (Debian: apt-get install -y chromium); skipping the browser check")


def test_report_opens_in_headless_chromium_and_saves_ratings(report, tmp_path):
    executable = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on(
            "request",
            lambda request: (
                errors.append(f"network: {request.url}")
                if not request.url.startswith(("file:", "data:", "blob:"))
                else None
            ),
        )
        page.goto(report.as_uri())
        loaded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert loaded == [True] * 4
        page.click("#rating-save")
        assert "rater ID" in page.inner_text("#rating-status")
        page.fill("input[name=rater]", "R07")
        for index, (key, _) in enumerate(CRITERIA):
            page.check(f"input[name={key}][value='{1 + index % 5}']")
        page.fill("textarea[name=comment]", 'blurred edges, "ghost" at L3')
        with page.expect_download() as download:
            page.click("#rating-save")
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        screenshot = tmp_path / "report.png"
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert errors == []
    shot = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert shot.shape[0] > 2000 and shot.std() > 20  # a long page with pictures, not a blank one
    rows = list(csv.DictReader(saved.open(newline="")))
    assert saved.name == f"ratings_{report.parent.name}_R07.csv"
    assert [r["criterion"] for r in rows] == [key for key, _ in CRITERIA]
    assert [int(r["score"]) for r in rows] == [1 + i % 5 for i in range(len(CRITERIA))]
    assert {r["comment"] for r in rows} == {'blurred edges, "ghost" at L3'} and {r["rater"] for r in rows} == {"R07"}
    # The browser's file merges like any other.
    summary = summarize_ratings(read_ratings([saved]))
    assert [s.criterion for s in summary] == [key for key, _ in CRITERIA]


def _sheet(path: Path, case: str, rater: str, scores: list[int], saved: str = "2026-01-01T00:00:00Z") -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "rater", "criterion", "score", "comment", "saved_utc"])
        for (key, _), score in zip(CRITERIA, scores, strict=True):
            writer.writerow([case, rater, key, score, "", saved])
    return path


def test_ratings_merge_into_a_summary(tmp_path, capsys):
    files = [
        _sheet(tmp_path / "a.csv", "case1", "R1", [5, 4, 3, 2, 1, 3]),
        _sheet(tmp_path / "b.csv", "case1", "R2", [3, 4, 5, 2, 1, 5]),
        _sheet(tmp_path / "c.csv", "case1", "R2", [1, 1, 1, 1, 1, 1], saved="2025-01-01T00:00:00Z"),  # older: replaced
        _sheet(tmp_path / "d.csv", "case2", "R1", [2, 2, 2, 2, 2, 2]),
    ]
    summary = summarize_ratings(read_ratings(files))
    first = {s.criterion: s for s in summary if s.case == "case1"}
    assert first["bone_visibility"].raters == 2 and first["bone_visibility"].mean == 4.0
    assert first["bone_visibility"].std == pytest.approx(np.std([5, 3], ddof=1))
    assert first["artifact_freedom"].minimum == 3 and first["artifact_freedom"].maximum == 5
    assert {s.case for s in summary} == {"case1", "case2"} and len(summary) == 2 * len(CRITERIA)
    out = tmp_path / "summary.md"
    assert main(["ratings", *map(str, files), "-o", str(out)]) == 0
    assert "| case1 | bone_visibility | 2 | 4.00 |" in out.read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text("case,rater,criterion,score\ncase1,R3,bone_visibility,7\n")
    assert main(["ratings", str(bad), "-o", str(out)]) == 2
    assert "bad.csv, line 2: score must be 1-5" in capsys.readouterr().err
