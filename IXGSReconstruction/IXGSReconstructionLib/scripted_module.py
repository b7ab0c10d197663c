"""Slicer plumbing the IXGS scripted modules share: the template widget's parameter-node wiring,
one engine job at a time (progress bar, log, status line, Cancel) and the logic's work folder.

Each module keeps the template's classes (Module, ParameterNode, Widget, Logic, Test); its Widget
and Logic derive from the bases here and add only what is particular to the module.
"""

import pathlib
import time

import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from IXGSReconstructionLib import engine_process


def is_set(path) -> bool:
    """Whether a path parameter holds a path (an unset pathlib.Path reads as '.')."""
    return path is not None and str(path) not in ("", ".")


def engine_job(arguments, engineParent, onProgress, onLog, onFinished):
    """An EngineJob (QProcess) for ``ixgs <arguments>`` with the engine (``engineParent``, see
    ``dependencies.make_engine_importable``) on its PYTHONPATH."""
    from IXGSReconstructionLib.qt_process import EngineJob

    environment = engine_process.engine_environment(engine_parent=engineParent)
    return EngineJob(arguments, environment, onProgress, onLog, onFinished)


class EngineModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Template widget of a module that runs engine commands.

    A subclass's ``setup()`` loads its .ui (with ``logTextEdit``, ``progressBar`` and
    ``cancelButton``), sets ``self.logic`` and calls :meth:`observeScene`; it defines
    ``_updateButtons()``, :meth:`statusLabel` and :meth:`progressDetails`, and sets
    ``engineParent``.
    """

    engineParent = None  # the engine's folder for the engine processes' PYTHONPATH (None: pip installed)

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.job = None
        self._afterJob = None

    def observeScene(self) -> None:
        """Follow scene closing, connect Cancel and bind the parameter node (end of ``setup()``)."""
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.job is not None:
            self.job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def statusLabel(self):
        """The label showing the job's progress and its final message."""
        raise NotImplementedError

    def progressDetails(self, values: dict) -> list:
        """Texts of the live values (loss, ...) of a progress event worth showing."""
        raise NotImplementedError

    def runEngine(self, arguments, afterJob) -> None:
        """Start an engine command in a separate process; ``afterJob()`` runs when it succeeds."""
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        self.statusLabel().text = ""
        self._afterJob = afterJob
        self.job = engine_job(arguments, self.engineParent, self.onProgress, self.onLog, self.onFinished)
        self.job.start()
        self._updateButtons()

    def onProgress(self, event) -> None:
        self.ui.progressBar.value = int(round(100 * event.fraction))
        details = [f"{event.stage} {event.done}/{event.total}", *self.progressDetails(event.values)]
        self.statusLabel().text = ", ".join(details)

    def onLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onFinished(self, success: bool, message: str) -> None:
        self.statusLabel().text = message
        afterJob, self._afterJob = self._afterJob, None
        self._updateButtons()  # the finished job object stays until the next one: Qt is still inside its signal
        if success and afterJob is not None:
            with slicer.util.tryWithErrorDisplay(_("Using the engine's result failed."), waitCursor=True):
                afterJob()
        elif not success and message != "cancelled":
            slicer.util.errorDisplay(message)

    def onCancel(self) -> None:
        if self.job is not None:
            self.job.cancel()


class EngineModuleLogic(ScriptedLoadableModuleLogic):
    """Template logic with a per-session work folder for the files a module writes."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._workFolder = None

    def workFolder(self, name: str) -> pathlib.Path:
        """A folder for files the module writes (scans it assembles, points, detections, runs)."""
        if self._workFolder is None:
            self._workFolder = pathlib.Path(slicer.app.temporaryPath) / "IXGS" / time.strftime("%Y%m%d-%H%M%S")
        folder = self._workFolder / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
