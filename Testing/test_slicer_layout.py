"""The Slicer extension's files without Slicer: the module files compile, load with only what
Slicer bundles and follow the template's layout (both modules share IXGSCommonLib, neither
imports the other; IXGS Reconstruction's widget asks of its Logic only what the declared
interface has), the .ui files parse and match the code and the parameter nodes, CMake lists
every script and resource, and the preset names are the engine's."""

import ast
import inspect
import json
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from PIL import Image

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


def attributes_of_self(source: str, holder: str) -> set[str]:
    """Names used as ``self.<holder>.<name>`` in a module (``holder``: ``ui``, ``logic``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == holder
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
    missing = attributes_of_self(source, "ui") - set(widgets)
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
    from ixgs_engine.reconstruct.config import PRESETS
    from ixgs_engine.reconstruct.presets import DEFAULT_PRESET, PRESET_SUMMARIES

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
    assert "ixgs_engine.reconstruct.presets" in engine, "the walk must follow the libraries"
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
        asked |= attributes_of_self(path.read_text(), "logic")
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
