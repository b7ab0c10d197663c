"""IXGS Standardize: make raw X-rays look like bone-enhanced DRRs before reconstruction.

Pick a trained model and preview a raw X-ray beside its standardized version; apply the model
to a whole scan (a new scan folder, ready for IXGS Reconstruction); or train a model from a
folder of raw/target pairs, with progress and Cancel. Preview, apply and training run
``ixgs standardize preview|apply|train`` in a separate process, so Slicer stays responsive.
"""

import os
import pathlib
import sys
import time
from typing import Annotated

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

MODULE_FOLDER = os.path.dirname(os.path.abspath(__file__))
# IXGSCommonLib lies beside this file in an installed extension, in ../IXGSCommon in the source tree.
_COMMON = os.path.join(os.path.dirname(MODULE_FOLDER), "IXGSCommon")
if os.path.isdir(_COMMON) and _COMMON not in sys.path:
    sys.path.insert(0, _COMMON)

from IXGSCommonLib import dependencies  # noqa: E402

ENGINE_PARENT = dependencies.make_engine_importable(MODULE_FOLDER)

from IXGSCommonLib import engine_process, mrml_bridge  # noqa: E402
from IXGSCommonLib.scripted_module import EngineModuleLogic, EngineModuleWidget, is_set, self_tests  # noqa: E402

RAW_NODE_NAME = "IXGS raw X-ray"
STANDARDIZED_NODE_NAME = "IXGS standardized X-ray"


class IXGSStandardize(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("IXGS Standardize")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Reconstruction")]
        self.parent.dependencies = ["IXGSReconstruction"]
        self.parent.contributors = ["IXGS contributors"]
        self.parent.helpText = _(
            "Radiographic standardization (Pix2Pix): maps raw, processed X-rays to the look of bone-enhanced DRRs so "
            "that views taken with different exposure and processing reconstruct consistently. Preview a model, "
            "apply it to a scan, or train one from a pairs folder."
        )
        self.parent.acknowledgementText = _("Follows the IXGS paper (arXiv 2504.14699) and pix2pix (Isola et al.).")


@parameterNodeWrapper
class IXGSStandardizeParameterNode:
    modelFile: pathlib.Path
    scanFolder: pathlib.Path
    previewView: Annotated[int, WithinRange(0, 999)] = 0
    outputScanFolder: pathlib.Path
    pairsFolder: pathlib.Path
    trainConfig: Annotated[str, Choice(["light", "paper"])] = "light"
    trainSteps: Annotated[int, WithinRange(0, 1000000)] = 0
    trainModelFile: pathlib.Path
    resume: bool = False


class IXGSStandardizeWidget(EngineModuleWidget):
    """The module's panel; ``logic`` (an ``IXGSStandardizeLogic`` or any object with its job
    methods) may be given, Slicer gives none."""

    def setup(self) -> None:
        EngineModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IXGSStandardize.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        if self.logic is None:
            self.logic = IXGSStandardizeLogic()
        self.ui.previewButton.connect("clicked(bool)", self.onPreview)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.observeScene()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self.logic.isJobRunning()
        hasModel = is_set(p.modelFile) and pathlib.Path(p.modelFile).is_file()
        hasScan = is_set(p.scanFolder) and (pathlib.Path(p.scanFolder) / "scan.json").is_file()
        self.ui.previewButton.enabled = hasModel and hasScan
        self.ui.applyButton.enabled = hasModel and hasScan and not running
        self.ui.trainButton.enabled = is_set(p.pairsFolder) and is_set(p.trainModelFile) and not running
        self.ui.cancelButton.enabled = running

    def onPreview(self) -> None:
        self.startJob(self.logic.preview)

    def statusLabel(self):
        return self.ui.statusLabel

    def progressDetails(self, values: dict) -> list:
        return [
            f"{key} {value:.4g}"
            for key, value in values.items()
            if key in ("loss", "l1", "psnr", "val_l1", "val_psnr") and isinstance(value, float)
        ]

    def onApply(self) -> None:
        self.startJob(self.logic.applyModel)

    def onTrain(self) -> None:
        self.startJob(self.logic.trainModel)


class IXGSStandardizeLogic(EngineModuleLogic):
    """Everything the widget does, callable without it (the Python console, the tests)."""

    def __init__(self, runner=None) -> None:
        EngineModuleLogic.__init__(self, runner, ENGINE_PARENT)

    def getParameterNode(self):
        return IXGSStandardizeParameterNode(super().getParameterNode())

    def preview(self, onProgress=None, onLog=None, onFinished=None):
        """Standardize the parameter node's preview view in an engine process; when done, the raw
        X-ray and its standardized version are shown side by side."""
        from ixgs_engine.io.scan import read_scan

        p = self.getParameterNode()
        scan = read_scan(p.scanFolder, require_poses=False)
        if not 0 <= p.previewView < len(scan.views):
            raise ValueError(_("The scan has X-rays 0 to {last}.").format(last=len(scan.views) - 1))
        output = self.workFolder("preview") / f"view{p.previewView}.tif"
        arguments = engine_process.standardize_preview_arguments(p.modelFile, p.scanFolder, p.previewView, output)

        def show() -> None:
            from ixgs_engine.io.xray_images import read_xray_image

            entry = scan.views[p.previewView]
            raw = read_xray_image(scan.folder / entry.image, frame=entry.frame).pixels
            self.showSideBySide(raw, read_xray_image(output).pixels)

        return self.startJob(arguments, show, onProgress, onLog, onFinished)

    def applyModel(self, onProgress=None, onLog=None, onFinished=None):
        """Standardize the whole scan into a new scan folder, which becomes IXGS Reconstruction's input."""
        p = self.getParameterNode()
        if not is_set(p.outputScanFolder):
            p.outputScanFolder = self.workFolder(time.strftime("standardized-%Y%m%d-%H%M%S"))
        output = pathlib.Path(p.outputScanFolder)
        arguments = engine_process.standardize_apply_arguments(p.modelFile, p.scanFolder, output)
        return self.startJob(arguments, lambda: self.useForReconstruction(output), onProgress, onLog, onFinished)

    def trainModel(self, onProgress=None, onLog=None, onFinished=None):
        """Train a model from the pairs folder (``resume``: continue its checkpoint); it becomes
        the model to apply when done."""
        p = self.getParameterNode()
        model = pathlib.Path(p.trainModelFile)
        arguments = engine_process.standardize_train_arguments(
            p.pairsFolder, model, p.trainConfig, p.trainSteps, p.resume
        )

        def useModel() -> None:
            p.modelFile = model

        return self.startJob(arguments, useModel, onProgress, onLog, onFinished)

    @staticmethod
    def showSideBySide(raw, standardized):
        """Raw X-ray in the red view, standardized in the yellow view, side by side."""
        nodes = []
        for name, pixels in ((RAW_NODE_NAME, raw), (STANDARDIZED_NODE_NAME, standardized)):
            old = slicer.mrmlScene.GetFirstNodeByName(name)
            if old is not None:
                slicer.mrmlScene.RemoveNode(old)
            nodes.append(mrml_bridge.add_xray_node(slicer.mrmlScene, pixels, name))
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return nodes
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        for viewName, node in zip(("Red", "Yellow"), nodes, strict=True):
            sliceWidget = layoutManager.sliceWidget(viewName)
            sliceWidget.mrmlSliceNode().SetOrientationToAxial()
            sliceWidget.mrmlSliceCompositeNode().SetBackgroundVolumeID(node.GetID())
            sliceWidget.sliceLogic().FitSliceToAll()
        return nodes

    @staticmethod
    def useForReconstruction(scanFolder) -> None:
        """Make a standardized scan the input of IXGS Reconstruction (through Slicer's module
        registry: this module does not import the other)."""
        slicer.util.getModuleLogic("IXGSReconstruction").getParameterNode().scanFolder = pathlib.Path(scanFolder)


IXGSStandardizeTest = self_tests(MODULE_FOLDER, "IXGSStandardizeTest")
