"""One projection worker process: stand by for the projection's lock, then apply batches.

Run by the supervisor as ``python -m aura_es.worker.worker --projection NAME``. The loop
reads top to bottom: wait while the circuit breaker is open; connect and stand by for
the lock; then ask its ``Engine`` to advance, step by step. The engine applies batches
and the failure policy (poison isolated and dead-lettered, transient failures counted
by the breaker and backed off) and tells the middleware; what stays here is the
process's own: the lock, signals, LISTEN, reconnecting. Everything that watches the
loop (presence row, log lines, metrics, tracing, drift warnings, side effects) is a
middleware (``aura_es.worker.middleware``).

Exit status: 0 after a graceful stop, 3 when another worker took the projection over
(the supervisor restarts it at once, as a standby), 4 when a replay switched the read
model to a definition this process does not have (restarted at once, to load it),
2 on a configuration error (not restarted: a restart cannot fix it), 1 on any other
failure (restarted with backoff). A worker stops by itself when its supervisor dies.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from aura_es.catalog import DEFAULT_CATALOG, load_catalog
from aura_es.catalog.model import ProjectionSpec
from aura_es.db import connect
from aura_es.errors import AuraError, ConfigurationError
from aura_es.log import get_logger
from aura_es.observability import metrics
from aura_es.projection.engine import serving
from aura_es.projection.engine.engine import Engine, Paused, wired_policy
from aura_es.projection.engine.failures import CircuitBreaker
from aura_es.projection.engine.loading import fingerprint, projection_class
from aura_es.projection.engine.middleware import Middleware, Signals
from aura_es.projection.engine.runner import GenerationChanged, LostOwnership
from aura_es.projection.middleware.drift import DriftWarning
from aura_es.projection.middleware.logging import LogLines
from aura_es.projection.middleware.metrics import Metrics
from aura_es.projection.middleware.tracing import Tracing
from aura_es.settings import Settings
from aura_es.store import eventlog
from aura_es.store.factory import wake_interval_from_env
from aura_es.store.following import Follow
from aura_es.worker.middleware.presence import Presence
from aura_es.worker.middleware.side_effects import SideEffects
from aura_es.worker.shutdown import Shutdown, follow_supervisor
from aura_es.worker.standby import wait_for_lock

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_TAKEN_OVER, EXIT_RELOAD = 0, 1, 2, 3, 4
#: How often a waiting worker wakes to tell its middleware (heartbeat, due side effects).
IDLE_TICK_SECONDS = 0.25


class _Reconnect(Exception):
    """The engine's connection broke: open a new one (the failure is counted already)."""

    def __init__(self, wait: float) -> None:
        super().__init__("connection lost")
        self.wait = wait


class Worker:
    def __init__(
        self, database_url: str, spec: ProjectionSpec, shutdown: Shutdown,
        *, poll_seconds: float = 1.0, middleware: Sequence[Middleware] | None = None,
        wake_interval: float | None = None,
    ) -> None:
        self.database_url = database_url
        self.spec = spec
        self.shutdown = shutdown
        self.poll_seconds = poll_seconds
        # Reads again on its own while the log is busy, so writers may hold NOTIFYs back.
        self.follow = Follow(wake_interval if wake_interval is not None
                             else wake_interval_from_env())
        projection_class(spec)  # a handler that does not import fails before connecting
        self.fingerprint = fingerprint(spec)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.log = get_logger(projection=spec.name, worker_id=self.worker_id)
        self.role = "standby"
        self.conn: psycopg.Connection[Any] | None = None
        self.signals = Signals(log=self.log)
        # One policy and one breaker for the worker's life: they outlive each connection.
        self.failures = wired_policy(spec, self.signals)
        self.presence = Presence(self, database_url)
        self.signals.middleware = list(
            middleware if middleware is not None else self.default_middleware())

    def default_middleware(self) -> list[Middleware]:
        counting = metrics.worker_metrics_enabled()
        return [self.presence, LogLines(self.log, self.breaker), DriftWarning(self.log),
                Tracing(), SideEffects(self, count=counting),
                *([Metrics(self.spec.name)] if counting else [])]

    @property
    def breaker(self) -> CircuitBreaker:
        return self.failures.breaker

    @property
    def connection(self) -> psycopg.Connection[Any] | None:
        return self.conn

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        while not self.shutdown.requested:
            probe_in = self.failures.probe_wait()
            if probe_in is not None:
                self._idle_for(min(probe_in, 1.0))
                continue
            try:
                return self._run_connected()
            except _Reconnect as e:
                self._idle_for(e.wait)
            except Exception as e:
                if not self.failures.is_transient(e):
                    raise
                wait = self.failures.transient_failure()
                self.signals.emit("after_transient_failure", e, wait)
                self._idle_for(wait)
            finally:
                self._disconnect()
        return self._stop()

    def _run_connected(self) -> int:
        self.conn = conn = connect(self.database_url)
        self._become("standby")
        if not wait_for_lock(conn, self.spec.name, self.shutdown,
                             while_waiting=lambda: self.signals.emit("on_idle")):
            return self._stop()
        engine = self._attach(conn)
        self._become("active")
        eventlog.listen(conn)
        while not self.shutdown.requested:
            self._forget_wakeups()
            try:
                progress = engine.advance()
            except GenerationChanged as e:
                if self._live_fingerprint(conn) != self.fingerprint:
                    self.log.info("read model replaced by another definition; reloading",
                                  reason=str(e))
                    self._stop()
                    return EXIT_RELOAD
                engine = self._attach(conn)  # rebuilt with this definition: carry on
                continue
            except LostOwnership as e:
                self.log.warning("taken over", reason=str(e))
                self._stop()
                return EXIT_TAKEN_OVER
            except Paused as e:
                self._pause(e, engine.attempts)
                continue
            if progress.step is not None and (progress.step.applied or progress.step.parked):
                self.follow.heard()
            if progress.reconnect:
                raise _Reconnect(progress.wait)
            if progress.step is not None and self.role == "paused":
                self._become("active")
            if progress.wait:
                self._idle_for(progress.wait)
            elif progress.step is not None and progress.step.caught_up:
                self._wait_for_events()
        self.log.info("stopped", signal=self.shutdown.signal_name)
        return self._stop()

    def _attach(self, conn: psycopg.Connection[Any]) -> Engine:
        return Engine.attach(conn, self.spec, fingerprint=self.fingerprint,
                             signals=self.signals, failures=self.failures, log=self.log)

    def _live_fingerprint(self, conn: psycopg.Connection[Any]) -> str | None:
        with conn.cursor() as cur:
            return serving.current(cur, self.spec).fingerprint

    def _pause(self, error: Paused, attempts: int) -> None:
        self.log.error("paused", error=str(error))
        self.presence.error(str(error))
        self._become("paused")
        self._idle_for(self.failures.retry_delay(attempts))

    # -- waiting ----------------------------------------------------------------------------

    def _forget_wakeups(self) -> None:
        """Drops NOTIFYs received so far: the batch about to be read sees their events.
        Tells ``self.follow`` that a read starts, and whether any NOTIFY had come.

        psycopg keeps NOTIFYs that arrive during other queries (a batch's) and hands
        them to the next ``notifies()``: so one that arrives while a batch runs wakes
        the wait after it, and none is lost. (No notify handler: psycopg warns that the
        two together are unreliable, and its plain-text warning broke the JSON log.)
        """
        assert self.conn is not None
        self.follow.reading()
        heard = False
        for _ in self.conn.notifies(timeout=0):
            heard = True
        if heard:
            self.follow.heard()

    def _wait_for_events(self) -> None:
        """Until a NOTIFY, the next read while the log is busy (``store/following.py``),
        a poll interval or shutdown; a lost NOTIFY costs one interval."""
        assert self.conn is not None
        wait = self.follow.timeout(self.poll_seconds)
        deadline = time.monotonic() + wait
        while not self.shutdown.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in self.conn.notifies(timeout=min(left, IDLE_TICK_SECONDS), stop_after=1):
                self.follow.heard()
                return
            if wait >= IDLE_TICK_SECONDS:  # a pause between reads of a busy log is not idle
                self.signals.emit("on_idle")

    def _idle_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.shutdown.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.shutdown.wait(min(left, IDLE_TICK_SECONDS))
            self.signals.emit("on_idle")

    # -- roles ------------------------------------------------------------------------------

    def _become(self, role: str) -> None:
        self.role = role
        self.signals.emit("after_role", role)

    def _stop(self) -> int:
        self.signals.emit("before_stop")
        return EXIT_OK

    def _disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aura_es.worker.worker")
    parser.add_argument("--projection", required=True)
    parser.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    shutdown = Shutdown().install()
    follow_supervisor(shutdown.request)
    log = get_logger(projection=args.projection)
    try:
        url = args.database_url or Settings().resolved_database_url()
        spec = load_catalog(args.catalog).get(args.projection)
        return Worker(url, spec, shutdown, poll_seconds=args.poll_seconds).run()
    except (ConfigurationError, KeyError) as e:
        # Restarting cannot fix a configuration: the supervisor does not restart it.
        log.error("cannot run: configuration error", error=str(e.args[0] if e.args else e))
        return EXIT_CONFIG
    except AuraError as e:
        log.error("cannot run", error=str(e))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
