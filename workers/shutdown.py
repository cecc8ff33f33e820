"""Graceful shutdown: SIGTERM or Ctrl-C asks the loop to stop after the current batch."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Shutdown:
    """A flag set by SIGTERM/SIGINT; ``wait`` sleeps but wakes at once when it is set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def install(self) -> Shutdown:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)
