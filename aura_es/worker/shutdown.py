"""Graceful shutdown: SIGTERM or Ctrl-C asks the loop to stop after the current batch."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
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


#: Set by the supervisor for its children: the pid they must not outlive.
SUPERVISOR_PID_ENV = "AURA_ES_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def _ask_for_signal_when_parent_dies(signum: int) -> None:
    """Linux's PR_SET_PDEATHSIG: the kernel signals us the moment our parent dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def follow_supervisor(on_orphaned: Callable[[], None], poll_seconds: float = 0.5) -> None:
    """Calls ``on_orphaned`` once if the supervisor that started this process dies
    (even by SIGKILL), so no worker keeps its projection's lock as an orphan.

    The kernel's parent-death signal (SIGTERM, handled as a graceful stop) acts at once
    on Linux; a watchdog thread that compares ``getppid()`` covers the moment before it
    was set up and every other platform.
    """
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if not expected or not expected.isdigit():
        return
    parent = int(expected)
    _ask_for_signal_when_parent_dies(signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        on_orphaned()

    threading.Thread(target=watch, name="aura-follow-supervisor", daemon=True).start()
