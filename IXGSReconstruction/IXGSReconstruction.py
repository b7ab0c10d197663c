"""IXGS Reconstruction: 3-D volumes from a few X-rays at arbitrary C-arm poses, in 3D Slicer.

Load X-rays (scan folder, image files or Slicer's DICOM database) and their poses (projection
matrices, or estimated from a calibration phantom's beads with points the user can correct),
choose the box, preset and device, reconstruct in a separate process with live progress and
Cancel, then review the volume thresholded in the slice views and rendered in 3-D, realigned to
the anatomical axes. The work is done by the ``ixgs_engine`` package; this file holds only the
Slicer glue (see IXGSReconstructionLib for the parts that work without the GUI).
"""

import json
import logging
import os
import pathlib
import tempfile
import time
from typing import Annotated

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLinearTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

from IXGSReconstructionLib import dependencies

MODULE_FOLDER = os.path.dirname(os.path.abspath(__file__))
ENGINE_PARENT = dependencies.make_engine_importable(MODULE_FOLDER)

# Only modules that need nothing beyond Slicer's own packages (numpy, VTK) load with the module, so it
# loads in a fresh Slicer before the engine's dependencies are installed; scan_files is imported on use.
from IXGSReconstructionLib import engine_process, mrml_bridge, points_file  # noqa: E402
from IXGSReconstructionLib.scripted_module import EngineModuleLogic, EngineModuleWidget, is_set  # noqa: E402

VIEW_ATTRIBUTE = "IXGS.View"
SCAN_ATTRIBUTE = "IXGS.Scan"
POINTS_ATTRIBUTE = "IXGS.PointsForView"
DICOM_XRAY_MODALITIES = ("XA", "RF", "DX", "CR")


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


@parameterNodeWrapper
class IXGSReconstructionParameterNode:
    """What the user chose: inputs, run settings and the nodes of the result."""

    scanFolder: pathlib.Path
    imageKind: Annotated[str, Choice(["radiograph", "line_integral", "intensity"])] = "radiograph"
    currentView: Annotated[int, WithinRange(0, 999)] = 0
    phantomFile: pathlib.Path
    roi: vtkMRMLMarkupsROINode
    preset: Annotated[str, Choice(["auto", "cpu", "fast", "default", "quality"])] = "auto"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    iterations: Annotated[int, WithinRange(0, 100000)] = 0
    outputFolder: pathlib.Path
    resume: bool = False
    volume: vtkMRMLScalarVolumeNode
    threshold: Annotated[float, WithinRange(0.0, 0.2)] = 0.03
    spineLandmarks: vtkMRMLMarkupsFiducialNode
    lateralLandmarks: vtkMRMLMarkupsFiducialNode
    realignment: vtkMRMLLinearTransformNode


class IXGSReconstructionWidget(EngineModuleWidget):
    def setup(self) -> None:
        EngineModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IXGSReconstruction.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = IXGSReconstructionLogic()
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
        self.startJob(self.logic.reconstruct)

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


class IXGSReconstructionLogic(EngineModuleLogic):
    """Everything the widget does, callable without the widget (self-tests, Python console).
    ``runner`` makes the engine jobs (default: a QProcess; ``engine_jobs.SubprocessJob`` in a
    script or a test)."""

    def __init__(self, runner=None) -> None:
        EngineModuleLogic.__init__(self, runner, ENGINE_PARENT)
        self.detectionsFile = None  # detections.json of `ixgs poses detect`, shown as markups
        self._detected = {}  # view -> detected (u, v), to tell the user's changes from them

    def getParameterNode(self):
        return IXGSReconstructionParameterNode(super().getParameterNode())

    # --- engine jobs (the buttons, the Python console and the tests start them here) ---

    def detectPoses(self, onProgress=None, onLog=None, onFinished=None):
        """Detect the phantom's beads in the scan's X-rays; their points are loaded when done."""
        p = self.getParameterNode()
        output = self.workFolder("detections")
        arguments = engine_process.poses_detect_arguments(p.scanFolder, p.phantomFile, output)
        return self.startJob(
            arguments, lambda: self.loadDetections(p.scanFolder, output), onProgress, onLog, onFinished
        )

    def estimatePoses(self, onProgress=None, onLog=None, onFinished=None):
        """Estimate the poses from the detections and the placed points; the calibrated scan
        becomes the scan (loaded) when done."""
        p = self.getParameterNode()
        points = self.exportPoints(self.workFolder("points") / "points.json")
        output = self.workFolder("calibrated")
        arguments = engine_process.poses_estimate_arguments(
            p.scanFolder, p.phantomFile, output, points, self.detectionsFile
        )

        def loadCalibrated() -> None:
            p.scanFolder = output
            self.loadScan(output)

        return self.startJob(arguments, loadCalibrated, onProgress, onLog, onFinished)

    def reconstruct(self, onProgress=None, onLog=None, onFinished=None, extraArguments=()):
        """Reconstruct the scan with the parameter node's box, preset, device and iterations
        (``resume``: continue the output folder's run); the volume is loaded, thresholded and
        rendered when done. ``extraArguments`` go to ``ixgs reconstruct`` as they are."""
        p = self.getParameterNode()
        self.checkDevice(p.device)
        if not is_set(p.outputFolder):
            p.outputFolder = self.workFolder(time.strftime("reconstruction-%Y%m%d-%H%M%S"))
        arguments = self.reconstructionArguments(
            p.scanFolder, p.roi, p.outputFolder, p.preset, p.device, p.iterations, p.resume
        )
        output = pathlib.Path(p.outputFolder)

        def loadResult() -> None:
            p.volume = self.loadVolume(output / "volume.nrrd", p.threshold)

        return self.startJob([*arguments, *extraArguments], loadResult, onProgress, onLog, onFinished)

    # --- dependencies and device ---

    def setupDependencies(self) -> str:
        """Install what the engine misses (never Slicer's own packages); return the device sentence."""
        try:
            import PyTorchUtils

            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        except ImportError:
            torchLogic = None
        requirements = dependencies.engine_requirements(
            ENGINE_PARENT or dependencies.engine_parent_folder(MODULE_FOLDER)
        )
        conflicts = dependencies.slicer_conflicts(requirements)
        if conflicts:
            raise RuntimeError("; ".join(conflicts))
        if not dependencies.install_torch(
            slicer.util.pip_install, torchLogic, dependencies.torch_requirement(requirements)
        ):
            raise RuntimeError(_("PyTorch is needed to reconstruct; install it (PyTorch extension) and try again."))
        installed = dependencies.install_missing(
            slicer.util.pip_install, dependencies.missing_requirements(requirements)
        )
        if installed:
            logging.info("IXGS installed: %s", ", ".join(installed))
        return self.deviceSummary()

    @staticmethod
    def deviceSummary() -> str:
        import torch

        available = torch.cuda.is_available()
        return dependencies.device_summary(available, torch.cuda.get_device_name(0) if available else None)[1]

    def checkDevice(self, device: str) -> None:
        """Refuse 'cuda' without a GPU with a clear message (auto falls back to the CPU)."""
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(dependencies.device_summary(False)[1] + " Choose device 'auto' or 'cpu'.")

    # --- X-rays ---

    def importXrays(self, imageFiles, matrixFiles, imageKind: str) -> pathlib.Path:
        """A scan folder (in the work folder) from X-ray files and optional P-matrix files."""
        from IXGSReconstructionLib import scan_files

        folder = self.workFolder(time.strftime("scan-%H%M%S"))
        scan_files.build_scan(folder, [str(f) for f in imageFiles], matrixFiles, imageKind)
        return folder

    @staticmethod
    def dicomXraySeries():
        """[(label, files)] of the X-ray series (XA, RF, DX, CR) in Slicer's DICOM database: unique
        labels, files in Instance Number order."""
        from IXGSReconstructionLib import scan_files

        database = slicer.dicomDatabase
        found = []
        for patient in database.patients():
            for study in database.studiesForPatient(patient):
                for series in database.seriesForStudy(study):
                    files = database.filesForSeries(series)
                    if not files or database.fileValue(files[0], "0008,0060") not in DICOM_XRAY_MODALITIES:
                        continue
                    name = database.fileValue(files[0], "0010,0010")
                    description = database.fileValue(files[0], "0008,103E") or series
                    found.append((f"{name}: {description} ({len(files)} images)", list(files)))
        return scan_files.dicom_series_choices(found, lambda path: database.fileValue(path, "0020,0013"))

    def loadScan(self, scanFolder):
        """Show a scan's X-rays (one volume node per view) and its box; returns the X-ray nodes."""
        from ixgs_engine.io.scan import read_scan
        from ixgs_engine.io.xray_images import read_xray_image

        scan = read_scan(scanFolder, require_poses=False)
        for node in self.xrayNodes() + self.allPointsNodes():  # an earlier scan's views and points
            slicer.mrmlScene.RemoveNode(node)
        nodes = []
        for index, view in enumerate(scan.views):
            image = read_xray_image(scan.folder / view.image, frame=view.frame)
            spacing = view.pixel_spacing or image.pixel_spacing or (1.0, 1.0)
            node = mrml_bridge.add_xray_node(slicer.mrmlScene, image.pixels, f"IXGS X-ray {index}", spacing)
            node.SetAttribute(VIEW_ATTRIBUTE, str(index))
            node.SetAttribute(SCAN_ATTRIBUTE, str(scan.folder))
            nodes.append(node)
        parameters = self.getParameterNode()
        if scan.has_poses:
            parameters.roi = self.roiNodeFromScan(scan.folder, parameters.roi)
        return nodes

    @staticmethod
    def xrayNodes():
        nodes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        return sorted(
            (n for n in nodes if n.GetAttribute(VIEW_ATTRIBUTE) is not None),
            key=lambda n: int(n.GetAttribute(VIEW_ATTRIBUTE)),
        )

    def xrayNode(self, view: int):
        return next((n for n in self.xrayNodes() if int(n.GetAttribute(VIEW_ATTRIBUTE)) == view), None)

    @staticmethod
    def allPointsNodes():
        """The markups nodes holding the bead points of the loaded scan's X-rays."""
        nodes = slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode")
        return [n for n in nodes if n.GetAttribute(POINTS_ATTRIBUTE) is not None]

    def pointsNode(self, view: int):
        """The markups node holding the 2-D bead points of one X-ray (created when missing)."""
        for node in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode"):
            if node.GetAttribute(POINTS_ATTRIBUTE) == str(view):
                return node
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"IXGS points X-ray {view}")
        node.SetAttribute(POINTS_ATTRIBUTE, str(view))
        node.CreateDefaultDisplayNodes()
        return node

    def showPointsOfView(self, view: int) -> None:
        """Show the points of the X-ray shown and hide the others (they share the image plane)."""
        for node in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode"):
            attribute = node.GetAttribute(POINTS_ATTRIBUTE)
            if attribute is not None and node.GetDisplayNode() is not None:
                node.GetDisplayNode().SetVisibility(attribute == str(view))

    def pointsByView(self):
        points = {}
        for xray in self.xrayNodes():
            view = int(xray.GetAttribute(VIEW_ATTRIBUTE))
            points[view] = mrml_bridge.pixel_points(self.pointsNode(view), xray)
        return points

    def exportPoints(self, path):
        """Write the user's points of every view as POINTS_JSON (after detection: only those added,
        moved or labelled); None when there are none."""
        points = {
            view: points_file.manual_points(found, self._detected.get(view, []))
            for view, found in self.pointsByView().items()
        }
        points = {view: found for view, found in points.items() if found}
        return points_file.write_points_json(path, points) if points else None

    def loadPoints(self, path) -> None:
        """Show the points of a POINTS_JSON (or detections) file as markups, one node per X-ray."""
        for view, points in points_file.read_points_json(path).items():
            xray = self.xrayNode(view)
            if xray is not None:
                mrml_bridge.set_pixel_points(self.pointsNode(view), xray, points)

    def loadDetections(self, scanFolder, folder) -> None:
        """Show the beads ``ixgs poses detect`` found as markups, for the user to review: points
        they add, move or label with a bead index go to pose estimation as manual points."""
        from ixgs_engine.io.scan import read_scan
        from ixgs_engine.poses.pipeline import read_detections

        path = pathlib.Path(folder) / "detections.json"
        self._detected = {}
        for found in read_detections(path, read_scan(scanFolder, require_poses=False)):
            xray = self.xrayNode(found.view)
            if xray is not None:
                points = [{"u": d.u, "v": d.v, "bead": d.bead} for d in found.detections]
                mrml_bridge.set_pixel_points(self.pointsNode(found.view), xray, points)
                self._detected[found.view] = [(d.u, d.v) for d in found.detections]
        self.detectionsFile = path

    # --- reconstruction ---

    def roiNodeFromScan(self, scanFolder, roiNode=None):
        """The scan's box (its ROI, else the largest box every view sees) in a markups ROI node."""
        from ixgs_engine.geometry.roi import default_roi
        from ixgs_engine.io.scan import read_scan
        from ixgs_engine.io.xray_images import read_xray_image

        scan = read_scan(scanFolder)
        roi = scan.roi
        if roi is None:
            shape = read_xray_image(scan.image_path(0), frame=scan.views[0].frame).pixels.shape
            roi = default_roi(list(scan.matrices), shape)
        if roiNode is None:
            roiNode = mrml_bridge.add_roi_node(slicer.mrmlScene, roi, "IXGS box")
        else:
            mrml_bridge.update_roi_node(roiNode, roi)
        return roiNode

    def reconstructionArguments(self, scanFolder, roiNode, outputFolder, preset, device, iterations=0, resume=False):
        """``ixgs reconstruct`` arguments; a box edited in Slicer goes into a copy of scan.json."""
        from IXGSReconstructionLib import scan_files

        scan = pathlib.Path(scanFolder)
        if roiNode is not None:
            scan = scan_files.scan_with_roi(
                scan, mrml_bridge.roi_from_node(roiNode), pathlib.Path(outputFolder) / "input-scan"
            )
        return engine_process.reconstruct_arguments(
            scan, outputFolder, preset, device, iterations or None, resume=resume
        )

    def loadVolume(self, path, threshold: float):
        """Load a reconstruction (LPS file geometry -> RAS node) and show it."""
        from ixgs_engine.io.volumes import read_volume

        node = mrml_bridge.add_volume_node(slicer.mrmlScene, read_volume(path), "IXGS reconstruction")
        self.showVolume(node, threshold)
        slicer.util.setSliceViewerLayers(background=node, fit=True)
        layoutManager = slicer.app.layoutManager() if hasattr(slicer.app, "layoutManager") else None
        if layoutManager is not None and layoutManager.threeDViewCount > 0:  # centre the 3-D view on it
            threeDView = layoutManager.threeDWidget(0).threeDView()
            threeDView.resetFocalPoint()
            threeDView.resetCamera()
        return node

    @staticmethod
    def showVolume(volumeNode, threshold: float) -> None:
        mrml_bridge.show_thresholded(volumeNode, threshold)
        mrml_bridge.show_volume_rendering(slicer.modules.volumerendering.logic(), volumeNode, threshold)

    # --- realignment ---

    def _realignmentNode(self, matrix, volumeNode):
        parameters = self.getParameterNode()
        if parameters.realignment is not None:
            slicer.mrmlScene.RemoveNode(parameters.realignment)
        transform = mrml_bridge.add_realignment_node(slicer.mrmlScene, matrix, "IXGS realignment")
        mrml_bridge.apply_transform(volumeNode, transform)
        parameters.realignment = transform
        return transform

    def realignFromLandmarks(self, volumeNode, spineNode, lateralNode):
        """Transform node turning the volume so the spine points run superior and the right ->
        left pair along x; returns it (the volume is put under it, not hardened)."""
        from ixgs_engine.geometry.anatomical import realignment_from_landmarks

        lateral = mrml_bridge.landmark_points_lps(lateralNode)
        if len(lateral) != 2:
            raise ValueError(_("Place exactly two right/left landmarks: the patient's right first, then left."))
        matrix = realignment_from_landmarks(mrml_bridge.landmark_points_lps(spineNode), lateral[0], lateral[1])
        return self._realignmentNode(matrix, volumeNode)

    def realignFromPrincipalAxes(self, volumeNode, threshold: float):
        """Transform node turning the thresholded bone's principal axes onto the nearest world axes."""
        from ixgs_engine.geometry.anatomical import realignment_from_principal_axes

        matrix = realignment_from_principal_axes(mrml_bridge.volume_from_node(volumeNode), threshold)
        return self._realignmentNode(matrix, volumeNode)


class IXGSReconstructionTest(ScriptedLoadableModuleTest):
    """Self-tests. ``test_commands`` needs nothing beyond Slicer and always runs; where the
    engine's dependencies are installed, a tiny simulated scan's points round trip and its
    reconstruction through the Logic's default runner (the QProcess of the Reconstruct button),
    checking the loaded volume's geometry, realignment and hardening."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_commands()
        if dependencies.missing_requirements(dependencies.engine_requirements(ENGINE_PARENT)) or not (
            dependencies.is_importable("torch")
        ):
            self.delayDisplay("The engine's dependencies are not installed: the engine tests are skipped")
            return
        self.setUp()
        self.test_points_round_trip()
        self.setUp()
        self.test_reconstruct_tiny_scan()

    def test_commands(self):
        """The Logic's command lines are the engine's, with the run's cancel file (no engine
        process, nothing beyond Slicer's own packages)."""
        arguments = engine_process.reconstruct_arguments("scan", "run", "fast", "cpu", 10, resume=True)
        self.assertEqual(arguments[:2], ["reconstruct", "scan"])
        self.assertIn("--resume", arguments)
        self.assertEqual(
            engine_process.cancel_file_in(arguments), pathlib.Path("run") / engine_process.CANCEL_FILE_NAME
        )
        self.assertEqual(IXGSReconstructionLogic().getParameterNode().preset, "auto")

    def simulateScan(self, folder):
        from ixgs_engine.simulate import simulate_phantom_scan

        return simulate_phantom_scan(folder, "spine", 24, 8.0, 6, 40, 8.0)

    def test_points_round_trip(self):
        self.delayDisplay("Points placed on an X-ray become POINTS_JSON pixels")
        logic = IXGSReconstructionLogic()
        folder = pathlib.Path(tempfile.mkdtemp(prefix="ixgs-points-"))
        self.simulateScan(folder / "scan")
        nodes = logic.loadScan(folder / "scan")
        self.assertEqual(len(nodes), 6)
        points = {2: [{"u": 10.5, "v": 20.25, "bead": 3}], 4: [{"u": 1.0, "v": 2.0, "bead": None}]}
        (folder / "in.json").write_text(json.dumps({"views": {str(k): v for k, v in points.items()}}))
        logic.loadPoints(folder / "in.json")
        path = logic.exportPoints(folder / "out.json")
        written = json.loads(pathlib.Path(path).read_text())["views"]
        self.assertEqual(sorted(written), ["2", "4"])
        self.assertAlmostEqual(written["2"][0]["u"], 10.5, places=6)
        self.assertAlmostEqual(written["2"][0]["v"], 20.25, places=6)
        self.assertEqual(written["2"][0]["bead"], 3)
        self.assertNotIn("bead", written["4"][0])

    def test_reconstruct_tiny_scan(self):
        import numpy as np

        from ixgs_engine.io.volumes import read_volume

        self.delayDisplay("Reconstructing a simulated 6-view scan for a few iterations")
        logic = IXGSReconstructionLogic()
        folder = pathlib.Path(tempfile.mkdtemp(prefix="ixgs-selftest-"))
        truth = self.simulateScan(folder / "scan")
        logic.loadScan(folder / "scan")
        roiNode = logic.getParameterNode().roi
        self.assertIsNotNone(roiNode)
        parameters = logic.getParameterNode()
        parameters.outputFolder, parameters.preset, parameters.device, parameters.iterations = (
            folder / "run",
            "fast",
            "cpu",
            10,
        )
        outcome = {}
        job = logic.reconstruct(
            onLog=logging.info,
            onFinished=lambda ok, message: outcome.update(ok=ok, message=message),
            extraArguments=["--gaussians", "400", "--voxel-size", "8"],
        )
        deadline = time.time() + 600
        while "ok" not in outcome and time.time() < deadline:
            slicer.app.processEvents()
            qt.QThread.msleep(50)
        self.assertTrue(outcome.get("ok"), outcome.get("message"))
        self.assertIsNotNone(job.reader.last_progress)
        self.assertEqual(job.reader.last_progress.done, job.reader.last_progress.total)
        self.assertIsNotNone(parameters.volume)

        node = logic.loadVolume(folder / "run" / "volume.nrrd", 0.02)
        written = read_volume(folder / "run" / "volume.nrrd")
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ written.index_to_world_matrix()
        np.testing.assert_allclose(mrml_bridge.numpy_matrix(matrix), expected, atol=1e-6)
        # The reconstruction box covers the phantom's centre.
        center = mrml_bridge.roi_from_node(roiNode).center
        self.assertLess(float(np.linalg.norm(center - truth.center())), 30.0)
        self.assertTrue(node.GetDisplayNode().GetApplyThreshold())

        transform = logic.realignFromPrincipalAxes(node, float(np.percentile(written.array, 90)))
        self.assertEqual(node.GetTransformNodeID(), transform.GetID())
        mrml_bridge.harden_transform(node)
        self.assertIsNone(node.GetTransformNodeID())
        self.delayDisplay("Test passed")
