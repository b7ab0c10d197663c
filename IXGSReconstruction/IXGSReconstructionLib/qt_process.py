"""An engine job in a ``qt.QProcess``: progress, live values and Cancel without blocking Slicer.

Only the Qt plumbing lives here; command lines and the parsing of the engine's output are in
``engine_process`` (tested without Qt).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import qt

from IXGSReconstructionLib.engine_process import (
    OutputReader,
    ProgressEvent,
    cancel_file_in,
    engine_command,
    request_cancel,
)

KILL_AFTER_MS = 60000
"""How long a cancelled engine has to finish its step and write its checkpoint before it is killed."""


class EngineJob:
    """Runs ``ixgs <arguments>`` and calls back on progress, log lines and the end.

    ``on_finished(success, message)``: ``message`` is the engine's one-line summary, its
    error, or "cancelled".
    """

    def __init__(
        self,
        arguments: Sequence[str],
        environment: dict[str, str],
        on_progress: Callable[[ProgressEvent], None],
        on_log: Callable[[str], None],
        on_finished: Callable[[bool, str], None],
    ) -> None:
        self.command = engine_command(arguments)
        self.cancel_file = cancel_file_in(arguments)
        self.reader = OutputReader()
        self._shown_stage: ProgressEvent | None = None
        self.cancelled = False
        self._on_progress, self._on_log, self._on_finished = on_progress, on_log, on_finished
        self.process = qt.QProcess()
        qt_environment = qt.QProcessEnvironment()
        for key, value in environment.items():
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
        if self.cancel_file is not None:
            self.cancel_file.unlink(missing_ok=True)  # an earlier Cancel's request is not this run's
        self._on_log("$ " + " ".join(self.command))
        self.process.start(self.command[0], self.command[1:])

    def is_running(self) -> bool:
        return self.process.state() != qt.QProcess.NotRunning

    def cancel(self) -> None:
        """Ask the engine to stop at its next step, where it writes a checkpoint (Resume
        continues): through its cancel file when it has one (every platform) and SIGTERM (not
        on Windows, where terminate() does not reach a console process); kill it if it has not
        stopped after KILL_AFTER_MS."""
        if not self.is_running():
            return
        self.cancelled = True
        if self.cancel_file is not None:
            request_cancel(self.cancel_file)
        self.process.terminate()
        self._kill_timer.start(KILL_AFTER_MS)

    def _dispatch(self, events: list[ProgressEvent], lines: list[str]) -> None:
        stage = self.reader.stage
        if stage is not None and not events and stage is not self._shown_stage:  # the SART start and the like
            self._shown_stage = stage
            self._on_progress(stage)
        for event in events:
            self._on_progress(event)
        for line in lines:
            self._on_log(line)

    def _read(self) -> None:
        self._dispatch(*self.reader.feed(bytes(self.process.readAllStandardOutput().data())))

    def _finished(self, exit_code: int, exit_status) -> None:
        self._kill_timer.stop()
        self._read()
        self._dispatch(*self.reader.finish())
        if self.cancelled:
            self._on_finished(False, "cancelled")
        else:
            ok = exit_status == qt.QProcess.NormalExit and exit_code == 0
            self._on_finished(ok, self.reader.last_message() or f"the engine stopped with exit code {exit_code}")

    def _failed_to_start(self, error) -> None:
        if error == qt.QProcess.FailedToStart:
            self._on_finished(False, f"could not start {self.command[0]}: {self.process.errorString()}")
