"""The ixgs-scan/1 reader and writer: round trips, circular expansion, intensity conversion,
default ROI, and one test per validation message."""

import json
from pathlib import Path

import numpy as np
import pytest

from ixgs_engine.errors import ScanError
from ixgs_engine.geometry.carm import Detector, carm_projection_matrix, circular_orbit
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io.scan import inspect_scan, load_projections, read_scan, write_scan
from ixgs_engine.io.xray_images import write_xray_image

DETECTOR = Detector((32, 24), (4.0, 4.0))
SHAPE = (24, 32)


def matrices(count: int = 3) -> list[np.ndarray]:
    return [carm_projection_matrix(a, 10.0 * i, 600, 1000, DETECTOR) for i, a in enumerate(np.linspace(-60, 60, count))]


def line_integral_images(count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(0.5, 3.0, SHAPE).astype(np.float32) for _ in range(count)]


@pytest.fixture
def scan_dir(tmp_path: Path) -> Path:
    write_scan(
        tmp_path / "scan",
        line_integral_images(),
        matrices(),
        roi=ROI([0, 0, 0], [60, 60, 60]),
        pixel_spacing=(4.0, 4.0),
    )
    return tmp_path / "scan"


def edit(folder: Path, change) -> None:
    path = folder / "scan.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_write_then_read_round_trip(scan_dir: Path):
    scan = read_scan(scan_dir)
    assert scan.image_kind == "line_integral"
    assert [v.image for v in scan.views] == ["images/000.tif", "images/001.tif", "images/002.tif"]
    np.testing.assert_allclose(scan.matrices, np.stack(matrices()))
    assert scan.views[0].pixel_spacing == (4.0, 4.0)
    projections = load_projections(scan)
    np.testing.assert_array_equal(projections.values, np.stack(line_integral_images()))
    assert projections.values.dtype == np.float32
    assert not projections.roi_is_default
    np.testing.assert_allclose(projections.roi.size, 60.0)


def test_uncalibrated_scans_read_only_when_poses_are_not_required(tmp_path: Path):
    write_scan(tmp_path / "raw", line_integral_images(), None, pixel_spacing=(4.0, 4.0))
    with pytest.raises(ScanError, match=r'view 0 \(images/000.tif\): has no "projection_matrix"'):
        read_scan(tmp_path / "raw")
    scan = read_scan(tmp_path / "raw", require_poses=False)
    assert not scan.has_poses and [v.projection_matrix for v in scan.views] == [None] * 3
    assert scan.views[2].pixel_spacing == (4.0, 4.0)
    with pytest.raises(ScanError, match=r"view 0 \(images/000.tif\): has no pose yet"):
        load_projections(scan)
    edit(tmp_path / "raw", lambda d: d["views"][1].update(projection_matrix=[[1, 0, 0]]))
    with pytest.raises(ScanError, match=r"view 1 .*bad projection_matrix"):  # given matrices are still checked
        read_scan(tmp_path / "raw", require_poses=False)


def test_readers_write_nothing_into_the_scan_folder(scan_dir: Path):
    before = sorted(p.name for p in scan_dir.rglob("*"))
    load_projections(read_scan(scan_dir))
    inspect_scan(scan_dir)
    assert sorted(p.name for p in scan_dir.rglob("*")) == before


def test_circular_geometry_expands_to_per_view_matrices(tmp_path: Path):
    angles = [0.0, 90.0, 180.0]
    geometry = {
        "type": "circular",
        "source_to_isocenter": 600,
        "source_to_detector": 1000,
        "angles_deg": angles,
        "detector": {"pixels": [32, 24], "pixel_spacing": [4.0, 4.0], "offset": [8.0, -4.0]},
    }
    write_scan(tmp_path, line_integral_images(), matrices(), geometry=geometry)
    document = json.loads((tmp_path / "scan.json").read_text())
    assert all("projection_matrix" not in view for view in document["views"])
    scan = read_scan(tmp_path)
    expected = circular_orbit(angles, 600, 1000, Detector((32, 24), (4.0, 4.0), (8.0, -4.0)))
    np.testing.assert_allclose(scan.matrices, np.stack(expected))


def test_intensity_images_become_line_integrals(tmp_path: Path):
    truth = line_integral_images()
    write_scan(
        tmp_path,
        [1000.0 * np.exp(-p) for p in truth],
        matrices(),
        image_kind="intensity",
        roi=ROI([0, 0, 0], [60, 60, 60]),
    )
    edit(tmp_path, lambda d: d.update(i0=1000.0))
    np.testing.assert_allclose(load_projections(read_scan(tmp_path)).values, np.stack(truth), atol=1e-5)
    # A per-view i0 overrides the scene's.
    edit(tmp_path, lambda d: d["views"][1].update(i0=2000.0))
    np.testing.assert_allclose(load_projections(read_scan(tmp_path)).values[1], truth[1] + np.log(2.0), atol=1e-5)


def test_intensity_i0_is_estimated_from_unattenuated_pixels(tmp_path: Path):
    truth = line_integral_images()
    for image in truth:
        image[:, :4] = 0.0  # a strip of air in every view
    write_scan(
        tmp_path,
        [800.0 * np.exp(-p) for p in truth],
        matrices(),
        image_kind="intensity",
        roi=ROI([0, 0, 0], [60, 60, 60]),
    )
    np.testing.assert_allclose(load_projections(read_scan(tmp_path)).values, np.stack(truth), atol=1e-4)


def test_estimated_i0_is_not_biased_by_photon_noise(tmp_path: Path):
    """Poisson noise at 3000 photons (1.8 %): the brightest pixels alone sit ~2.7 sd above the
    air, which the old estimate turned into a 0.05 offset of every line integral."""
    rng = np.random.default_rng(3)
    truth = [np.zeros((48, 64), np.float32) for _ in range(3)]
    for image in truth:
        image[10:38, 24:] = rng.uniform(0.5, 3.0, (28, 40))  # air on the left and around
    write_scan(
        tmp_path,
        [rng.poisson(3000.0 * np.exp(-p)).astype(np.float32) for p in truth],
        matrices(),
        image_kind="intensity",
        roi=ROI([0, 0, 0], [60, 60, 60]),
    )
    values = load_projections(read_scan(tmp_path)).values
    air = np.stack(truth) == 0
    assert abs(float(np.median(values[air]))) < 0.004


def test_default_roi_is_derived_when_absent(tmp_path: Path):
    write_scan(tmp_path, line_integral_images(), matrices())
    projections = load_projections(read_scan(tmp_path))
    assert projections.roi_is_default
    assert np.all(projections.roi.size > 10.0)


# --- validation messages: scan.json -------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format="ixgs-scan/9"), r'"format" must be "ixgs-scan/1"'),
        (lambda d: d.update(units="cm"), r'"units" must be "mm"'),
        (lambda d: d.update(image_kind="photo"), r'"image_kind" must be one of line_integral, intensity, radiograph'),
        (lambda d: d.update(views=[]), r'"views" must be a non-empty list'),
        (lambda d: d["views"][1].pop("image"), r'view 1: each view needs an "image" path'),
        (lambda d: d["views"][2].pop("projection_matrix"), r'view 2 \(images/002.tif\): has no "projection_matrix"'),
        (
            lambda d: d["views"][0].update(projection_matrix=[[1, 2, 3]]),
            r"view 0 \(images/000.tif\): bad projection_matrix: .*3x4",
        ),
        (
            lambda d: d["views"][1].update(projection_matrix=[[1, 0, 0, None]] * 3),
            r"view 1 \(images/001.tif\): bad projection_matrix",
        ),
        (lambda d: d["views"][1].update(projection_matrix=[[float("nan")] * 4] * 3), r"view 1 .*non-finite"),
        (lambda d: d["views"][2].update(projection_matrix=[[1, 0, 0, 0]] * 3), r"view 2 .*singular"),
        (lambda d: d["views"][0].update(pixel_spacing=[1.0, -1.0]), r"view 0 .*pixel_spacing must be positive"),
        (lambda d: d["views"][0].update(pixel_spacing="big"), r'view 0 .*"pixel_spacing" must be a list of 2 numbers'),
        (lambda d: d["views"][1].update(frame=-1), r'view 1 .*"frame" must be a whole number >= 0'),
        (lambda d: d["views"][1].update(i0=0), r'view 1 .*"i0" must be a positive number'),
        (lambda d: d.update(i0="bright"), r'"i0" must be a positive number'),
        (lambda d: d.update(roi={"center": [0, 0, 0]}), r'"roi" needs "center" and "size"'),
        (lambda d: d.update(roi={"center": [0, 0], "size": [1, 1, 1]}), r'"roi.center" must be 3 finite numbers'),
        (lambda d: d.update(roi={"center": [0, 0, 0], "size": [1, 0, 1]}), r'"roi": ROI size must be positive'),
        (
            lambda d: d.update(
                roi={"center": [0, 0, 0], "size": [1, 1, 1], "direction": [[1, 1, 0], [0, 1, 0], [0, 0, 1]]}
            ),
            r'"roi": ROI direction must be an orthonormal',
        ),
        (lambda d: d.update(geometry={"type": "helical"}), r'"geometry.type" must be "circular"'),
        (
            lambda d: d.update(geometry={"type": "circular", "angles_deg": [0]}),
            r'"geometry" lacks source_to_isocenter, source_to_detector, detector',
        ),
    ],
)
def test_scan_json_problems_have_clear_messages(scan_dir: Path, change, message):
    edit(scan_dir, change)
    with pytest.raises(ScanError, match=message):
        read_scan(scan_dir)


def circular_block(angles) -> dict:
    return {
        "type": "circular",
        "source_to_isocenter": 600,
        "source_to_detector": 1000,
        "angles_deg": angles,
        "detector": {"pixels": [32, 24], "pixel_spacing": [4.0, 4.0]},
    }


def test_geometry_angle_count_must_match_views(scan_dir: Path):
    def change(d):
        for view in d["views"]:
            view.pop("projection_matrix")
        d["geometry"] = circular_block([0, 90])

    edit(scan_dir, change)
    with pytest.raises(ScanError, match=r'"geometry.angles_deg" has 2 angles but there are 3 views'):
        read_scan(scan_dir)


def test_geometry_and_matrices_together_are_rejected(scan_dir: Path):
    edit(scan_dir, lambda d: d.update(geometry=circular_block([0, 90, 180])))
    with pytest.raises(
        ScanError, match=r'view 0 \(images/000.tif\): has a "projection_matrix" and the scan a "geometry"'
    ):
        read_scan(scan_dir)


def test_geometry_with_bad_distances_is_rejected(scan_dir: Path):
    def change(d):
        for view in d["views"]:
            view.pop("projection_matrix")
        d["geometry"] = circular_block([0, 90, 180]) | {"source_to_isocenter": 2000}

    edit(scan_dir, change)
    with pytest.raises(ScanError, match=r'"geometry": need 0 < source-to-isocentre distance'):
        read_scan(scan_dir)


def test_missing_scan_json_and_bad_json(tmp_path: Path):
    with pytest.raises(ScanError, match=r"scan.json not found: a scan is a folder holding scan.json"):
        read_scan(tmp_path)
    (tmp_path / "scan.json").write_text('{"format": "ixgs-scan/1",\n "views": [}')
    with pytest.raises(ScanError, match=r"is not valid JSON \(line 2, column"):
        read_scan(tmp_path)
    (tmp_path / "scan.json").write_text("[1, 2]")
    with pytest.raises(ScanError, match=r"must hold a JSON object"):
        read_scan(tmp_path)


# --- validation messages: images and geometry against images -------------------------------


def test_missing_image_names_view_and_file(scan_dir: Path):
    (scan_dir / "images" / "001.tif").unlink()
    with pytest.raises(ScanError, match=r"view 1 \(images/001.tif\): .*001.tif"):
        load_projections(read_scan(scan_dir))


def test_unreadable_image_names_view_and_file(scan_dir: Path):
    (scan_dir / "images" / "002.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ScanError, match=r"view 2 \(images/002.tif\)"):
        load_projections(read_scan(scan_dir))


def test_image_size_must_agree_between_views(scan_dir: Path):
    write_xray_image(scan_dir / "images" / "001.tif", np.ones((20, 32), np.float32))
    with pytest.raises(ScanError, match=r"view 1 \(images/001.tif\): image is 32x20 \(WxH\) but view 0 is 32x24"):
        load_projections(read_scan(scan_dir))


def test_image_size_must_agree_with_circular_detector(tmp_path: Path):
    geometry = circular_block([0, 90, 180]) | {"detector": {"pixels": [30, 24], "pixel_spacing": [4.0, 4.0]}}
    write_scan(tmp_path, line_integral_images(), matrices(), geometry=geometry)
    with pytest.raises(
        ScanError, match=r"view 0 \(images/000.tif\): image is 32x24 \(WxH\) but geometry.detector.pixels is 30x24"
    ):
        load_projections(read_scan(tmp_path))


def test_non_finite_pixels(scan_dir: Path):
    image = line_integral_images()[0]
    image[3, 4] = np.nan
    image[5, 6] = np.inf
    write_xray_image(scan_dir / "images" / "000.tif", image)
    with pytest.raises(ScanError, match=r"view 0 \(images/000.tif\): 2 pixels are NaN or infinite"):
        load_projections(read_scan(scan_dir))


def test_negative_line_integrals_beyond_noise(scan_dir: Path):
    write_xray_image(scan_dir / "images" / "002.tif", -line_integral_images()[2])
    with pytest.raises(
        ScanError, match=r"view 2 \(images/002.tif\): 100.0 % of the pixels are negative line integrals"
    ):
        load_projections(read_scan(scan_dir))


def test_small_negative_noise_is_accepted(scan_dir: Path):
    noisy = line_integral_images()[0]
    noisy[:, :5] = np.random.default_rng(1).normal(0.0, 0.02, (24, 5))  # air with noise
    write_xray_image(scan_dir / "images" / "000.tif", noisy)
    assert load_projections(read_scan(scan_dir)).values.shape == (3, 24, 32)


def test_radiographs_must_be_standardized_first(scan_dir: Path):
    edit(scan_dir, lambda d: d.update(image_kind="radiograph"))
    with pytest.raises(ScanError, match=r"view 0 \(images/000.tif\): is a processed radiograph; standardize"):
        load_projections(read_scan(scan_dir))


def test_intensity_with_non_positive_pixels(tmp_path: Path):
    images = [np.exp(-p) for p in line_integral_images()]
    images[1][:10] = 0.0
    write_scan(tmp_path, images, matrices(), image_kind="intensity", roi=ROI([0, 0, 0], [60, 60, 60]))
    with pytest.raises(ScanError, match=r"view 1 \(images/001.tif\): 41.7 % of the intensity pixels are <= 0"):
        load_projections(read_scan(tmp_path))


def test_view_that_misses_the_roi(scan_dir: Path):
    away = carm_projection_matrix(0, 0, 600, 1000, DETECTOR, isocenter=(400.0, 0.0, 0.0))
    edit(scan_dir, lambda d: d["views"][1].update(projection_matrix=away.tolist()))
    with pytest.raises(ScanError, match=r"view 1 \(images/001.tif\): does not see the ROI"):
        load_projections(read_scan(scan_dir))


def test_views_with_no_common_region(tmp_path: Path):
    P = carm_projection_matrix(0, 0, 600, 1000, DETECTOR)
    write_scan(tmp_path, line_integral_images(2), [P, P])
    with pytest.raises(ScanError, match=r"central rays of the views are \(nearly\) parallel"):
        load_projections(read_scan(tmp_path))


def test_inspect_scan_collects_every_problem(scan_dir: Path):
    (scan_dir / "images" / "000.tif").unlink()
    write_xray_image(scan_dir / "images" / "002.tif", -line_integral_images()[2])
    report = inspect_scan(scan_dir)
    assert len(report.problems) == 2
    assert report.problems[0].startswith("view 0 (images/000.tif)")
    assert report.problems[1].startswith("view 2 (images/002.tif)")
    assert report.image_shape == SHAPE
