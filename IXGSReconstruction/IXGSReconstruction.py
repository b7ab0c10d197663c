"""IXGS Reconstruction: 3-D volumes from a few X-rays at arbitrary C-arm poses, in 3D Slicer.

Load X-rays (scan folder, image files or Slicer's DICOM database) and their poses (projection
matrices, or estimated from a calibration phantom's beads with points the user can correct),
choose the box, preset and device, reconstruct in a separate process with live progress and
Cancel, then review the volume thresholded in the slice views and rendered in 3-D, realigned to
the anatomical axes. The work is done by the ``ixgs_engine`` package. This file is the template's
entry point; the parameter node, the Logic (and the interface the widget is given) and the
widget are in IXGSReconstructionLib, the self-tests in Testing/, what both IXGS modules share in
IXGSCommonLib.
"""

import os
import sys

from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

MODULE_FOLDER = os.path.dirname(os.path.abspath(__file__))
# IXGSCommonLib lies beside this file in an installed extension, in ../IXGSCommon in the source tree.
_COMMON = os.path.join(os.path.dirname(MODULE_FOLDER), "IXGSCommon")
if os.path.isdir(_COMMON) and _COMMON not in sys.path:
    sys.path.insert(0, _COMMON)

from IXGSCommonLib import dependencies  # noqa: E402

ENGINE_PARENT = dependencies.make_engine_importable(MODULE_FOLDER)

from IXGSCommonLib.scripted_module import self_tests  # noqa: E402
from IXGSReconstructionLib.logic import IXGSReconstructionLogic  # noqa: E402, F401  (Slicer and the console find it here)
from IXGSReconstructionLib.widget import IXGSReconstructionWidget  # noqa: E402, F401


class IXGSReconstruction(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("IXGS Reconstruction")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Reconstruction")]
        self.parent.dependencies = []
        self.parent.contributors = ["IXGS contributors"]
        self.parent.helpText = _(
            "Reconstruct a 3-D volume from 10-50 intraoperative X-rays taken at arbitrary C-arm poses with "
            "radiative Gaussian splatting (IXGS). Load a scan folder, X-ray files or a DICOM series; import or "
            "estimate the poses; pick the box, preset and device; reconstruct; threshold, render and realign."
        )
        self.parent.acknowledgementText = _(
            "IXGS follows the IXGS paper (arXiv 2504.14699) and R2-Gaussian's radiative Gaussian splatting."
        )


IXGSReconstructionTest = self_tests(MODULE_FOLDER, "IXGSReconstructionTest")
