"""IXGS Reconstruction's widget: the .ui's buttons wired to a Logic given to it (any object with
the :class:`~IXGSReconstructionLib.logic_interface.ReconstructionLogic` interface), the job's
progress, log and Cancel (``EngineModuleWidget``), and dialogs for files and DICOM series."""

import pathlib

import qt
import slicer
from slicer.i18n import tr as _

from ixgs_engine.reconstruct.presets import PRESET_SUMMARIES
from IXGSCommonLib import engine_process, mrml_bridge
from IXGSCommonLib.scripted_module import EngineModuleWidget, is_set
from IXGSReconstructionLib.logic import IXGSReconstructionLogic
from IXGSReconstructionLib.logic_interface import ReconstructionLogic


class IXGSReconstructionWidget(EngineModuleWidget):
    """The module's panel. ``logic`` (a :class:`ReconstructionLogic`) does the work; Slicer
    passes none and the widget makes an ``IXGSReconstructionLogic``."""

    def __init__(self, parent=None, logic: ReconstructionLogic | None = None) -> None:
        EngineModuleWidget.__init__(self, parent, logic)

    def setup(self) -> None:
        EngineModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IXGSReconstruction.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        if self.logic is None:
            self.logic = IXGSReconstructionLogic()
        self.ui.presetComboBox.toolTip = "; ".join(f"{name}: {text}" for name, text in PRESET_SUMMARIES.items())
        self.ui.dependenciesButton.connect("clicked(bool)", self.onDependencies)
        self.ui.loadScanButton.connect("clicked(bool)", self.onLoadScan)
        self.ui.importFilesButton.connect("clicked(bool)", self.onImportFiles)
        self.ui.importDicomButton.connect("clicked(bool)", self.onImportDicom)
        self.ui.viewSpinBox.connect("valueChanged(int)", self.onViewChanged)
        self.ui.detectButton.connect("clicked(bool)", self.onDetect)
        self.ui.placePointsButton.connect("clicked(bool)", self.onPlacePoints)
        self.ui.estimateButton.connect("clicked(bool)", self.onEstimate)
        self.ui.resetRoiButton.connect("clicked(bool)", self.onResetRoi)
        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.onThresholdChanged)
        self.ui.realignLandmarksButton.connect("clicked(bool)", self.onRealignLandmarks)
        self.ui.realignAxesButton.connect("clicked(bool)", self.onRealignAxes)
        self.ui.hardenButton.connect("clicked(bool)", self.onHarden)
        self.ui.loadRefinedPosesButton.connect("clicked(bool)", self.onLoadRefinedPoses)
        self.observeScene()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self.logic.isJobRunning()
        hasScan = is_set(p.scanFolder) and (pathlib.Path(p.scanFolder) / "scan.json").is_file()
        self.ui.loadScanButton.enabled = hasScan and not running
        self.ui.runButton.enabled = hasScan and not running
        self.ui.cancelButton.enabled = running
        self.ui.detectButton.enabled = hasScan and is_set(p.phantomFile) and not running
        self.ui.estimateButton.enabled = hasScan and is_set(p.phantomFile) and not running
        self.ui.resetRoiButton.enabled = hasScan
        self.ui.realignLandmarksButton.enabled = bool(p.volume and p.spineLandmarks and p.lateralLandmarks)
        self.ui.realignAxesButton.enabled = p.volume is not None
        self.ui.hardenButton.enabled = bool(p.volume and p.volume.GetTransformNodeID())
        refined = (
            is_set(p.outputFolder)
            and (pathlib.Path(p.outputFolder) / engine_process.REFINED_SCAN_FOLDER / "scan.json").is_file()
        )
        self.ui.loadRefinedPosesButton.enabled = refined and not running

    # --- setup and inputs ---

    def onDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Installing the engine's dependencies failed."), waitCursor=True):
            self.ui.deviceLabel.text = self.logic.setupDependencies()

    def onLoadScan(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Loading the scan failed."), waitCursor=True):
            self.logic.loadScan(self._parameterNode.scanFolder)
            self.onViewChanged(self._parameterNode.currentView)

    def onImportFiles(self) -> None:
        from IXGSReconstructionLib import scan_files

        images = qt.QFileDialog.getOpenFileNames(
            None,
            _("X-ray files (one per view, in order)"),
            "",
            "X-rays (*.dcm *.tif *.tiff *.png *.npy *.mha *.nrrd *.nii *.nii.gz);;All files (*)",
        )
        if not images:
            return
        matrices = None
        if slicer.util.confirmYesNoDisplay(_("Do you have one projection-matrix (P-matrix) text file per X-ray?")):
            matrices = (
                qt.QFileDialog.getOpenFileNames(
                    None,
                    _("P-matrix files (same order as the X-rays)"),
                    "",
                    "Text (*.txt *.csv *.mat *.p);;All files (*)",
                )
                or None
            )
        with slicer.util.tryWithErrorDisplay(_("Importing the X-rays failed."), waitCursor=True):
            folder = self.logic.importXrays(
                scan_files.natural_order(images),
                scan_files.natural_order(matrices) if matrices else None,
                self._parameterNode.imageKind,
            )
            self._parameterNode.scanFolder = folder
            self.onLoadScan()

    def onImportDicom(self) -> None:
        series = self.logic.dicomXraySeries()
        if not series:
            slicer.util.infoDisplay(
                _("The DICOM database holds no X-ray series (XA, RF, DX, CR). Import them with the DICOM module first.")
            )
            return
        dialog = qt.QInputDialog(slicer.util.mainWindow())
        dialog.setWindowTitle(_("DICOM X-rays"))
        dialog.setLabelText(_("Series:"))
        dialog.setComboBoxItems([description for description, _files in series])
        dialog.setComboBoxEditable(False)
        if not dialog.exec_():
            return
        files = dict(series)[dialog.textValue()]
        with slicer.util.tryWithErrorDisplay(_("Importing the DICOM series failed."), waitCursor=True):
            self._parameterNode.scanFolder = self.logic.importXrays(files, None, self._parameterNode.imageKind)
            self.onLoadScan()

    def onViewChanged(self, view: int) -> None:
        node = self.logic.xrayNode(view)
        if node is not None:
            slicer.util.setSliceViewerLayers(background=node, foreground=None, fit=True)
            self.logic.showPointsOfView(view)

    def onPlacePoints(self) -> None:
        view = self._parameterNode.currentView
        if self.logic.xrayNode(view) is None:
            slicer.util.errorDisplay(_("Load a scan first: there is no X-ray {view}.").format(view=view))
            return
        self.onViewChanged(view)
        points = self.logic.pointsNode(view)
        markupsLogic = slicer.modules.markups.logic()
        markupsLogic.SetActiveList(points)
        markupsLogic.StartPlaceMode(True)

    # --- engine jobs ---

    def statusLabel(self):
        return self.ui.lossLabel

    def progressDetails(self, values: dict) -> list:
        details = []
        if "loss" in values:
            details.append(f"loss {values['loss']:.4g}")
        if "gaussians" in values:
            details.append(f"{values['gaussians']} Gaussians")
        return details

    def onDetect(self) -> None:
        self.startJob(self.logic.detectPoses)

    def onEstimate(self) -> None:
        def finished(success: bool, message: str) -> None:
            self.onFinished(success, message)
            if success:  # the calibrated scan is loaded: show its current view
                self.onViewChanged(self._parameterNode.currentView)

        self.startJob(lambda onProgress, onLog, _onFinished: self.logic.estimatePoses(onProgress, onLog, finished))

    def onResetRoi(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The scan has no usable box."), waitCursor=True):
            p = self._parameterNode
            p.roi = self.logic.roiNodeFromScan(p.scanFolder, p.roi)

    def onRun(self) -> None:
        def finished(success: bool, message: str) -> None:
            self.onFinished(success, message)
            table = self.logic.posesTable(self._parameterNode.outputFolder) if success else None
            if table is not None:  # the refined poses' table beside the views
                slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
                slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
                slicer.app.applicationLogic().PropagateTableSelection()

        self.startJob(lambda onProgress, onLog, _onFinished: self.logic.reconstruct(onProgress, onLog, finished))

    def onLoadRefinedPoses(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The refined poses could not be loaded."), waitCursor=True):
            self.logic.loadRefinedScan(self._parameterNode.outputFolder)
            self.onViewChanged(self._parameterNode.currentView)
        self._updateButtons()

    # --- result ---

    def onThresholdChanged(self, value: float) -> None:
        if self._parameterNode and self._parameterNode.volume:
            self.logic.showVolume(self._parameterNode.volume, value)

    def onRealignLandmarks(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Realignment from landmarks failed."), waitCursor=True):
            self.logic.realignFromLandmarks(p.volume, p.spineLandmarks, p.lateralLandmarks)

    def onRealignAxes(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Realignment from the bone's axes failed."), waitCursor=True):
            self.logic.realignFromPrincipalAxes(p.volume, p.threshold)

    def onHarden(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Hardening the realignment failed."), waitCursor=True):
            mrml_bridge.harden_transform(self._parameterNode.volume)
        self._updateButtons()
