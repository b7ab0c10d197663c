"""An engine job in a ``qt.QProcess``: progress, live values and Cancel without blocking Slicer.

Only the Qt plumbing lives here; the command line, the parsing of the engine's output and the
cancel request are shared with the other runners in ``engine_jobs`` (tested without Qt).
"""

from __future__ import annotations

import qt

from IXGSCommonLib.engine_jobs import EngineJobBase

KILL_AFTER_MS = 60000
"""How long a cancelled engine has to finish its step and write its checkpoint before it is killed."""


class EngineJob(EngineJobBase):
    """Runs ``ixgs <arguments>`` in a QProcess; the callbacks run in Qt's event loop."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process = qt.QProcess()
        qt_environment = qt.QProcessEnvironment()
        for key, value in self.environment.items():
            qt_environment.insert(key, value)
        self.process.setProcessEnvironment(qt_environment)
        self.process.setProcessChannelMode(qt.QProcess.MergedChannels)
        self.process.connect("readyReadStandardOutput()", self._read)
        self.process.connect("finished(int,QProcess::ExitStatus)", self._finished)
        self.process.connect("errorOccurred(QProcess::ProcessError)", self._failed_to_start)
        self._kill_timer = qt.QTimer()
        self._kill_timer.setSingleShot(True)
        self._kill_timer.connect("timeout()", self.process.kill)

    def start(self) -> None:
        self._starting()
        self.process.start(self.command[0], self.command[1:])

    def is_running(self) -> bool:
        return self.process.state() != qt.QProcess.NotRunning

    def cancel(self) -> None:
        """Ask the engine to stop at its next step, where it writes a checkpoint (Resume
        continues): its cancel file (every platform) and SIGTERM (not on Windows, where
        terminate() does not reach a console process); killed if not stopped after KILL_AFTER_MS."""
        if not self.is_running():
            return
        self._request_cancel()
        self.process.terminate()
        self._kill_timer.start(KILL_AFTER_MS)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the process ends (its signals are delivered while waiting)."""
        self.process.waitForFinished(-1 if timeout is None else int(timeout * 1000))

    def _read(self) -> None:
        self._output(bytes(self.process.readAllStandardOutput().data()))

    def _finished(self, exit_code: int, exit_status) -> None:
        self._kill_timer.stop()
        self._read()
        self._ended(exit_code, exit_status == qt.QProcess.NormalExit)

    def _failed_to_start(self, error) -> None:
        if error == qt.QProcess.FailedToStart:
            self._on_finished(False, f"could not start {self.command[0]}: {self.process.errorString()}")
