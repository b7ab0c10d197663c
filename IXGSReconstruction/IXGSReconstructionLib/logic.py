"""IXGS Reconstruction's Logic: everything the module does, callable without its widget (the
buttons, the Python console and the tests take the same path). It owns the engine jobs (pose
detection and estimation, reconstruction) behind an injectable runner, and the scene's side:
X-ray and points nodes, the box, the volume and its realignment.

Module-level imports need only what Slicer bundles (numpy, VTK, MRML): the engine's readers and
``scan_files`` are imported on use, so the module loads before the engine's dependencies are
installed."""

import json
import logging
import os
import pathlib
import time

import slicer
from slicer.i18n import tr as _

from IXGSCommonLib import dependencies, engine_process, mrml_bridge
from IXGSCommonLib.scripted_module import EngineModuleLogic, is_set
from IXGSReconstructionLib import points_file
from IXGSReconstructionLib.parameters import IXGSReconstructionParameterNode

# The folder that holds IXGSReconstruction.py (this file is in its IXGSReconstructionLib/).
MODULE_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE_PARENT = dependencies.make_engine_importable(MODULE_FOLDER)
VIEW_ATTRIBUTE = "IXGS.View"
SCAN_ATTRIBUTE = "IXGS.Scan"
POINTS_ATTRIBUTE = "IXGS.PointsForView"
PREVIEW_ATTRIBUTE = "IXGS.PreviewOfRun"
DICOM_XRAY_MODALITIES = ("XA", "RF", "DX", "CR")
POSES_TABLE_NAME = "IXGS refined poses"
VOLUME_NAME = "IXGS reconstruction"
PREVIEW_NAME = "IXGS reconstruction (preview)"
PREVIEW_CLOCK_SLACK_S = 2.0  # file times may be this coarse
POSES_TABLE_COLUMNS = (
    ("view", "View"),
    ("rotation_deg", "Rotation (deg)"),
    ("translation_mm", "Translation (mm)"),
    ("reprojection_px", "Reprojection change (px)"),
)


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
        (``resume``: continue the output folder's run). The run's preview (its classical start) is
        shown as soon as the engine writes it, and the volume replaces it in the same node,
        thresholded and rendered, when done. ``extraArguments`` go to ``ixgs reconstruct`` as they are."""
        p = self.getParameterNode()
        self.checkDevice(p.device)
        if not is_set(p.outputFolder):
            p.outputFolder = self.workFolder(time.strftime("reconstruction-%Y%m%d-%H%M%S"))
        arguments = self.reconstructionArguments(
            p.scanFolder, p.roi, p.outputFolder, p.preset, p.device, p.iterations, p.resume, p.refinePoses
        )
        output = pathlib.Path(p.outputFolder)
        since = time.time()

        def progress(event) -> None:
            if self.previewNode(output) is None:
                shown = self.loadPreview(output, since, p.threshold)
                p.volume = shown if shown is not None else p.volume
            if onProgress is not None:
                onProgress(event)

        def loadResult() -> None:
            p.volume = self.loadVolume(output / "volume.nrrd", p.threshold, self.previewNode(output))
            self.posesTable(output)

        return self.startJob([*arguments, *extraArguments], loadResult, progress, onLog, onFinished)

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

    def reconstructionArguments(
        self, scanFolder, roiNode, outputFolder, preset, device, iterations=0, resume=False, refinePoses=None
    ):
        """``ixgs reconstruct`` arguments; a box edited in Slicer goes into a copy of scan.json."""
        from IXGSReconstructionLib import scan_files

        scan = pathlib.Path(scanFolder)
        if roiNode is not None:
            scan = scan_files.scan_with_roi(
                scan, mrml_bridge.roi_from_node(roiNode), pathlib.Path(outputFolder) / "input-scan"
            )
        return engine_process.reconstruct_arguments(
            scan, outputFolder, preset, device, iterations or None, resume=resume, refine_poses=refinePoses
        )

    # --- refined poses ---

    def posesTable(self, outputFolder):
        """The run's pose corrections (``summary.json``: one row per view, degrees, mm at the box
        centre, reprojection change in pixels) as a table node, or None when the run did not refine
        its poses. The node is reused when the table was shown before."""
        from ixgs_engine.reconstruct.run_files import SUMMARY_FILE

        summary = json.loads((pathlib.Path(outputFolder) / SUMMARY_FILE).read_text(encoding="utf-8"))
        poses = summary.get("poses")
        if not poses:
            return None
        node = slicer.mrmlScene.GetFirstNodeByName(POSES_TABLE_NAME)
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", POSES_TABLE_NAME)
        mrml_bridge.fill_table(
            node, POSES_TABLE_COLUMNS, [[row[key] for key, _ in POSES_TABLE_COLUMNS] for row in poses["views"]]
        )
        node.SetAttribute("IXGS.PosesUsed", str(bool(poses["used"])))
        return node

    def loadRefinedScan(self, outputFolder):
        """Make the run's refined scan (``refined_scan/``: the refined poses, the same X-rays) the
        scan, and show it; returns its X-ray nodes."""
        folder = pathlib.Path(outputFolder) / engine_process.REFINED_SCAN_FOLDER
        if not (folder / "scan.json").is_file():
            raise RuntimeError(_("This run has no refined poses: run it with 'Refine poses' on or auto."))
        self.getParameterNode().scanFolder = folder
        return self.loadScan(folder)

    def loadPreview(self, outputFolder, since: float, threshold: float):
        """The run's preview (``preview.nrrd``, written by the engine once its classical start
        exists) as a volume node, shown; None while there is none written since ``since`` (a
        ``time.time()``: an earlier run's is not this one's)."""
        path = pathlib.Path(outputFolder) / engine_process.PREVIEW_FILE
        try:
            written = path.stat().st_mtime
        except OSError:
            return None
        if written < since - PREVIEW_CLOCK_SLACK_S:
            return None
        node = self.loadVolume(path, threshold)
        node.SetName(PREVIEW_NAME)
        node.SetAttribute(PREVIEW_ATTRIBUTE, str(pathlib.Path(outputFolder).resolve()))
        return node

    def previewNode(self, outputFolder):
        """The parameter node's volume when it is the preview of the run in ``outputFolder`` (the
        node its final volume goes into), else None."""
        node = self.getParameterNode().volume
        if node is None or node.GetAttribute(PREVIEW_ATTRIBUTE) != str(pathlib.Path(outputFolder).resolve()):
            return None
        return node

    def loadVolume(self, path, threshold: float, node=None):
        """Load a reconstruction (LPS file geometry -> RAS node) into ``node`` (replacing what it
        held, e.g. the preview) or a new node, and show it."""
        from ixgs_engine.io.volumes import read_volume

        volume = read_volume(path)
        if node is None:
            node = mrml_bridge.add_volume_node(slicer.mrmlScene, volume, VOLUME_NAME)
        else:
            mrml_bridge.update_volume_node(node, volume.array, volume.grid)
            node.SetName(VOLUME_NAME)
            node.RemoveAttribute(PREVIEW_ATTRIBUTE)
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
