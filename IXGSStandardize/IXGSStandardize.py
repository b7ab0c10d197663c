"""IXGS Standardize: make raw X-rays look like bone-enhanced DRRs before reconstruction.

Pick a trained model and preview a raw X-ray beside its standardized version; apply the model
to a whole scan (a new scan folder, ready for IXGS Reconstruction); or train a model from a
folder of raw/target pairs, with progress and Cancel. Training and applying run
``ixgs standardize train|apply`` in a separate process; the preview of one image runs here.
"""

import os
import pathlib
import sys
import tempfile
import time
from typing import Annotated

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

try:
    import IXGSReconstructionLib  # noqa: F401  (next to this module in an installed extension)
except ImportError:  # developer mode: the modules are sibling folders of the source checkout
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "IXGSReconstruction"))

from IXGSReconstructionLib import dependencies  # noqa: E402

ENGINE_PARENT = dependencies.make_engine_importable(os.path.dirname(os.path.abspath(__file__)))

from IXGSReconstructionLib import engine_process, mrml_bridge  # noqa: E402
from IXGSReconstructionLib.scripted_module import EngineModuleLogic, EngineModuleWidget, is_set  # noqa: E402

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
    engineParent = ENGINE_PARENT

    def setup(self) -> None:
        EngineModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IXGSStandardize.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = IXGSStandardizeLogic()
        self.ui.previewButton.connect("clicked(bool)", self.onPreview)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.observeScene()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self.job is not None and self.job.is_running()
        hasModel = is_set(p.modelFile) and pathlib.Path(p.modelFile).is_file()
        hasScan = is_set(p.scanFolder) and (pathlib.Path(p.scanFolder) / "scan.json").is_file()
        self.ui.previewButton.enabled = hasModel and hasScan
        self.ui.applyButton.enabled = hasModel and hasScan and not running
        self.ui.trainButton.enabled = is_set(p.pairsFolder) and is_set(p.trainModelFile) and not running
        self.ui.cancelButton.enabled = running

    def onPreview(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("The preview failed."), waitCursor=True):
            raw, standardized = self.logic.preview(p.modelFile, p.scanFolder, p.previewView)
            self.logic.showSideBySide(raw, standardized)

    def statusLabel(self):
        return self.ui.statusLabel

    def progressDetails(self, values: dict) -> list:
        return [
            f"{key} {value:.4g}"
            for key, value in values.items()
            if key in ("loss", "l1", "psnr", "val_l1", "val_psnr") and isinstance(value, float)
        ]

    def onApply(self) -> None:
        p = self._parameterNode
        if not is_set(p.outputScanFolder):
            p.outputScanFolder = self.logic.workFolder(time.strftime("standardized-%Y%m%d-%H%M%S"))
        output = pathlib.Path(p.outputScanFolder)
        self.runEngine(
            engine_process.standardize_apply_arguments(p.modelFile, p.scanFolder, output),
            lambda: self.logic.useForReconstruction(output),
        )

    def onTrain(self) -> None:
        p = self._parameterNode
        model = pathlib.Path(p.trainModelFile)
        arguments = engine_process.standardize_train_arguments(
            p.pairsFolder, model, p.trainConfig, p.trainSteps, p.resume
        )

        def useModel():
            p.modelFile = model

        self.runEngine(arguments, useModel)


class IXGSStandardizeLogic(EngineModuleLogic):
    def getParameterNode(self):
        return IXGSStandardizeParameterNode(super().getParameterNode())

    @staticmethod
    def preview(modelFile, scanFolder, view: int):
        """(raw, standardized) pixels of one X-ray of a scan, standardized in this process."""
        from ixgs_engine.io.scan import read_scan
        from ixgs_engine.io.xray_images import read_xray_image
        from ixgs_engine.standardize import apply_model

        scan = read_scan(scanFolder, require_poses=False)
        if not 0 <= view < len(scan.views):
            raise ValueError(_("The scan has X-rays 0 to {last}.").format(last=len(scan.views) - 1))
        entry = scan.views[view]
        raw = read_xray_image(scan.folder / entry.image, frame=entry.frame).pixels
        return raw, apply_model(modelFile, raw[None], "cpu")[0]

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
        """Make a standardized scan the input of IXGS Reconstruction."""
        from IXGSReconstruction import IXGSReconstructionLogic

        IXGSReconstructionLogic().getParameterNode().scanFolder = pathlib.Path(scanFolder)


class IXGSStandardizeTest(ScriptedLoadableModuleTest):
    """Self-test: make a few simulated pairs, train a tiny model for a few steps and apply it to a
    tiny simulated scan through the engine processes; the standardized scan keeps the geometry."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_train_and_apply()

    def runEngineAndWait(self, arguments):
        import subprocess

        completed = subprocess.run(
            engine_process.engine_command(arguments),
            capture_output=True,
            text=True,
            env=engine_process.engine_environment(engine_parent=ENGINE_PARENT),
        )
        self.assertEqual(completed.returncode, 0, completed.stderr[-2000:])
        return completed

    def test_train_and_apply(self):
        import numpy as np

        from ixgs_engine.io.scan import read_scan
        from ixgs_engine.simulate import simulate_phantom_scan

        self.delayDisplay("Training a tiny standardization model and applying it")
        folder = pathlib.Path(tempfile.mkdtemp(prefix="ixgs-standardize-"))
        logic = IXGSStandardizeLogic()
        self.runEngineAndWait(
            [
                "standardize",
                "make-pairs",
                "--phantom",
                "spine",
                "--phantom-size",
                "32",
                "--phantom-variants",
                "1",
                "--views",
                "4",
                "--detector-pixels",
                "32",
                "--pixel-size",
                "8",
                "-o",
                str(folder / "pairs"),
            ]
        )
        model = folder / "model.pt"
        self.runEngineAndWait(engine_process.standardize_train_arguments(folder / "pairs", model, "light", 2))
        simulate_phantom_scan(folder / "scan", "spine", 24, 8.0, 3, 32, 8.0)
        output = folder / "standardized"
        self.runEngineAndWait(engine_process.standardize_apply_arguments(model, folder / "scan", output))
        source, standardized = read_scan(folder / "scan"), read_scan(output)
        self.assertEqual(len(standardized.views), 3)
        np.testing.assert_allclose(standardized.matrices, source.matrices)

        raw, preview = logic.preview(model, folder / "scan", 1)
        self.assertEqual(raw.shape, preview.shape)
        nodes = logic.showSideBySide(raw, preview)
        self.assertEqual([n.GetName() for n in nodes], [RAW_NODE_NAME, STANDARDIZED_NODE_NAME])
        self.delayDisplay("Test passed")
