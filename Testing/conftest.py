"""Shared test set-up: the Slicer modules' folders are importable, as each is on the path in
Slicer, so tests import ``IXGSCommonLib``, ``IXGSReconstructionLib`` and the module files directly."""

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]

for _module in ("IXGSCommon", "IXGSReconstruction", "IXGSStandardize"):
    if str(_ROOT / _module) not in sys.path:
        sys.path.insert(0, str(_ROOT / _module))
