"""Making the engine importable inside 3D Slicer without disturbing Slicer's own packages.

Slicer bundles numpy, SimpleITK, pydicom and VTK; replacing them breaks Slicer, so they are
never installed or upgraded here. The engine's other requirements are installed on first use,
one by one and with ``--no-deps`` (so pip cannot pull a different numpy behind our back), and
PyTorch comes from the PyTorch extension (``PyTorchUtils``) when it is present, because it
picks the wheel that matches the computer's GPU driver.
No Qt here: the installer callbacks are passed in (``slicer.util.pip_install`` in Slicer).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

BUNDLED_WITH_SLICER = ("numpy", "SimpleITK", "pydicom", "vtk")
"""Import names that Slicer ships; never installed or upgraded from here."""

ENGINE_REQUIREMENTS = {
    "scipy": "scipy>=1.10",
    "tifffile": "tifffile>=2023.1",
    "PIL": "pillow>=9",
    "tqdm": "tqdm>=4.60",
    "pylibjpeg": "pylibjpeg>=2.0",
    "openjpeg": "pylibjpeg-openjpeg>=2.0",
    "libjpeg": "pylibjpeg-libjpeg>=2.0",
    "pytorch_msssim": "pytorch-msssim>=1.0",
}
"""Import name -> pip requirement of the engine's dependencies other than torch and Slicer's own."""


def is_importable(name: str) -> bool:
    """Whether a top-level module can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


def missing_requirements(
    requirements: dict[str, str] = ENGINE_REQUIREMENTS, importable: Callable[[str], bool] = is_importable
) -> list[str]:
    """pip requirements whose modules cannot be imported, leaving out Slicer's bundled packages."""
    return [spec for name, spec in requirements.items() if name not in BUNDLED_WITH_SLICER and not importable(name)]


def engine_parent_folder(module_folder: str | Path) -> Path | None:
    """The folder holding the ``ixgs_engine`` package for a module in ``module_folder``: the
    module's own folder (installed extension: the engine is packaged next to the modules) or
    its parent (developer mode: the source checkout). None when neither has it."""
    folder = Path(module_folder).resolve()
    for candidate in (folder, folder.parent):
        if (candidate / "ixgs_engine" / "__init__.py").is_file():
            return candidate
    return None


def make_engine_importable(module_folder: str | Path) -> Path | None:
    """Put the engine's folder on sys.path unless ``ixgs_engine`` is importable already (pip
    installed); returns the folder added (also needed on the engine processes' PYTHONPATH)."""
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


def install_torch(pip_install: Callable[[str], None], pytorch_utils_logic: object | None) -> bool:
    """Install PyTorch: through the PyTorch extension when it is present (it asks the user and
    matches the GPU driver), else with pip. Returns whether torch is importable afterwards."""
    if is_importable("torch"):
        return True
    if pytorch_utils_logic is not None:
        if pytorch_utils_logic.installTorch(askConfirmation=True) is None:
            return False
    else:
        pip_install("torch")
    return is_importable("torch")


def install_missing(pip_install: Callable[[str], None], requirements: Iterable[str]) -> list[str]:
    """Install each requirement with ``--no-deps``; returns what was installed."""
    installed = []
    for requirement in requirements:
        pip_install(f"--no-deps {requirement}")
        installed.append(requirement)
    return installed


def device_summary(cuda_available: bool, gpu_name: str | None = None) -> tuple[str, str]:
    """The device ``auto`` will use and a sentence for the user."""
    if cuda_available:
        return "cuda", f"GPU found ({gpu_name or 'CUDA device'}): reconstructions run on the GPU."
    return "cpu", (
        "No CUDA GPU is visible to PyTorch: reconstructions run on the CPU, which is much slower. "
        "The 'auto' preset then runs the CPU recipe (minutes); install the PyTorch extension's CUDA build "
        "on a computer with an NVIDIA GPU for the full one."
    )
