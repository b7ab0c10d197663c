"""Shared test set-up: the Slicer modules' folders are importable, as each is on the path in
Slicer, so tests import ``IXGSCommonLib``, ``IXGSReconstructionLib`` and the module files directly;
tests marked ``gpu`` are skipped, saying so, where no CUDA GPU is present."""

import sys
from pathlib import Path

import pytest
import torch

_ROOT = Path(__file__).resolve().parents[1]

for _module in ("IXGSCommon", "IXGSReconstruction", "IXGSStandardize"):
    if str(_ROOT / _module) not in sys.path:
        sys.path.insert(0, str(_ROOT / _module))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``gpu`` tests without a CUDA GPU (they run wherever one is present)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def rtk_available() -> None:
    """Loads itk and RTK once (slow the first time); skips without itk-rtk."""
    pytest.importorskip("itk")
    try:
        from itk import RTK

        RTK.ThreeDCircularProjectionGeometry  # noqa: B018 (itk loads a module on first access)
    except (ImportError, AttributeError):
        pytest.skip("itk-rtk is not installed")
