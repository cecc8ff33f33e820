"""One projection worker process: holds some of the projection's partitions and applies
their batches.

Run by the supervisor as ``python -m aura_es.worker.worker --projection NAME``. The loop
reads top to bottom: wait while the circuit breaker is open; connect and join the
projection's live members; then, round after round, rebalance (give up and claim
partitions as the deal says, ``holdings.py``) and ask each held partition's ``Engine``
to advance one step. A worker that holds nothing is a hot standby. The engine applies
batches and the failure policy (poison isolated and dead-lettered, transient failures
counted by the breaker and backed off) and tells the middleware; what stays here is the
process's own: membership, leases, signals, LISTEN, reconnecting. Everything that
watches the loop (presence row, log lines, metrics, tracing, drift warnings, side
effects) is a middleware (``aura_es.worker.middleware``).

Exit status: 0 after a graceful stop (its partitions released for the next owner at
once), 4 when a replay switched the read model to a definition this process does not
have (restarted at once, to load it), 2 on a configuration error (not restarted: a
restart cannot fix it), 1 on any other failure (restarted with backoff). A worker whose
partition was taken over carries on with the rest. A worker stops by itself when its
supervisor dies.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from aura_es import heap, locks
from aura_es.catalog import DEFAULT_CATALOG, load_catalog
from aura_es.catalog.model import ProjectionSpec
from aura_es.db import connect
from aura_es.errors import AuraError, ConfigurationError
from aura_es.log import get_logger
from aura_es.observability import metrics
from aura_es.projection.engine import serving
from aura_es.projection.engine.engine import Engine, Paused, Progress, wired_policy
from aura_es.projection.engine.failures import CircuitBreaker
from aura_es.projection.engine.loading import fingerprint, projection_class
from aura_es.projection.engine.middleware import Middleware, Signals
from aura_es.projection.engine.runner import GenerationChanged, Lease, LostOwnership
from aura_es.projection.middleware.drift import DriftWarning
from aura_es.projection.middleware.logging import LogLines
from aura_es.projection.middleware.metrics import Metrics
from aura_es.projection.middleware.tracing import Tracing
from aura_es.projection.state import presence
from aura_es.settings import Settings
from aura_es.store import eventlog
from aura_es.store.factory import wake_interval_from_env
from aura_es.store.following import Follow
from aura_es.worker.holdings import REBALANCE_SECONDS, Holdings
from aura_es.worker.lease import lease_from_env
from aura_es.worker.middleware.presence import Presence
from aura_es.worker.middleware.side_effects import SideEffects
from aura_es.worker.shutdown import Shutdown, follow_supervisor

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_RELOAD = 0, 1, 2, 4
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
        wake_interval: float | None = None, lease_seconds: float | None = None,
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
        self.lease_seconds = lease_seconds if lease_seconds is not None else lease_from_env()
        self.holdings = Holdings(
            spec.name, spec.partitions, self.worker_id, self.lease_seconds,
            lambda partition, lease: self._attach(self._connected(), partition, lease),
            self.log)
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

    def _connected(self) -> psycopg.Connection[Any]:
        assert self.conn is not None
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
        self._join(conn)
        self._become("standby", force=True)  # the presence row: this worker is a member
        eventlog.listen(conn)
        self.holdings.forget()
        while not self.shutdown.requested:
            self._rebalance_if_due(conn)
            if not self.holdings:
                self._stand_by()
                continue
            exit_status = self._round(conn)
            if exit_status is not None:
                return exit_status
        self.log.info("stopped", signal=self.shutdown.signal_name)
        return self._stop()

    def _round(self, conn: psycopg.Connection[Any]) -> int | None:
        """One step of each partition held, then the wait the steps call for; an exit
        status when the worker must stop."""
        self._forget_wakeups()
        caught_up, waits = True, [0.0]
        for partition, engine in self.holdings:
            if self.shutdown.requested:
                return None
            # Between any two batches, not only after a round: a worker that holds many
            # partitions hands some over without first stepping them all.
            self._rebalance_if_due(conn)
            if self.holdings.engines.get(partition) is not engine:
                continue
            outcome = self._advance(conn, partition, engine)
            if outcome is None:
                continue
            if isinstance(outcome, int):
                return outcome
            step = outcome.step
            if step is not None and (step.applied or step.parked):
                self.follow.heard()
            if outcome.reconnect:
                raise _Reconnect(outcome.wait)
            if step is not None and self.role == "paused":
                self._become("active")
            waits.append(outcome.wait)
            caught_up = caught_up and step is not None and step.caught_up
        if max(waits):
            self._idle_for(max(waits))
        elif caught_up:
            self._wait_for_events()
        return None

    def _rebalance_if_due(self, conn: psycopg.Connection[Any]) -> None:
        if self.holdings.due():
            self.holdings.rebalance(conn)
            if not self.holdings or self.role != "paused":
                self._become("active" if self.holdings else "standby")

    def _advance(self, conn: psycopg.Connection[Any], partition: int,
                 engine: Engine) -> Progress | int | None:
        """One step of one partition: its progress, an exit status, or None when the
        partition is no longer this worker's to run."""
        try:
            return engine.advance()
        except GenerationChanged as e:
            if self._live_fingerprint(conn) != self.fingerprint:
                self.log.info("read model replaced by another definition; reloading",
                              reason=str(e))
                self._stop()
                return EXIT_RELOAD
            self._check_layout(conn)  # rebuilt with this definition: claim afresh
            self.holdings.forget()
        except LostOwnership as e:
            self.holdings.lost(partition, str(e))
        except Paused as e:
            self._pause(e, engine.attempts)
        return None

    def _join(self, conn: psycopg.Connection[Any]) -> None:
        """Makes this connection the worker's membership: its session lock says the worker
        is alive, and a transaction left open past the lease (a paused process) is ended
        by the server, so its partitions' rows are free for the next owner."""
        locks.try_lock(conn, presence.MEMBER_LOCK + self.worker_id)
        conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                     (str(int(self.lease_seconds * 1000)),))
        self._check_layout(conn)

    def _check_layout(self, conn: psycopg.Connection[Any]) -> None:
        """The read model is split as this catalog says (made or split now), or
        ``PartitionsChanged`` stops the worker before it claims anything. An engine of
        its own: the worker's middleware would report it as running a partition."""
        Engine.attach(conn, self.spec, fingerprint=self.fingerprint, log=self.log)

    def _attach(self, conn: psycopg.Connection[Any], partition: int,
                lease: Lease | None) -> Engine:
        return Engine.attach(conn, self.spec, fingerprint=self.fingerprint,
                             signals=self.signals, failures=self.failures, log=self.log,
                             partition=partition, lease=lease)

    @property
    def dispatches_side_effects(self) -> bool:
        """One worker runs a projection's recorded side effects: the holder of
        partition 0 (recording them is fenced with each partition's batch)."""
        return 0 in self.holdings.engines

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

    def _stand_by(self) -> None:
        """Holds no partition: looks again at the next rebalance (or sooner, on a NOTIFY,
        which changes nothing but costs nothing)."""
        self._idle_for(REBALANCE_SECONDS)

    def _wait_for_events(self) -> None:
        """Until a NOTIFY, the next read while the log is busy (``store/following.py``),
        a poll interval (or the next rebalance) or shutdown; a lost NOTIFY costs one
        interval."""
        assert self.conn is not None
        wait = min(self.follow.timeout(self.poll_seconds), REBALANCE_SECONDS)
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

    def _become(self, role: str, *, force: bool = False) -> None:
        if role != self.role or force:
            self.role = role
            self.signals.emit("after_role", role)

    def _stop(self) -> int:
        with contextlib.suppress(psycopg.Error):
            self.holdings.release_all(self.conn)  # the next owner need not wait a lease
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
        worker = Worker(url, spec, shutdown, poll_seconds=args.poll_seconds)
        heap.settle()
        return worker.run()
    except (ConfigurationError, KeyError) as e:
        # Restarting cannot fix a configuration: the supervisor does not restart it.
        log.error("cannot run: configuration error", error=str(e.args[0] if e.args else e))
        return EXIT_CONFIG
    except AuraError as e:
        log.error("cannot run", error=str(e))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
