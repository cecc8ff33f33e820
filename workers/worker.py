"""One projection worker process: stand by for the projection's lock, then apply batches.

Run by the supervisor as ``python -m workers.worker --projection NAME``. The loop reads
top to bottom: wait while the circuit breaker is open; connect and stand by for the
lock; then advance batch by batch, where poison events are isolated and dead-lettered
(``ResilientRunner``) and transient failures are retried and counted by the breaker.
Everything that watches the loop (presence row, log lines, metrics, tracing, drift
warnings, side effects) is a hook (``workers.hooks``).

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
from aura_es.projection import serving
from aura_es.projection.failures import (
    CircuitBreaker,
    backoff,
    is_transient,
    transient_types,
)
from aura_es.projection.loading import fingerprint, projection_class
from aura_es.projection.resilience import Paused, ResilientRunner
from aura_es.projection.runner import GenerationChanged, LostOwnership
from aura_es.settings import Settings
from aura_es.store import eventlog
from workers.hooks import Hook, Hooks
from workers.hooks.drift import DriftWarning
from workers.hooks.logging import LogLines
from workers.hooks.metrics import Metrics
from workers.hooks.presence import Presence
from workers.hooks.side_effects import SideEffects
from workers.hooks.tracing import Tracing
from workers.shutdown import Shutdown, follow_supervisor
from workers.standby import wait_for_lock

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_TAKEN_OVER, EXIT_RELOAD = 0, 1, 2, 3, 4
#: How often a waiting worker wakes to tell its hooks (heartbeat, due side effects).
IDLE_TICK_SECONDS = 0.25


class Worker:
    def __init__(
        self, database_url: str, spec: ProjectionSpec, shutdown: Shutdown,
        *, poll_seconds: float = 1.0, hooks: Sequence[Hook] | None = None,
    ) -> None:
        self.database_url = database_url
        self.spec = spec
        self.shutdown = shutdown
        self.poll_seconds = poll_seconds
        projection_class(spec)  # a handler that does not import fails before connecting
        self.fingerprint = fingerprint(spec)
        self.transient = transient_types(spec.error_handling)
        self.backoff = backoff(spec.error_handling)
        limits = spec.error_handling.circuit_breaker
        self.breaker = CircuitBreaker(limits.failure_threshold, limits.recovery_timeout)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.log = get_logger(projection=spec.name, worker_id=self.worker_id)
        self.role = "standby"
        self.conn: psycopg.Connection[Any] | None = None
        self.presence = Presence(database_url, self.worker_id, spec.name)
        self.hooks = Hooks(hooks if hooks is not None else self.default_hooks())
        self.breaker.listeners.append(
            lambda before, after: self.hooks.on_breaker_change(self, before, after))

    def default_hooks(self) -> list[Hook]:
        counting = metrics.worker_metrics_enabled()
        return [self.presence, LogLines(), DriftWarning(), Tracing(),
                SideEffects(self, count=counting), *([Metrics()] if counting else [])]

    @property
    def connection(self) -> psycopg.Connection[Any] | None:
        return self.conn

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        while not self.shutdown.requested:
            if not self._breaker_allows():
                continue
            try:
                return self._run_connected()
            except Exception as e:
                if not is_transient(e, self.transient):
                    raise
                self._transient_failure(e)
            finally:
                self._disconnect()
        return self._stop()

    def _run_connected(self) -> int:
        self.conn = conn = connect(self.database_url)
        self._become("standby")
        if not wait_for_lock(conn, self.spec.name, self.shutdown,
                             while_waiting=lambda: self.hooks.on_idle(self)):
            return self._stop()
        resilient = self._attach(conn)
        self._become("active")
        eventlog.listen(conn)
        while not self.shutdown.requested:
            if not self._breaker_allows():
                continue
            self._forget_wakeups()
            self.hooks.on_batch_start(self)
            try:
                progress = resilient.advance()
            except GenerationChanged as e:
                if self._live_fingerprint(conn) != self.fingerprint:
                    self.log.info("read model replaced by another definition; reloading",
                                  reason=str(e))
                    self._stop()
                    return EXIT_RELOAD
                resilient = self._attach(conn)  # rebuilt with this definition: carry on
                continue
            except LostOwnership as e:
                self.log.warning("taken over", reason=str(e))
                self._stop()
                return EXIT_TAKEN_OVER
            except Paused as e:
                self._pause(e, resilient.attempts)
                continue
            except Exception as e:
                if not is_transient(e, self.transient) or conn.broken:
                    raise
                self._transient_failure(e)
                continue
            if progress.step is not None:
                self.breaker.success()
                if self.role == "paused":
                    self._become("active")
                self.hooks.on_batch_committed(self, progress.step)
            if progress.wait:
                self._idle_for(progress.wait)
            elif progress.step is not None and progress.step.caught_up:
                self._wait_for_events()
        self.log.info("stopped", signal=self.shutdown.signal_name)
        return self._stop()

    def _attach(self, conn: psycopg.Connection[Any]) -> ResilientRunner:
        runner = serving.attach(conn, self.spec, fingerprint=self.fingerprint)
        self.hooks.on_attached(self, runner)
        resilient = ResilientRunner(runner, self.spec, self.log)
        resilient.on_poison = lambda progress, error: self.hooks.on_poison(
            self, progress, error)
        return resilient

    def _live_fingerprint(self, conn: psycopg.Connection[Any]) -> str | None:
        with conn.cursor() as cur:
            return serving.current(cur, self.spec).fingerprint

    # -- failures ---------------------------------------------------------------------------

    def _breaker_allows(self) -> bool:
        if self.breaker.allow():
            return True
        self._idle_for(min(self.breaker.seconds_until_probe(), 1.0))
        return False

    def _transient_failure(self, error: BaseException) -> None:
        self.breaker.failure()
        wait = self.backoff.delay(self.breaker.failures)
        self.hooks.on_transient_failure(self, error, wait)
        if self.breaker.allow():
            self._idle_for(wait)

    def _pause(self, error: Paused, attempts: int) -> None:
        self.log.error("paused", error=str(error))
        self.presence.error(str(error))
        self._become("paused")
        self._idle_for(self.backoff.delay(attempts))

    # -- waiting ----------------------------------------------------------------------------

    def _forget_wakeups(self) -> None:
        """Drops NOTIFYs received so far: the batch about to be read sees their events.

        psycopg keeps NOTIFYs that arrive during other queries (a batch's) and hands
        them to the next ``notifies()``: so one that arrives while a batch runs wakes
        the wait after it, and none is lost. (No notify handler: psycopg warns that the
        two together are unreliable, and its plain-text warning broke the JSON log.)
        """
        assert self.conn is not None
        for _ in self.conn.notifies(timeout=0):
            pass

    def _wait_for_events(self) -> None:
        """Until a NOTIFY, a poll interval or shutdown; a lost NOTIFY costs one interval."""
        assert self.conn is not None
        deadline = time.monotonic() + self.poll_seconds
        while not self.shutdown.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in self.conn.notifies(timeout=min(left, IDLE_TICK_SECONDS), stop_after=1):
                return
            self.hooks.on_idle(self)

    def _idle_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.shutdown.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.shutdown.wait(min(left, IDLE_TICK_SECONDS))
            self.hooks.on_idle(self)

    # -- roles ------------------------------------------------------------------------------

    def _become(self, role: str) -> None:
        self.role = role
        self.hooks.on_role(self)

    def _stop(self) -> int:
        self.hooks.on_stop(self)
        return EXIT_OK

    def _disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.worker")
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
