"""Interrupts that wait for the end of a step: Ctrl-C (SIGINT) and SIGTERM (what Slicer's
Cancel, ``kill`` and job schedulers send) only set a flag while a long loop runs, and the loop
stops at its next step boundary, where its state is whole and can be checkpointed.

A Python ``KeyboardInterrupt`` can arrive anywhere — between an optimizer step and the
bookkeeping that goes with it — and a checkpoint written then mixes two steps, so a resumed
run no longer reproduces the uninterrupted one. A second Ctrl-C stops at once (the last
periodic checkpoint is kept), for a loop that would not come back.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)
EXIT_CODES = {signal.SIGINT: 130, getattr(signal, "SIGTERM", signal.SIGINT): 143}


@dataclass
class InterruptRequest:
    """Set by the handlers: the signal received first (None while there was none)."""

    signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


@contextmanager
def deferred_interrupts() -> Iterator[InterruptRequest]:
    """Within the block, SIGINT and SIGTERM set ``request.signal`` instead of stopping the
    program; a second SIGINT raises ``KeyboardInterrupt`` at once. Outside the main thread
    (where Python cannot install handlers) the block runs with the signals left as they are."""
    request = InterruptRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(number: int, frame) -> None:
        if request.requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        request.signal = request.signal or number

    previous = {number: signal.signal(number, handler) for number in _SIGNALS}
    try:
        yield request
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
