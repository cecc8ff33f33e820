"""The presence hook: a worker's row in the workers table (who runs a projection, in
which role, how fast, its breaker and its last error): what `status` and `/health` read.

Written at most once a second on the worker's own connection. While that connection is
gone (the database restarted, the breaker is open and waiting), a small side connection
keeps the row fresh whenever the database answers, so the worker is reported as
"breaker open, next probe in N s" rather than "stopped". A pulse thread on a connection
of its own refreshes only the heartbeat, so a worker busy in one long step (slow side
effects) is shown as what it is, not as stopped.

An error is reported until the worker next does its work (a batch committed, or a read
that found nothing new); after that, `status` keeps it as history, not as attention.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Any

import psycopg

from aura_es.db import connect, first_line
from aura_es.errors import AuraError
from aura_es.projection.engine.engine import Engine, Progress
from aura_es.projection.engine.failures import BreakerState
from aura_es.projection.engine.middleware import Middleware
from aura_es.projection.engine.runner import Step
from aura_es.projection.state import presence
from aura_es.projection.state.presence import Beat
from aura_es.worker.middleware import WorkerView

HEARTBEAT_SECONDS = 1.0
#: How often a worker without a connection tries to open its side connection.
SIDE_RETRY_SECONDS = 5.0
#: events/s is averaged over this many seconds.
RATE_SECONDS = 5.0


class Presence(Middleware):
    def __init__(self, worker: WorkerView, database_url: str) -> None:
        self.worker = worker
        self.database_url = database_url
        self.worker_id = worker.worker_id
        self.projection = worker.spec.name
        self._last = 0.0
        self._side: psycopg.Connection[Any] | None = None
        self._side_tried = 0.0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._error: str | None = None
        #: A step succeeded since the last row written.
        self._healthy = False
        self._pulse: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- the worker's moments --------------------------------------------------------------

    def after_role(self, role: str) -> None:
        self._beat(force=True)
        if self._pulse is None:
            self._pulse = threading.Thread(target=self._pulse_loop, daemon=True,
                                           name="aura-presence-pulse")
            self._pulse.start()

    def after_step(self, engine: Engine, step: Step) -> None:
        self._healthy = True
        now = time.monotonic()
        self._recent.append((now, step.applied))
        while self._recent and self._recent[0][0] < now - RATE_SECONDS:
            self._recent.popleft()
        self._beat()

    def after_transient_failure(self, error: BaseException, retry_in: float) -> None:
        self.error(f"{type(error).__name__}: {first_line(error)}")
        self._beat(force=True)

    def after_poison(self, engine: Engine, progress: Progress, error: BaseException) -> None:
        if progress.dead_lettered is not None:
            self.error(f"{type(error).__name__}: {first_line(error)}")
            self._beat(force=True)

    def after_breaker_change(self, before: BreakerState, after: BreakerState) -> None:
        self._beat(force=True)

    def on_idle(self) -> None:
        self._beat()

    def before_stop(self) -> None:
        self._stopping.set()
        if self._pulse is not None and self._pulse.is_alive():
            self._pulse.join(timeout=5)
        self.leave(self.worker.connection)

    def error(self, message: str) -> None:
        """A failure to show as the worker's last error (a pause, say)."""
        self._error = message
        self._healthy = False

    def _beat(self, *, force: bool = False) -> None:
        if not self.due(force):
            return
        worker = self.worker
        breaker = worker.breaker
        conn = worker.connection
        open_for = breaker.seconds_until_probe() if breaker.state == "open" else None
        # Without its connection the worker holds no lock: it is waiting, not active.
        role = worker.role if conn is not None and not conn.broken else "waiting"
        written = self.beat(conn, Beat(
            role=role, breaker=str(breaker.state), next_probe_seconds=open_for,
            events_per_second=self._rate(), error=self._error, healthy=self._healthy,
        ))
        if written:
            self._error = None
            self._healthy = False

    def _rate(self) -> float:
        if not self._recent:
            return 0.0
        span = max(1.0, time.monotonic() - self._recent[0][0])
        return sum(n for _, n in self._recent) / span

    # -- the row ------------------------------------------------------------------------

    def due(self, force: bool = False) -> bool:
        return force or time.monotonic() - self._last >= HEARTBEAT_SECONDS

    def beat(self, conn: psycopg.Connection[Any] | None, beat: Beat) -> bool:
        """Writes the row; True when it was written (the caller's error is then kept)."""
        target = conn if conn is not None and not conn.broken else self._side_connection()
        if target is None:
            return False
        self._last = time.monotonic()
        try:
            presence.beat(target, self.worker_id, self.projection, beat)
        except psycopg.Error:
            if target is self._side:
                self._close_side()
                return False
            raise
        if target is conn:
            self._close_side()  # the worker's own connection is back
        return True

    def leave(self, conn: psycopg.Connection[Any] | None) -> None:
        target = conn if conn is not None and not conn.broken else self._side
        if target is not None and not target.broken:
            with contextlib.suppress(psycopg.Error):
                presence.leave(target, self.worker_id)
        self._close_side()

    def _side_connection(self) -> psycopg.Connection[Any] | None:
        if self._side is not None and not self._side.broken:
            return self._side
        if time.monotonic() - self._side_tried < SIDE_RETRY_SECONDS:
            return None
        self._side_tried = time.monotonic()
        with contextlib.suppress(AuraError, psycopg.Error):
            self._side = connect(self.database_url)
        return self._side

    def _pulse_loop(self) -> None:
        """Every heartbeat, on a connection of its own (psycopg connections are not
        shared across threads); a database that is away is tried again quietly."""
        conn: psycopg.Connection[Any] | None = None
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            try:
                if conn is None or conn.broken:
                    conn = connect(self.database_url)
                presence.pulse(conn, self.worker_id)
            except (AuraError, psycopg.Error):
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                conn = None
                self._stopping.wait(SIDE_RETRY_SECONDS)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _close_side(self) -> None:
        if self._side is not None:
            with contextlib.suppress(psycopg.Error):
                self._side.close()
            self._side = None
