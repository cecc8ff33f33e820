"""Waking readers after appends commit, without slowing the appends down.

A NOTIFY inside the append transaction would serialise every commit on the server:
PostgreSQL holds a cluster-wide lock on the notification queue from the NOTIFY's
pre-commit step until the commit record is flushed, so concurrent appends could no
longer share a WAL flush (measured: 3,270 vs 7,310 inserts/s at 8 clients; see
docs/benchmarks.md). So the append commits first, and this process's ``Waker`` sends
the NOTIFY afterwards, from a thread of its own. That NOTIFY's own transaction still
takes a transaction id (measured: a bare ``NOTIFY`` uses one), so its connection commits
without waiting for the disk: a NOTIFY is only a hint, and readers also poll.

One NOTIFY answers every append that committed before it was sent, so under load many
appends share one; a reader never misses an event because it also polls (the NOTIFY
only makes it early).
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable

from aura_es import forks
from aura_es.log import get_logger

#: How long a process that exits waits for its last NOTIFY to go out.
EXIT_FLUSH_SECONDS = 2.0
#: NOTIFYs from one process are at least this far apart: commits in between share the
#: next one. The first commit after a quiet interval is notified at once; under a steady
#: stream the readers do not wait for the next NOTIFY, they follow the log for 2.5
#: intervals after the last one they heard (``store/following.py``). Each NOTIFY is a
#: transaction on the server: at 10 ms, 32 writer processes appending 40 times a second
#: each sent one per append, and 8 processes appended 10-20% slower than at 100 ms
#: (docs/benchmarks.md).
MIN_INTERVAL_SECONDS = 0.100
#: A waker with nothing to send for this long ends its thread and closes its
#: connection; the next commit starts them again.
IDLE_SECONDS = 5.0


class Waker:
    """Sends one NOTIFY after any number of ``committed()`` calls, never before them.

    ``send`` sends it (on a connection of the waker's own, so an application with a
    one-connection pool never waits for its waker); ``close`` is called when the thread
    ends after ``idle_seconds`` without commits."""

    def __init__(self, send: Callable[[], None], close: Callable[[], None] = lambda: None,
                 *, min_interval: float = MIN_INTERVAL_SECONDS,
                 idle_seconds: float = IDLE_SECONDS) -> None:
        self._send = send
        self._close = close
        self._min_interval = min_interval
        self._idle_seconds = idle_seconds
        self._pending = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._generation = -1

    @property
    def min_interval(self) -> float:
        return self._min_interval

    def committed(self) -> None:
        """An append has committed: readers are woken soon, without this caller waiting."""
        # Pending means the waker has not yet cleared it for its next NOTIFY, which it does
        # before sending: that NOTIFY covers this commit. No lock for a busy writer.
        if self._pending.is_set() and self._generation == forks.generation():
            return
        with self._lock:
            self._idle.clear()
            self._pending.set()
            # A forked child inherits the object but not the thread.
            if self._thread is None or self._generation != forks.generation():
                self._generation = forks.generation()
                self._thread = threading.Thread(target=self._run, name="aura-es-waker",
                                                 daemon=True)
                self._thread.start()

    def flush(self, timeout: float = EXIT_FLUSH_SECONDS) -> bool:
        """Waits until every commit reported so far has been notified (True) or timeout."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        sent_at = -self._min_interval
        while True:
            if not self._pending.wait(self._idle_seconds):
                with self._lock:
                    if not self._pending.is_set():
                        self._thread = None
                        break
            time.sleep(max(0.0, sent_at + self._min_interval - time.monotonic()))
            with self._lock:
                # Cleared before sending: a commit reported from now on gets another one.
                self._pending.clear()
            sent_at = time.monotonic()
            try:
                self._send()
            except Exception as error:  # readers poll: a lost wake-up only delays them
                get_logger(component="wakeup").warning(
                    "notify_failed", error=type(error).__name__)
            with self._lock:
                if not self._pending.is_set():
                    self._idle.set()
        self._close()


_wakers: weakref.WeakSet[Waker] = weakref.WeakSet()


def register(waker: Waker) -> Waker:
    """Keeps ``waker`` flushed when the interpreter exits, so a short command's last
    append still wakes the readers at once."""
    _wakers.add(waker)
    return waker


@atexit.register
def _flush_all() -> None:
    for waker in list(_wakers):
        waker.flush()
