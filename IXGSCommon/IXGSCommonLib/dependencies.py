"""Making the engine importable inside 3D Slicer without disturbing Slicer's own packages.

What the engine needs is read from one place, its package metadata: ``pyproject.toml`` next to
the engine (the source checkout, or the copy the extension packages with it), else the installed
``ixgs-engine`` distribution. Slicer bundles numpy, scipy, SimpleITK, pydicom, pillow and VTK;
replacing them breaks Slicer, so they are never installed or upgraded here: the others are
installed with a pip constraints file that pins Slicer's versions (pip then resolves around
them or fails instead of replacing one), and a bundled version the engine cannot use is
reported. PyTorch comes from the PyTorch extension (``PyTorchUtils``) when it is present, with
the engine's minimum version, because it picks the wheel that matches the GPU driver.
No Qt here: the installer callbacks are passed in (``slicer.util.pip_install`` in Slicer).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.requirements import Requirement

DISTRIBUTION = "ixgs-engine"
SLICER_OWNED = frozenset({"numpy", "scipy", "simpleitk", "pydicom", "pillow", "vtk"})
"""Distributions Slicer ships (normalized names); never installed or upgraded from here."""
TORCH = "torch"

VersionOf = Callable[[str], "str | None"]


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``SimpleITK`` -> ``simpleitk``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pyproject_dependencies(pyproject: Path) -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: pip's copy of the same parser
        from pip._vendor import tomli as tomllib
    with open(pyproject, "rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def engine_requirements(engine_parent: str | Path | None = None) -> list[Requirement]:
    """The engine's run-time requirements (no extras, markers evaluated for this Python): from
    ``pyproject.toml`` in ``engine_parent`` when it is there, else from the installed metadata."""
    pyproject = Path(engine_parent) / "pyproject.toml" if engine_parent is not None else None
    if pyproject is not None and pyproject.is_file():
        specs = _pyproject_dependencies(pyproject)
    else:
        try:
            specs = importlib.metadata.requires(DISTRIBUTION) or []
        except importlib.metadata.PackageNotFoundError as error:
            raise RuntimeError(
                f"the IXGS engine's requirements were found neither in {pyproject} nor as an installed "
                f"'{DISTRIBUTION}'; reinstall the IXGS extension"
            ) from error
    requirements = [Requirement(spec) for spec in specs]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def _satisfied(requirement: Requirement, version: str | None) -> bool:
    return version is not None and requirement.specifier.contains(version, prereleases=True)


def missing_requirements(requirements: Iterable[Requirement], version_of: VersionOf = installed_version) -> list[str]:
    """The requirements to install: not installed, or installed at a version the engine cannot
    use; never Slicer's own packages (see ``slicer_conflicts``) nor torch (``install_torch``)."""
    return [
        str(r)
        for r in requirements
        if normalized(r.name) not in SLICER_OWNED | {TORCH} and not _satisfied(r, version_of(r.name))
    ]


def slicer_conflicts(requirements: Iterable[Requirement], version_of: VersionOf = installed_version) -> list[str]:
    """One sentence per package that Slicer bundles at a version the engine cannot use."""
    conflicts = []
    for r in requirements:
        version = version_of(r.name)
        if normalized(r.name) in SLICER_OWNED and not _satisfied(r, version):
            found = f"{r.name} {version}" if version else f"no {r.name}"
            conflicts.append(f"this Slicer has {found}, IXGS needs {r}; use 3D Slicer 5.10 or later")
    return conflicts


def torch_requirement(requirements: Iterable[Requirement]) -> str | None:
    """The engine's torch version range (``>=2.1``), for PyTorchUtils; None when unconstrained."""
    for r in requirements:
        if normalized(r.name) == TORCH:
            return str(r.specifier) or None
    return None


def is_importable(name: str) -> bool:
    """Whether a top-level module can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


def engine_parent_folder(module_folder: str | Path) -> Path | None:
    """The folder holding the ``ixgs_engine`` package for a module in ``module_folder``: the
    module's own folder (installed extension: the engine is packaged next to the modules) or
    its parent (developer mode: the source checkout). None when neither has it."""
    folder = Path(module_folder).resolve()
    for candidate in (folder, folder.parent):
        if (candidate / "ixgs_engine" / "__init__.py").is_file():
            return candidate
    return None


_ENGINE_FOLDERS: dict[Path, Path | None] = {}


def make_engine_importable(module_folder: str | Path) -> Path | None:
    """Put the engine's folder on sys.path unless ``ixgs_engine`` is importable already (pip
    installed); returns the folder added (also needed on the engine processes' PYTHONPATH), the
    same on every call for one module folder (a module file and its Logic both ask)."""
    key = Path(module_folder).resolve()
    if key not in _ENGINE_FOLDERS:
        _ENGINE_FOLDERS[key] = _engine_on_path(key)
    return _ENGINE_FOLDERS[key]


def _engine_on_path(module_folder: Path) -> Path | None:
    if is_importable("ixgs_engine"):
        return None
    parent = engine_parent_folder(module_folder)
    if parent is None:
        raise RuntimeError(
            f"the IXGS engine (ixgs_engine) was found neither next to {module_folder} nor in its parent folder; "
            "reinstall the IXGS extension or add the source checkout's module folders again"
        )
    if str(parent) not in sys.path:
        sys.path.insert(0, str(parent))
    return parent


def install_torch(
    pip_install: Callable[[object], None], pytorch_utils_logic: object | None, requirement: str | None = None
) -> bool:
    """Install PyTorch: through the PyTorch extension when it is present (it asks the user and
    matches the GPU driver; ``requirement`` such as ``>=2.1`` is passed on), else with pip.
    Returns whether torch is importable afterwards."""
    if is_importable(TORCH):
        return True
    if pytorch_utils_logic is not None:
        if pytorch_utils_logic.installTorch(askConfirmation=True, torchVersionRequirement=requirement) is None:
            return False
    else:
        pip_install(f"{TORCH}{requirement or ''}")
    return is_importable(TORCH)


def install_missing(
    pip_install: Callable[[object], None], requirements: Iterable[str], version_of: VersionOf = installed_version
) -> list[str]:
    """Install ``requirements`` in one pip call constrained to Slicer's installed versions of its
    own packages (a constraints file), so pip never replaces one; returns what was asked for."""
    wanted = list(requirements)
    if not wanted:
        return []
    pins = [f"{name}=={version}" for name in sorted(SLICER_OWNED) if (version := version_of(name))]
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "slicer-packages.txt"
        constraints.write_text("\n".join(pins) + "\n", encoding="utf-8")
        pip_install(["--constraint", str(constraints), *wanted])
    return wanted


def device_summary(cuda_available: bool, gpu_name: str | None = None) -> tuple[str, str]:
    """The device ``auto`` will use and a sentence for the user."""
    if cuda_available:
        return "cuda", f"GPU found ({gpu_name or 'CUDA device'}): reconstructions run on the GPU."
    return "cpu", (
        "No CUDA GPU is visible to PyTorch: reconstructions run on the CPU, which is much slower. "
        "The 'auto' preset then runs the CPU recipe (minutes); install the PyTorch extension's CUDA build "
        "on a computer with an NVIDIA GPU for the full one."
    )
