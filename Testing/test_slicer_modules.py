"""The GUI-free helpers of IXGSCommonLib and IXGSReconstructionLib against the real engine:
engine processes and their output (progress, cancel and resume), dependencies, scan assembly
from image files, POINTS_JSON and the command lines the modules run (the extension's files:
test_slicer_layout.py)."""

import ast
import json
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from PIL import Image

from ixgs_engine.cli import build_parser
from ixgs_engine.geometry.carm import Detector, carm_projection_matrix
from ixgs_engine.geometry.projection import normalize_projection_matrix
from ixgs_engine.geometry.roi import ROI
from ixgs_engine.io.scan import load_projections, read_scan, write_scan
from ixgs_engine.io.xray_images import write_xray_image
from ixgs_engine.poses.detection import read_points
from IXGSCommonLib import dependencies, engine_process  # on the path: conftest.py
from IXGSReconstructionLib import points_file, scan_files

ROOT = Path(__file__).resolve().parents[1]


def test_engine_process_reads_progress_and_summary_of_a_real_run(tmp_path):
    """Simulate and reconstruct a tiny scan in engine processes; feed their output in awkward
    chunks (as a pipe delivers it) to the reader the GUI uses."""
    environment = engine_process.engine_environment(engine_parent=ROOT)
    environment["OMP_NUM_THREADS"] = "1"
    simulate = [
        "simulate",
        "-o",
        str(tmp_path / "scan"),
        "--phantom-size",
        "24",
        "--phantom-spacing",
        "8",
        "--views",
        "5",
        "--detector-pixels",
        "40",
        "40",
        "--pixel-size",
        "8",
    ]
    reconstruct = engine_process.reconstruct_arguments(tmp_path / "scan", tmp_path / "run", "fast", "cpu", 8, 8.0)
    assert build_parser().parse_args(reconstruct).iterations == 8
    for arguments in (simulate, reconstruct + ["--gaussians", "300"]):
        completed = subprocess.run(
            engine_process.engine_command(arguments), env=environment, capture_output=True, timeout=300
        )
        assert completed.returncode == 0, completed.stderr.decode()[-2000:]
        reader = engine_process.OutputReader()
        stream = completed.stderr + completed.stdout
        events = []
        for start in range(0, len(stream), 37):
            events += reader.feed(stream[start : start + 37])[0]
        events += reader.finish()[0]
        assert events and events[-1].done == events[-1].total and events[-1].fraction == 1.0
        assert [e.done for e in events] == sorted(e.done for e in events)
    assert all(np.isfinite(e.values["loss"]) for e in events)
    assert reader.last_message().startswith("reconstructed 5 views") and "volume.nrrd" in reader.last_message()
    assert (tmp_path / "run" / "volume.nrrd").is_file()


def test_cancel_through_the_modules_command_then_resume_gives_the_uninterrupted_volume(tmp_path):
    """What the module's Cancel does (engine_process.request_cancel on the command's cancel
    file, the channel that also works on Windows) to an engine process mid-run; Resume's command
    line then finishes the run to the same volume, bit for bit, as a run never cancelled."""
    from ixgs_engine.io.volumes import read_volume
    from ixgs_engine.simulate import simulate_phantom_scan

    environment = engine_process.engine_environment(engine_parent=ROOT)
    environment["OMP_NUM_THREADS"] = "1"
    simulate_phantom_scan(tmp_path / "scan", "spine", 24, 8.0, 5, 40, 8.0)
    extra = ["--gaussians", "300", "--seed", "3"]

    def arguments(run: str, resume: bool = False) -> list[str]:
        return [
            *engine_process.reconstruct_arguments(
                tmp_path / "scan", tmp_path / run, "fast", "cpu", 100, 8.0, resume=resume
            ),
            *extra,
        ]

    whole = subprocess.run(
        engine_process.engine_command(arguments("whole")), env=environment, capture_output=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr.decode()[-2000:]
    cancel = engine_process.cancel_file_in(arguments("cut"))
    assert cancel == tmp_path / "cut" / engine_process.CANCEL_FILE_NAME
    process = subprocess.Popen(
        engine_process.engine_command(arguments("cut")),
        env=environment,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    reader = engine_process.OutputReader()
    for line in process.stderr:  # cancel once training has made some progress
        events, _ = reader.feed(line)
        if any(e.stage == "reconstructing" and e.done >= 5 for e in events):
            engine_process.request_cancel(cancel)
            break
    _, rest = process.communicate(timeout=300)
    assert process.returncode == 130, rest.decode()[-2000:]
    reader.feed(rest)
    reader.finish()
    assert "resume with `resume`" in rest.decode()  # the engine names its parameter; the module words it
    assert 'resume with the "Resume" option' in reader.last_message()
    cancel.unlink()  # as the module's job does before it starts the next run
    resumed = subprocess.run(
        engine_process.engine_command(arguments("cut", resume=True)), env=environment, capture_output=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert np.array_equal(
        read_volume(tmp_path / "cut" / "volume.nrrd").array, read_volume(tmp_path / "whole" / "volume.nrrd").array
    )


def test_progress_lines_are_told_from_other_output():
    event = engine_process.parse_progress_line('{"progress": "training", "done": 3, "total": 12, "l1": 0.5}\n')
    assert (event.stage, event.done, event.total) == ("training", 3, 12)
    assert (event.values, event.fraction) == ({"l1": 0.5}, 0.25)
    for line in ("warning: something", '{"not": "progress"}', "{broken json", "[1, 2]"):
        assert engine_process.parse_progress_line(line) is None
    reader = engine_process.OutputReader()
    assert reader.feed(b'{"progress": "x", "done": 1, "total": 2}\r\nlast line') == ([reader.last_progress], [])
    assert reader.finish() == ([], ["last line"])


def test_engine_environment_and_commands(tmp_path):
    environment = engine_process.engine_environment({"PYTHONPATH": "/elsewhere"}, tmp_path)
    assert environment["IXGS_PROGRESS"] == "jsonl"
    assert environment["PYTHONPATH"].split(engine_process.os.pathsep) == [str(tmp_path), "/elsewhere"]
    command = engine_process.engine_command(["info", tmp_path])
    assert command[1:] == ["-m", "ixgs_engine", "info", str(tmp_path)]


def test_dependencies_never_touch_slicers_packages_and_find_the_engine(tmp_path):
    requirements = dependencies.engine_requirements(ROOT)
    installed = {
        "numpy": "2.0.2",
        "scipy": "1.13.1",
        "SimpleITK": "2.4.0",
        "pydicom": "2.4.4",
        "pillow": "11.2.1",
        "tifffile": "2022.1.1",
        "tqdm": "4.66.0",
    }
    missing = dependencies.missing_requirements(requirements, version_of=installed.get)
    names = {Requirement(spec).name for spec in missing}
    assert not names & {"numpy", "scipy", "SimpleITK", "pydicom", "pillow", "torch"}
    assert "tifffile>=2023.1" in missing  # installed, but older than the engine needs
    assert "tqdm>=4.60" not in missing
    assert dependencies.slicer_conflicts(requirements, version_of=installed.get) == []
    old_slicer = dict(installed, pydicom="2.3.1")
    assert dependencies.slicer_conflicts(requirements, version_of=old_slicer.get) == [
        "this Slicer has pydicom 2.3.1, IXGS needs pydicom>=2.4; use 3D Slicer 5.10 or later"
    ]
    calls = []
    assert dependencies.install_missing(calls.append, ["tqdm>=4.60"], version_of=installed.get) == ["tqdm>=4.60"]
    ((flag, constraints, requirement),) = [call for call in calls]
    assert (flag, requirement) == ("--constraint", "tqdm>=4.60")
    assert dependencies.install_missing(calls.append, []) == [] and len(calls) == 1
    assert dependencies.engine_parent_folder(ROOT / "IXGSReconstruction") == ROOT
    assert dependencies.engine_parent_folder(tmp_path) is None
    assert dependencies.device_summary(True, "H100")[0] == "cuda"
    device, message = dependencies.device_summary(False)
    assert device == "cpu" and "CPU" in message


def test_install_missing_pins_slicers_own_packages_in_a_constraints_file():
    seen = {}

    def pip_install(args):
        seen["args"] = args
        seen["pins"] = Path(args[1]).read_text().split()

    dependencies.install_missing(pip_install, ["opencv-python-headless>=4.8"], {"numpy": "2.0.2", "vtk": "9.4.2"}.get)
    assert seen["pins"] == ["numpy==2.0.2", "vtk==9.4.2"]
    assert seen["args"][-1] == "opencv-python-headless>=4.8"
    assert not Path(seen["args"][1]).exists()  # a temporary file, removed after the call


def test_missing_requirements_reports_a_missing_cv2():
    """Pose detection imports cv2: a Slicer without opencv must be told to install it."""
    requirements = dependencies.engine_requirements(ROOT)

    def without_opencv(name):
        return None if name == "opencv-python-headless" else dependencies.installed_version(name)

    assert any(
        spec.startswith("opencv-python-headless")
        for spec in dependencies.missing_requirements(requirements, without_opencv)
    )
    assert not any(spec.startswith("opencv") for spec in dependencies.missing_requirements(requirements))
    torch = dependencies.torch_requirement(requirements)
    assert torch is not None and torch.startswith(">=")


def test_the_module_installs_what_pyproject_declares_and_that_covers_every_engine_import():
    """One source of truth: the modules' list is pyproject.toml's, and every third-party package
    the engine imports (at any depth) is declared there (run-time) or in an extra (optional)."""
    import importlib.metadata

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [str(r) for r in dependencies.engine_requirements(ROOT)] == [
        str(Requirement(spec)) for spec in project["dependencies"]
    ]
    declared = {dependencies.normalized(Requirement(spec).name) for spec in project["dependencies"]}
    optional = set()  # extras' packages, with those their own extras name (dask[distributed])
    for spec in (spec for specs in project["optional-dependencies"].values() for spec in specs):
        optional |= {dependencies.normalized(n) for n in (Requirement(spec).name, *Requirement(spec).extras)}
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for path in (ROOT / "ixgs_engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(imported - set(sys.stdlib_module_names) - {"ixgs_engine", "__future__"})
    assert "cv2" in third_party and "torch" in third_party
    undeclared = {}
    for name in third_party:
        # not installed here: an optional extra of the same name (ray)
        owners = {dependencies.normalized(d) for d in distributions.get(name, [name])}
        if not owners & (declared | optional):
            undeclared[name] = sorted(owners)
    assert undeclared == {}


def write_views(folder: Path, count: int) -> tuple[list[Path], list[np.ndarray]]:
    detector = Detector((32, 24), (2.0, 2.0))
    images, matrices = [], []
    for index in range(count):
        pixels = np.random.default_rng(index).uniform(0.0, 2.0, size=(24, 32)).astype(np.float32)
        path = folder / f"raw{index}.tif"
        write_xray_image(path, pixels)
        images.append(path)
        matrices.append(carm_projection_matrix(40.0 * index, 10.0, 600.0, 1000.0, detector))
    return images, matrices


def test_build_scan_from_images_and_matrix_files(tmp_path):
    images, matrices = write_views(tmp_path, 3)
    matrix_files = []
    for index, matrix in enumerate(matrices):
        path = tmp_path / f"view{index}.txt"
        np.savetxt(path, 3.5 * matrix)  # any positive scale
        matrix_files.append(path)
    scan_files.build_scan(tmp_path / "scan", images, matrix_files, "line_integral")
    scan = read_scan(tmp_path / "scan")
    np.testing.assert_allclose(
        [normalize_projection_matrix(m) for m in scan.matrices],
        [normalize_projection_matrix(m) for m in matrices],
        atol=1e-9,
    )
    projections = load_projections(scan)
    np.testing.assert_array_equal(projections.values[2], np.asarray(Image.open(images[2]), dtype=np.float32))
    scan_files.build_scan(tmp_path / "uncalibrated", images, None, "radiograph")
    assert [v.projection_matrix for v in read_scan(tmp_path / "uncalibrated", require_poses=False).views] == [None] * 3
    with pytest.raises(Exception, match="give one per image"):
        scan_files.build_scan(tmp_path / "bad", images, matrix_files[:2])
    (tmp_path / "short.txt").write_text("1 2 3")
    with pytest.raises(Exception, match="holds 3 numbers"):
        scan_files.read_matrix_file(tmp_path / "short.txt")


def test_scan_with_roi_points_at_the_original_images(tmp_path):
    images, matrices = write_views(tmp_path, 3)
    source = tmp_path / "calibrated"
    write_scan(source, [np.asarray(Image.open(p), dtype=np.float32) for p in images], matrices)
    roi = ROI((1.0, 2.0, 3.0), (20.0, 30.0, 40.0))
    copy = scan_files.scan_with_roi(source, roi, tmp_path / "run" / "input-scan")
    scan = read_scan(copy)
    np.testing.assert_allclose(scan.roi.size, roi.size)
    np.testing.assert_array_equal(load_projections(scan).values, load_projections(read_scan(source)).values)
    assert json.loads((source / "scan.json").read_text()).get("roi") is None  # the input is untouched


def test_points_json_is_read_by_the_pose_engine(tmp_path):
    points = {0: [{"u": 10.5, "v": 3.25, "bead": 2}, {"u": 1.0, "v": 2.0}], 3: [{"u": 5.0, "v": 6.0, "bead": 0}], 2: []}
    path = points_file.write_points_json(tmp_path / "points.json", points)
    parsed = read_points(path, view_count=4, bead_count=5)
    assert sorted(parsed) == [0, 3]
    assert [(d.u, d.v, d.bead) for d in parsed[0]] == [(10.5, 3.25, 2), (1.0, 2.0, None)]
    assert points_file.read_points_json(path)[3] == [{"u": 5.0, "v": 6.0, "bead": 0}]
    with pytest.raises(Exception, match="no finite pixel position"):
        points_file.write_points_json(tmp_path / "bad.json", {1: [{"u": float("nan"), "v": 0.0}]})
    (tmp_path / "other.json").write_text('{"something": 1}')
    with pytest.raises(Exception, match="not a points file"):
        points_file.read_points_json(tmp_path / "other.json")


def test_poses_arguments_follow_the_command_line_contract(tmp_path):
    detect = build_parser().parse_args(engine_process.poses_detect_arguments(tmp_path, "helix", tmp_path / "d"))
    assert (detect.scan, detect.phantom, detect.output) == (str(tmp_path), "helix", str(tmp_path / "d"))
    joined = engine_process.poses_estimate_arguments(tmp_path, "p.json", "o", "pts.json", tmp_path / "d.json")
    parsed = build_parser().parse_args(joined)
    assert (parsed.points, parsed.detections, parsed.no_auto) == ("pts.json", str(tmp_path / "d.json"), False)
    automatic = build_parser().parse_args(engine_process.poses_estimate_arguments(tmp_path, "p.json", "o"))
    assert automatic.points is None and automatic.detections is None


def test_manual_points_are_the_ones_the_user_added_moved_or_labelled():
    detected = [(10.0, 10.0), (50.0, 20.0), (30.0, 40.0)]
    markups = [{"u": 10.1, "v": 9.9}, {"u": 53.0, "v": 20.0}, {"u": 30.0, "v": 40.0, "bead": 7}, {"u": 80.0, "v": 5.0}]
    assert points_file.manual_points(markups, detected) == markups[1:]
    assert points_file.manual_points(markups, []) == markups


def test_standardize_arguments_follow_the_command_line_contract(tmp_path):
    train = engine_process.standardize_train_arguments(tmp_path, tmp_path / "m.pt", "paper", 5, True)
    parsed = build_parser().parse_args(train)
    assert (parsed.pairs, parsed.output, parsed.config, parsed.steps, parsed.resume) == (
        str(tmp_path),
        str(tmp_path / "m.pt"),
        "paper",
        5,
        True,
    )
    default_steps = engine_process.standardize_train_arguments(tmp_path, "m.pt", "light")
    assert build_parser().parse_args(default_steps).steps is None
    apply = build_parser().parse_args(engine_process.standardize_apply_arguments("m.pt", tmp_path, "out"))
    assert (apply.model, apply.scan, apply.output, apply.overwrite) == ("m.pt", str(tmp_path), "out", True)


def test_picked_files_are_in_view_order_and_dicom_series_never_hide_each_other():
    picked = ["/x/view10.dcm", "/x/View2.dcm", "/x/view1.dcm", "/x/view2b.dcm"]
    assert scan_files.natural_order(picked) == ["/x/view1.dcm", "/x/View2.dcm", "/x/view2b.dcm", "/x/view10.dcm"]
    numbers = {"a/1.dcm": "3", "a/2.dcm": "1", "a/3.dcm": "", "a/4.dcm": "2", "b/9.dcm": "1", "b/10.dcm": "2"}
    choices = scan_files.dicom_series_choices(
        [
            ("Doe: XA run (4 images)", ["a/1.dcm", "a/2.dcm", "a/3.dcm", "a/4.dcm"]),
            ("Doe: XA run (2 images)", ["b/10.dcm", "b/9.dcm"]),
            ("Doe: XA run (4 images)", ["a/2.dcm"]),
        ],
        numbers.get,
    )
    assert [label for label, _files in choices] == [
        "Doe: XA run (4 images)",
        "Doe: XA run (2 images)",
        "Doe: XA run (4 images) (2)",
    ]
    assert choices[0][1] == ["a/2.dcm", "a/4.dcm", "a/1.dcm", "a/3.dcm"]  # by Instance Number, unnumbered last
    assert choices[1][1] == ["b/9.dcm", "b/10.dcm"]


def test_the_model_to_write_field_offers_a_save_dialog():
    """ctkPathLineEdit opens a Save dialog (a new file can be named) only with Files|Writable."""
    tree = ElementTree.parse(ROOT / "IXGSStandardize" / "Resources" / "UI" / "IXGSStandardize.ui")
    widget = tree.find(".//widget[@name='trainModelPathLineEdit']")
    filters = widget.find("property[@name='filters']/set").text
    assert "ctkPathLineEdit::Writable" in filters and "ctkPathLineEdit::Files" in filters
