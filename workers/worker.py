"""One projection worker process: stand by for the projection's lock, then apply batches.

Run by the supervisor as ``python -m workers.worker --projection NAME``. The loop reads
top to bottom: wait while the circuit breaker is open; connect and stand by for the
lock; then advance batch by batch, where poison events are isolated and dead-lettered
(``ResilientRunner``) and transient failures are retried and counted by the breaker.
Exit status: 0 after a graceful stop, 3 when another worker took the projection over
(the supervisor restarts it at once, as a standby), 4 when a replay switched the read
model to a definition this process does not have (restarted at once, to load it),
2 on a configuration error (not restarted: a restart cannot fix it), 1 on any other
failure (restarted with backoff). A worker stops by itself when its supervisor dies.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import sys
import time

import psycopg
from psycopg import sql

from aura_es.application import connect
from aura_es.catalog import load_catalog
from aura_es.catalog.model import ProjectionSpec
from aura_es.errors import AuraError, ConfigurationError, ServiceUnavailable
from aura_es.log import get_logger
from aura_es.observability import metrics
from aura_es.projection.failures import (
    CircuitBreaker,
    is_transient,
    retry_delay,
    transient_types,
)
from aura_es.projection.loading import fingerprint, projection_class
from aura_es.projection.resilience import Paused, ResilientRunner
from aura_es.projection.runner import BatchRunner, GenerationChanged, LostOwnership, Step
from aura_es.replay import generations
from aura_es.settings import Settings
from aura_es.store.recorder import EVENTS_TABLE
from workers.heartbeat import Beat, Heartbeat
from workers.shutdown import Shutdown, follow_supervisor
from workers.standby import wait_for_lock

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_TAKEN_OVER, EXIT_RELOAD = 0, 1, 2, 3, 4


class Worker:
    def __init__(
        self, database_url: str, spec: ProjectionSpec, shutdown: Shutdown,
        *, poll_seconds: float = 1.0,
    ) -> None:
        self.database_url = database_url
        self.spec = spec
        self.shutdown = shutdown
        self.poll_seconds = poll_seconds
        projection_class(spec)  # a handler that does not import fails before connecting
        self.fingerprint = fingerprint(spec)
        self.transient = (*transient_types(spec.error_handling), ServiceUnavailable)
        breaker = spec.error_handling.circuit_breaker
        self.breaker = CircuitBreaker(breaker.failure_threshold, breaker.recovery_timeout)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.log = get_logger(projection=spec.name, worker_id=self.worker_id)
        self.conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self.heartbeat = Heartbeat(database_url, self.worker_id, spec.name)
        self._role = "standby"
        self._error: str | None = None
        self._logged_transitions = 0
        self.metrics = metrics.worker_metrics_enabled()

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
        self.heartbeat.leave(None)
        return EXIT_OK

    def _run_connected(self) -> int:
        self.conn = conn = connect(self.database_url)
        self._role = "standby"
        self._beat(force=True)
        self.log.info("standing by for the projection lock")
        if not wait_for_lock(conn, self.spec.name, self.shutdown, while_waiting=self._beat):
            return self._leave()
        runner = self._attach(conn)
        resilient = self._resilient(runner)
        self._role = "active"
        self._beat(force=True)
        self.log.info("active", position=runner.position, generation=runner.generation)
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_TABLE)))
        while not self.shutdown.requested:
            if not self._breaker_allows():
                continue
            self._forget_wakeups()
            try:
                progress = resilient.advance()
            except GenerationChanged as e:
                current = self._live(conn)
                if current.fingerprint != self.fingerprint:
                    self.log.info("read model replaced by another definition; reloading",
                                  reason=str(e), generation=current.generation)
                    self._leave()
                    return EXIT_RELOAD
                runner = self._attach(conn)
                resilient = self._resilient(runner)
                self.log.info("switched to the rebuilt read model", position=runner.position,
                              generation=runner.generation, storage=runner.projection.storage)
                continue
            except LostOwnership as e:
                self.log.warning("taken over", reason=str(e))
                return EXIT_TAKEN_OVER
            except Paused as e:
                self._pause(e, resilient.attempts)
                continue
            except Exception as e:
                if not is_transient(e, self.transient) or conn.broken:
                    raise
                self._transient_failure(e)
                continue
            self._after(progress.step)
            if progress.dead_lettered_type and self.metrics:
                metrics.EVENTS_PROCESSED.labels(
                    self.spec.name, progress.dead_lettered_type, metrics.DEAD_LETTERED).inc()
            if progress.wait:
                self.shutdown.wait(progress.wait)
            elif progress.step is not None and progress.step.caught_up:
                self._wait_for_events()
        self.log.info("stopped", position=runner.position, signal=self.shutdown.signal_name)
        return self._leave()

    def _resilient(self, runner: BatchRunner) -> ResilientRunner:
        resilient = ResilientRunner(runner, self.spec, self.log)
        if self.metrics:
            resilient.on_error = self._count_error
        return resilient

    def _count_error(self, kind: str) -> None:
        metrics.PROJECTION_ERRORS.labels(self.spec.name, kind).inc()

    def _live(self, conn: psycopg.Connection[tuple[object, ...]]) -> generations.Live:
        with conn.cursor() as cur:
            return generations.live(cur, self.spec)

    def _attach(self, conn: psycopg.Connection[tuple[object, ...]]) -> BatchRunner:
        runner = generations.attach(conn, self.spec, fingerprint=self.fingerprint)
        built_by = self._live(conn).fingerprint
        if built_by is not None and built_by != self.fingerprint:
            self.log.warning(
                "drift: the read model was built by another definition; rebuild it with"
                " `aura-es replay` or run workers with --rebuild-on-drift",
                built_by=built_by, definition=self.fingerprint,
            )
        return runner

    # -- failures ---------------------------------------------------------------------------

    def _breaker_allows(self) -> bool:
        allowed = self.breaker.allow()
        self._log_transitions()
        if not allowed:
            self.shutdown.wait(min(self.breaker.seconds_until_probe(), 1.0))
            self._beat()
        return allowed

    def _transient_failure(self, error: BaseException) -> None:
        self.breaker.failure()
        if self.metrics:
            self._count_error(type(error).__name__)
        first_line = (str(error).strip().splitlines() or [""])[0]
        self._error = f"{type(error).__name__}: {first_line}"
        wait = retry_delay(self.spec.error_handling, self.breaker.failures)
        self.log.warning("transient failure", error=self._error, breaker=self.breaker.state,
                         consecutive=self.breaker.failures, retry_in_seconds=round(wait, 3))
        self._log_transitions()
        self._beat(force=True)
        if self.breaker.allow():
            self.shutdown.wait(wait)

    def _pause(self, error: Paused, attempts: int) -> None:
        self._role = "paused"
        self._error = str(error)
        self.log.error("paused", error=self._error)
        self._beat(force=True)
        self.shutdown.wait(retry_delay(self.spec.error_handling, attempts))

    def _log_transitions(self) -> None:
        for before, after in self.breaker.transitions[self._logged_transitions:]:
            level = "error" if after == "open" else "info"
            getattr(self.log, level)("circuit breaker", before=str(before), after=str(after),
                                     recovery_timeout=self.breaker.recovery_timeout)
        self._logged_transitions = len(self.breaker.transitions)

    def _after(self, step: Step | None) -> None:
        if step is None:
            return
        if self.metrics:
            metrics.record_batch(self.spec.name, step.by_type, step.seconds)
            metrics.record_batch(self.spec.name, step.parked_by_type, 0.0, metrics.PARKED)
        self.breaker.success()
        self._log_transitions()
        if self._role == "paused":
            self._role = "active"
        now = time.monotonic()
        self._recent.append((now, step.applied))
        while self._recent and self._recent[0][0] < now - 5:
            self._recent.popleft()
        self._beat()

    # -- waiting and reporting --------------------------------------------------------------

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
            for _ in self.conn.notifies(timeout=min(left, 0.25), stop_after=1):
                return
            self._beat()

    def _rate(self) -> float:
        if not self._recent:
            return 0.0
        span = max(1.0, time.monotonic() - self._recent[0][0])
        return sum(n for _, n in self._recent) / span

    def _beat(self, *, force: bool = False) -> None:
        if not self.heartbeat.due(force):
            return
        open_for = self.breaker.seconds_until_probe() if self.breaker.state == "open" else None
        # Without its connection the worker holds no lock: it is waiting, not active.
        role = self._role if self.conn is not None and not self.conn.broken else "waiting"
        written = self.heartbeat.beat(self.conn, Beat(
            role=role, breaker=str(self.breaker.state), next_probe_seconds=open_for,
            events_per_second=self._rate(), error=self._error,
        ))
        if written:
            self._error = None

    def _leave(self) -> int:
        self.heartbeat.leave(self.conn)
        return EXIT_OK

    def _disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.worker")
    parser.add_argument("--projection", required=True)
    parser.add_argument("--catalog", default="catalog/projection-catalog.yaml")
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
