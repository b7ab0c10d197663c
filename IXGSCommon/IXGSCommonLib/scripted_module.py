"""Slicer plumbing the IXGS scripted modules share: the template widget's parameter-node wiring,
one engine job at a time (progress bar, log, status line, Cancel) and the logic's work folder.

Each module keeps the template's classes (Module, ParameterNode, Widget, Logic, Test); its Widget
and Logic derive from the bases here and add only what is particular to the module.
"""

import importlib.util
import os
import pathlib
import time

import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from IXGSCommonLib import engine_process
from IXGSCommonLib.engine_jobs import CANCELLED


def is_set(path) -> bool:
    """Whether a path parameter holds a path (an unset pathlib.Path reads as '.')."""
    return path is not None and str(path) not in ("", ".")


def self_tests(module_folder: str, name: str) -> type:
    """The ``ScriptedLoadableModuleTest`` class ``name`` of a module's self-tests, from the file
    ``Testing/<name>.py`` beside the module (loaded by path: each module's Testing/ holds its own
    file, so no package of that name is shared between modules)."""
    path = os.path.join(module_folder, "Testing", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"the self-tests {path} cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def qt_runner(*args, **kwargs):
    """The GUI's job runner: a QProcess, so Slicer stays responsive (imported on use: Qt)."""
    from IXGSCommonLib.qt_process import EngineJob

    return EngineJob(*args, **kwargs)


class EngineModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Template widget of a module that runs engine commands.

    ``logic`` (an ``EngineModuleLogic``, which owns the jobs) may be given; a subclass's
    ``setup()`` loads its .ui (with ``logTextEdit``, ``progressBar`` and ``cancelButton``), makes
    the module's Logic when none was given and calls :meth:`observeScene`; it defines
    ``_updateButtons()``, :meth:`statusLabel` and :meth:`progressDetails`.
    """

    def __init__(self, parent=None, logic=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def observeScene(self) -> None:
        """Follow scene closing, connect Cancel and bind the parameter node (end of ``setup()``)."""
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None:
            self.logic.cancelJob()
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

    def startJob(self, start) -> None:
        """Clear the job display and call ``start(onProgress, onLog, onFinished)``, one of the
        Logic's job methods (the same path as the Python console and the tests)."""
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        self.statusLabel().text = ""
        with slicer.util.tryWithErrorDisplay(_("The engine could not start."), waitCursor=True):
            start(self.onProgress, self.onLog, self.onFinished)
        self._updateButtons()

    def onProgress(self, event) -> None:
        self.ui.progressBar.value = int(round(100 * event.fraction))
        details = [f"{event.stage} {event.done}/{event.total}", *self.progressDetails(event.values)]
        self.statusLabel().text = ", ".join(details)

    def onLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onFinished(self, success: bool, message: str) -> None:
        self.statusLabel().text = message
        self._updateButtons()  # the finished job object stays until the next one: Qt is still inside its signal
        if not success and message != CANCELLED:
            slicer.util.errorDisplay(message)

    def onCancel(self) -> None:
        self.logic.cancelJob()


def _ignore(*args) -> None:
    """A callback that does nothing (the console and tests may not want progress or log lines)."""


class EngineModuleLogic(ScriptedLoadableModuleLogic):
    """Template logic that owns the module's engine jobs and a per-session work folder.

    ``runner`` makes the jobs (``engine_jobs.JobRunner``): a QProcess in the GUI by default,
    ``engine_jobs.SubprocessJob`` in the console or the tests. ``engineParent`` is the folder
    that holds the engine when it is not pip installed (for the jobs' PYTHONPATH).
    """

    def __init__(self, runner=None, engineParent=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._workFolder = None
        self.runner = runner or qt_runner
        self.engineParent = engineParent
        self.job = None

    def startJob(self, arguments, afterSuccess=None, onProgress=None, onLog=None, onFinished=None):
        """Start ``ixgs <arguments>`` in a separate process and return the job. When it
        succeeds, ``afterSuccess()`` runs first (loading its result; an exception there turns
        the job into a failure with its message); then ``onFinished(success, message)``."""
        if self.isJobRunning():
            raise RuntimeError(_("An IXGS job is running; wait for it or cancel it first."))
        onFinished = onFinished or _ignore

        def finished(success: bool, message: str) -> None:
            if success and afterSuccess is not None:
                try:
                    afterSuccess()
                except Exception as error:  # the result could not be used: say so, as for a failed job
                    success, message = False, f"{message}; using the result failed: {error}"
            onFinished(success, message)

        environment = engine_process.engine_environment(engine_parent=self.engineParent)
        self.job = self.runner(arguments, environment, onProgress or _ignore, onLog or _ignore, finished)
        self.job.start()
        return self.job

    def isJobRunning(self) -> bool:
        return self.job is not None and self.job.is_running()

    def cancelJob(self) -> None:
        """Stop the running job at its next step (a reconstruction keeps its checkpoint)."""
        if self.job is not None:
            self.job.cancel()

    def workFolder(self, name: str) -> pathlib.Path:
        """A folder for files the module writes (scans it assembles, points, detections, runs)."""
        if self._workFolder is None:
            self._workFolder = pathlib.Path(slicer.app.temporaryPath) / "IXGS" / time.strftime("%Y%m%d-%H%M%S")
        folder = self._workFolder / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
