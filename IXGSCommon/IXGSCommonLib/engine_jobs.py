"""Engine jobs: one ``ixgs`` command in a separate process, with progress, log lines, Cancel and
an end callback (no Qt, no Slicer).

``EngineJobBase`` holds what every runner shares: the command line, the output parsing, the
cancel request and the final message. ``SubprocessJob`` runs the command with ``subprocess``
(the Python console, scripts and the tests); ``qt_process.EngineJob`` runs it in a
``QProcess`` so Slicer's GUI stays responsive. A module's Logic takes either as its runner, so
the buttons, the console and the tests start jobs the same way.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Sequence

from IXGSCommonLib.engine_process import (
    OutputReader,
    ProgressEvent,
    cancel_file_in,
    engine_command,
    request_cancel,
)

CANCELLED = "cancelled"
"""The message of a job stopped by Cancel (its checkpoint kept: Resume continues it)."""

ProgressCallback = Callable[[ProgressEvent], None]
LogCallback = Callable[[str], None]
FinishedCallback = Callable[[bool, str], None]
JobRunner = Callable[[Sequence[str], dict, ProgressCallback, LogCallback, FinishedCallback], "EngineJobBase"]
"""Makes a job (not started) from arguments, environment and the three callbacks: a job class."""


class EngineJobBase:
    """Runs ``ixgs <arguments>`` and calls back on progress, log lines and the end.

    ``on_finished(success, message)``: ``message`` is the engine's one-line summary, its error,
    or ``CANCELLED``. Subclasses start the process and feed its output to :meth:`_output` and
    its end to :meth:`_ended`.
    """

    def __init__(
        self,
        arguments: Sequence[str],
        environment: dict[str, str],
        on_progress: ProgressCallback,
        on_log: LogCallback,
        on_finished: FinishedCallback,
    ) -> None:
        self.command = engine_command(arguments)
        self.environment = dict(environment)
        self.cancel_file = cancel_file_in(arguments)
        self.reader = OutputReader()
        self.cancelled = False
        self._shown_stage: ProgressEvent | None = None
        self._on_progress, self._on_log, self._on_finished = on_progress, on_log, on_finished

    def _starting(self) -> None:
        if self.cancel_file is not None:
            self.cancel_file.unlink(missing_ok=True)  # an earlier Cancel's request is not this run's
        self._on_log("$ " + " ".join(self.command))

    def _request_cancel(self) -> None:
        """Ask the engine to stop at its next step through its cancel file (every platform);
        the subclass also sends SIGTERM where it reaches the process."""
        self.cancelled = True
        if self.cancel_file is not None:
            request_cancel(self.cancel_file)

    def _dispatch(self, events: list[ProgressEvent], lines: list[str]) -> None:
        stage = self.reader.stage
        if stage is not None and not events and stage is not self._shown_stage:  # the SART start and the like
            self._shown_stage = stage
            self._on_progress(stage)
        for event in events:
            self._on_progress(event)
        for line in lines:
            self._on_log(line)

    def _output(self, chunk: bytes) -> None:
        self._dispatch(*self.reader.feed(chunk))

    def _ended(self, exit_code: int, normal_exit: bool = True) -> None:
        self._dispatch(*self.reader.finish())
        if self.cancelled:
            self._on_finished(False, CANCELLED)
        else:
            ok = normal_exit and exit_code == 0
            self._on_finished(ok, self.reader.last_message() or f"the engine stopped with exit code {exit_code}")


class SubprocessJob(EngineJobBase):
    """An engine job in a ``subprocess.Popen``, its output read by a thread (callbacks run in
    that thread); :meth:`wait` blocks until the end callback has run."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process: subprocess.Popen | None = None
        self._reader_thread: threading.Thread | None = None

    def start(self) -> None:
        self._starting()
        self.process = subprocess.Popen(
            self.command, env=self.environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._reader_thread = threading.Thread(target=self._read_until_end, daemon=True)
        self._reader_thread.start()

    def _read_until_end(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            self._output(line)
        self._ended(self.process.wait())

    def is_running(self) -> bool:
        return self._reader_thread is not None and self._reader_thread.is_alive()

    def cancel(self) -> None:
        if not self.is_running():
            return
        self._request_cancel()
        if os.name != "nt":  # SIGTERM, handled like the cancel file; on Windows terminate() would kill
            self.process.terminate()

    def wait(self, timeout: float | None = None) -> None:
        if self._reader_thread is not None:
            self._reader_thread.join(timeout)
