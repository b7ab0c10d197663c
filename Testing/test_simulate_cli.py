"""`ixgs simulate` and `ixgs info` end to end on small scans, and the pose samplers."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ixgs_engine.cli import main
from ixgs_engine.io.scan import load_projections, read_scan
from ixgs_engine.io.volumes import read_volume, write_volume
from ixgs_engine.phantoms import make_phantom
from ixgs_engine.projector.joseph import JosephProjector
from ixgs_engine.simulate import add_poisson_noise, arbitrary_poses, circular_poses

SMALL = [
    "--phantom-size",
    "32",
    "--phantom-spacing",
    "6",
    "--views",
    "6",
    "--detector-pixels",
    "48",
    "40",
    "--pixel-size",
    "8",
]


def test_simulate_arbitrary_writes_a_consistent_scan(tmp_path: Path, capsys):
    assert main(["simulate", "-o", str(tmp_path / "scan"), *SMALL, "--device", "cpu"]) == 0
    summary = capsys.readouterr().out
    assert "simulated 6 arbitrary views 48x40 of spine phantom" in summary and "scan.json" in summary
    scan = read_scan(tmp_path / "scan")
    projections = load_projections(scan)
    assert projections.values.shape == (6, 40, 48)
    truth = read_volume(tmp_path / "scan" / scan.extra["ground_truth"])
    assert truth.shape == (32, 32, 32) and truth.array.max() > 0.02  # attenuation in 1/mm (bone)
    np.testing.assert_allclose(projections.roi.center, truth.center(), atol=1e-6)
    np.testing.assert_allclose(projections.roi.size, truth.extent())
    expected = JosephProjector(truth.grid, scan.matrices, (40, 48)).forward(torch.as_tensor(truth.array))
    np.testing.assert_allclose(projections.values, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert projections.values.max() > 1.0


def test_simulate_circular_stores_the_orbit_compactly(tmp_path: Path):
    assert main(["simulate", "-o", str(tmp_path), *SMALL, "--orbit", "circular", "--arc", "0", "180"]) == 0
    document = json.loads((tmp_path / "scan.json").read_text())
    assert document["geometry"]["angles_deg"] == pytest.approx(np.linspace(0, 180, 6).tolist())
    assert "projection_matrix" not in document["views"][0]
    assert load_projections(read_scan(tmp_path)).values.shape == (6, 40, 48)


def test_simulate_refuses_to_overwrite_without_flag(tmp_path: Path, capsys):
    assert main(["simulate", "-o", str(tmp_path), *SMALL]) == 0
    assert main(["simulate", "-o", str(tmp_path), *SMALL]) == 2
    assert "already holds a scan; pass --overwrite" in capsys.readouterr().err
    assert main(["simulate", "-o", str(tmp_path), *SMALL, "--overwrite"]) == 0


def test_simulate_a_volume_file_in_hounsfield_units(tmp_path: Path, capsys):
    hu = make_phantom("shepp-logan", (24, 24, 24), 5.0)
    hu.origin = hu.origin + np.array([10.0, -20.0, 30.0])
    write_volume(tmp_path / "ct.nrrd", hu)
    assert (
        main(
            [
                "simulate",
                str(tmp_path / "ct.nrrd"),
                "-o",
                str(tmp_path / "scan"),
                "--views",
                "4",
                "--detector-pixels",
                "40",
                "40",
                "--pixel-size",
                "8",
            ]
        )
        == 0
    )
    assert "(HU)" in capsys.readouterr().out
    truth = read_volume(tmp_path / "scan" / "ground_truth.nrrd")
    np.testing.assert_allclose(truth.origin, hu.origin)
    assert truth.array.min() >= 0.0
    # The poses aim at the volume centre by default.
    assert load_projections(read_scan(tmp_path / "scan")).roi.center == pytest.approx(hu.center())


def test_poisson_noise_scales_with_dose():
    clean = np.full((200, 200), 2.0, np.float32)
    low = add_poisson_noise(clean, 1e3, seed=1)
    high = add_poisson_noise(clean, 1e5, seed=1)
    # Var(-ln(N/N0)) ~ 1 / (N0 exp(-p)).
    assert np.std(low) == pytest.approx(np.sqrt(np.exp(2.0) / 1e3), rel=0.05)
    assert np.std(high) == pytest.approx(np.sqrt(np.exp(2.0) / 1e5), rel=0.05)
    assert abs(np.mean(high) - 2.0) < 0.01


def test_pose_samplers():
    poses = arbitrary_poses(10, (-90, 90), (-20, 20), isocenter_jitter_mm=5.0, isocenter=(1, 2, 3), seed=4)
    primary = [p.primary_deg for p in poses]
    assert primary == sorted(primary)  # one per stratum
    assert all(-90 + 18 * i <= a <= -90 + 18 * (i + 1) for i, a in enumerate(primary))
    assert all(-20 <= p.secondary_deg <= 20 for p in poses)
    assert all(np.max(np.abs(np.subtract(p.isocenter, (1, 2, 3)))) <= 5.0 for p in poses)
    assert arbitrary_poses(10, seed=4) == arbitrary_poses(10, seed=4)
    full = circular_poses(4)
    assert [p.primary_deg for p in full] == [0.0, 90.0, 180.0, 270.0]


def test_info_reports_geometry_and_problems(tmp_path: Path, capsys):
    main(["simulate", "-o", str(tmp_path), *SMALL])
    capsys.readouterr()
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "6 views, line_integral, 48x40 pixels" in out and "problems  none" in out
    assert "yes" in out  # the default C-arm detector is mirrored
    (tmp_path / "images" / "003.tif").unlink()
    assert main(["info", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "problems  1" in out and "view 3 (images/003.tif)" in out


def test_info_on_a_folder_without_scan(tmp_path: Path, capsys):
    assert main(["info", str(tmp_path)]) == 1
    assert "scan.json not found" in capsys.readouterr().out


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "ixgs_engine", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("ixgs ")
