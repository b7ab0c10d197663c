"""The Slicer extension without Slicer: module files compile, .ui files parse and match the code
and the parameter nodes, CMake lists every script and resource, and the GUI-free helpers of
IXGSCommonLib and IXGSReconstructionLib (engine processes, dependencies, scan assembly,
POINTS_JSON) work against the real engine; the modules share IXGSCommonLib and neither imports
the other; IXGS Reconstruction's widget asks of its Logic only what the declared interface has."""

import ast
import inspect
import json
import py_compile
import re
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
MODULES = ("IXGSReconstruction", "IXGSStandardize")


def module_python_files(module: str) -> list[Path]:
    return sorted(p for p in (ROOT / module).rglob("*.py") if "__pycache__" not in p.parts)


def cmake_list(text: str, variable: str, module: str) -> set[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.DOTALL)
    assert match, f"{variable} is not set"
    return {entry.replace("${MODULE_NAME}", module) for entry in match.group(1).split()}


@pytest.mark.parametrize("module", MODULES)
def test_module_python_files_compile(module, tmp_path):
    files = module_python_files(module)
    assert ROOT / module / f"{module}.py" in files
    for path in files:
        py_compile.compile(str(path), cfile=str(tmp_path / (path.name + "c")), doraise=True)


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_script_and_resource(module):
    text = (ROOT / module / "CMakeLists.txt").read_text()
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS", module)
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES", module)
    on_disk = {p.relative_to(ROOT / module).as_posix() for p in module_python_files(module)}
    assert scripts == on_disk
    resource_files = {
        p.relative_to(ROOT / module).as_posix() for p in (ROOT / module / "Resources").rglob("*") if p.is_file()
    }
    assert resources == resource_files
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    top = (ROOT / "CMakeLists.txt").read_text()
    assert f"add_subdirectory({module})" in top


def test_extension_metadata_and_index_entry_agree():
    top = (ROOT / "CMakeLists.txt").read_text()
    metadata = dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', top))
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert f"EXTENSION_{key}" in metadata
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in top
    entry = json.loads((ROOT / "IXGS.json").read_text())
    assert entry["category"] == metadata["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == metadata["EXTENSION_DEPENDS"].split()
    assert entry["scm_url"].startswith("https://") and entry["scm_revision"] and entry["tier"] in (1, 3, 5)
    assert metadata["EXTENSION_ICONURL"].endswith("Resources/Icons/IXGS.png")
    with Image.open(ROOT / "Resources" / "Icons" / "IXGS.png") as icon:
        assert icon.size == (128, 128)


def parameter_node_fields(source: str) -> set[str]:
    """Annotated fields of the class decorated with @parameterNodeWrapper."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class")


def ui_widget_names(source: str) -> set[str]:
    """Names used as ``self.ui.<name>`` in a module."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            names.add(node.attr)
    return names


@pytest.mark.parametrize("module", MODULES)
def test_ui_file_parses_and_matches_the_widget_and_parameter_node(module):
    tree = ElementTree.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    root = tree.getroot()
    assert root.tag == "ui" and root.findtext("class") == module
    assert root.find("widget").get("class") == "qMRMLWidget"
    widgets = {w.get("name"): w for w in root.iter("widget")}
    bound = {
        w.find("property[@name='SlicerParameterName']/string").text
        for w in widgets.values()
        if w.find("property[@name='SlicerParameterName']") is not None
    }
    source = "\n".join(path.read_text() for path in module_python_files(module))
    fields = parameter_node_fields(source)
    assert bound <= fields, f"widgets bound to unknown parameters: {bound - fields}"
    missing = ui_widget_names(source) - set(widgets)
    assert not missing, f"the code uses widgets the .ui lacks: {missing}"
    for combo in (w for w in widgets.values() if w.get("class") == "qMRMLNodeComboBox"):
        receivers = {
            c.findtext("receiver")
            for c in root.iter("connection")
            if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        }
        assert combo.get("name") in receivers, f"{combo.get('name')} never gets the scene"
    assert f'self.resourcePath("UI/{module}.ui")' in source and "uiWidget.setMRMLScene(slicer.mrmlScene)" in source
    with Image.open(ROOT / module / "Resources" / "Icons" / f"{module}.png") as icon:
        assert icon.size == (128, 128)


def test_preset_names_are_the_engine_s_defined_once():
    """The engine defines the presets and their one-line summaries; the module's parameter node
    offers those names and its widget shows those summaries (the .ui lists none of its own)."""
    from ixgs_engine.reconstruct.config import DEFAULT_PRESET, PRESET_SUMMARIES, PRESETS

    assert set(PRESET_SUMMARIES) == {DEFAULT_PRESET, *PRESETS}
    lib = ROOT / "IXGSReconstruction" / "IXGSReconstructionLib"
    assert "Choice(PRESET_CHOICES)" in (lib / "parameters.py").read_text()
    assert "PRESET_SUMMARIES.items()" in (lib / "widget.py").read_text()
    for ui in ROOT.glob("IXGS*/Resources/UI/*.ui"):
        assert not any(f"{name}:" in ui.read_text() for name in PRESETS if name != "cpu"), ui


LIBRARIES = {"IXGSCommonLib": ROOT / "IXGSCommon", "IXGSReconstructionLib": ROOT / "IXGSReconstruction"}
GUI_ONLY = {"qt", "slicer", "vtk", "ctk"}  # Slicer's own: present wherever the modules load


def _library_file(name: str) -> Path | None:
    """The file of a module of the modules' libraries (``IXGSCommonLib.engine_jobs``), or None."""
    package, _, rest = name.partition(".")
    if package not in LIBRARIES:
        return None
    path = LIBRARIES[package] / package / (rest.replace(".", "/") + ".py" if rest else "__init__.py")
    return path if path.is_file() else None


def _load_time_imports(path: Path, seen: set[Path]) -> set[str]:
    """What importing ``path`` imports at module level, following the modules' own libraries."""
    seen.add(path)
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            library = _library_file(name)
            if library is not None:
                if library not in seen:
                    found |= _load_time_imports(library, seen)
            elif name.split(".")[0] not in GUI_ONLY and not name.startswith(tuple(LIBRARIES)):
                found.add(name)
    return found


def test_module_level_imports_need_only_what_slicer_bundles():
    """The modules must load in a fresh Slicer, before the engine's other dependencies are
    installed: whatever their files (and the libraries they import) import at load time must
    import without torch, scipy, tifffile, ... (Slicer's own GUI modules aside)."""
    needed: set[str] = set()
    for module in MODULES:
        needed |= _load_time_imports(ROOT / module / f"{module}.py", set())
    engine = sorted(name for name in needed if name.startswith("ixgs_engine"))
    assert "ixgs_engine.reconstruct.config" in engine, "the walk must follow the libraries"
    missing = {"torch", "scipy", "tifffile", "PIL", "tqdm", "pylibjpeg", "pytorch_msssim"}
    blocker = (
        "import importlib, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {missing!r}:\n"
        "            raise ImportError('not installed in a fresh Slicer: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path[:0] = {[str(folder) for folder in LIBRARIES.values()]!r}\n"
        f"for name in {sorted(needed)!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as error:\n"
        "        if error.name != name:  # a name imported from a module (a class, a function) is not a module\n"
        "            raise\n"
    )
    completed = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_the_modules_share_a_neutral_library_and_neither_imports_the_other():
    for module, other in (MODULES, MODULES[::-1]):
        files = [ROOT / module / f"{module}.py", *module_python_files(module)]
        for path in files:
            imported = {n for n in _load_time_imports(path, set())} | {
                node.module or "" for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
            }
            assert not any(name == other or name.startswith(f"{other}Lib") for name in imported), (path, other)


def test_the_reconstruction_widget_asks_its_logic_only_what_the_interface_declares():
    from IXGSReconstructionLib.logic_interface import ReconstructionLogic

    declared = {name for name in vars(ReconstructionLogic) if not name.startswith("_")}
    asked = set()
    for path in (
        ROOT / "IXGSReconstruction" / "IXGSReconstructionLib" / "widget.py",
        LIBRARIES["IXGSCommonLib"] / "IXGSCommonLib" / "scripted_module.py",
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "logic"
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"
            ):
                asked.add(node.attr)
    assert {"reconstruct", "loadScan", "cancelJob"} <= asked, "the walk must see the widget's calls"
    assert sorted(asked - declared) == []
    # The Logic implements all of it, with the parameters the interface names.
    logic_source = (ROOT / "IXGSReconstruction" / "IXGSReconstructionLib" / "logic.py").read_text()
    logic_methods = {
        node.name: [a.arg for a in node.args.args]
        for node in ast.walk(ast.parse(logic_source))
        if isinstance(node, ast.FunctionDef)
    }
    base_methods = {"getParameterNode", "isJobRunning", "cancelJob"}  # EngineModuleLogic's (scripted_module)
    for name in declared:
        interface_arguments = list(inspect.signature(getattr(ReconstructionLogic, name)).parameters)[1:]
        if name in logic_methods:
            assert [a for a in logic_methods[name] if a != "self"] == interface_arguments, name
        else:
            assert name in base_methods, name


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
