"""One projection worker process: stand by for the projection's lock, then apply batches.

Run by the supervisor as ``python -m workers.worker --projection NAME``. Exit status:
0 after a graceful stop, 3 when another worker took the projection over (the
supervisor restarts it at once, as a standby), 1 on anything else.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import sys
import threading
import time
import uuid

import psycopg
from psycopg import sql

from aura_es.application import connect
from aura_es.catalog import load_catalog
from aura_es.catalog.model import ProjectionSpec
from aura_es.errors import AuraError
from aura_es.log import get_logger
from aura_es.projection.loading import build, fingerprint
from aura_es.projection.runner import BatchRunner, LostOwnership, Step
from aura_es.projection.tables import WORKERS
from aura_es.settings import Settings
from aura_es.store.recorder import EVENTS_TABLE
from workers.shutdown import Shutdown
from workers.standby import wait_for_lock

EXIT_OK, EXIT_FAILED, EXIT_TAKEN_OVER = 0, 1, 3
HEARTBEAT_SECONDS = 1.0


class Worker:
    def __init__(
        self, database_url: str, spec: ProjectionSpec, shutdown: Shutdown,
        *, poll_seconds: float = 1.0,
    ) -> None:
        self.database_url = database_url
        self.spec = spec
        self.shutdown = shutdown
        self.poll_seconds = poll_seconds
        self.projection = build(spec)
        self.fingerprint = fingerprint(spec)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.log = get_logger(projection=spec.name, worker_id=self.worker_id)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._last_beat = 0.0
        self._role = "standby"
        self._error: str | None = None
        self._woken = threading.Event()

    def run(self) -> int:
        with connect(self.database_url) as conn:
            self.conn = conn
            self._beat(force=True)
            self.log.info("standing by for the projection lock")
            if not wait_for_lock(conn, self.spec.name, self.shutdown, while_waiting=self._beat):
                return self._leave()
            self._role = "active"
            self._beat(force=True)
            runner = BatchRunner(conn, self.spec, self.projection, fingerprint=self.fingerprint)
            self.log.info("active", position=runner.position)
            # A NOTIFY that arrives while a batch runs is delivered to this handler during
            # that batch's queries; the flag keeps it from being lost before the next wait.
            conn.add_notify_handler(lambda _: self._woken.set())
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_TABLE)))
            failures = 0
            while not self.shutdown.requested:
                self._woken.clear()
                try:
                    step = runner.step()
                except LostOwnership as e:
                    self.log.warning("taken over", reason=str(e))
                    return EXIT_TAKEN_OVER
                except psycopg.OperationalError:
                    raise
                except Exception as e:
                    failures += 1
                    self._error = f"{type(e).__name__}: {e}"
                    self.log.error("batch failed", error=self._error, position=runner.position,
                                   attempt=failures)
                    self._beat(force=True)
                    self.shutdown.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
                    continue
                failures = 0
                self._count(step)
                self._beat()
                if step.caught_up:
                    self._wait_for_events()
            self.log.info("stopped", position=runner.position, signal=self.shutdown.signal_name)
            return self._leave()

    def _wait_for_events(self) -> None:
        """Until a NOTIFY, a poll interval or shutdown; a lost NOTIFY costs one interval."""
        deadline = time.monotonic() + self.poll_seconds
        while not self.shutdown.requested and not self._woken.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in self.conn.notifies(timeout=min(left, 0.25), stop_after=1):
                return
            self._beat()

    def _count(self, step: Step) -> None:
        now = time.monotonic()
        self._recent.append((now, step.applied))
        while self._recent and self._recent[0][0] < now - 5:
            self._recent.popleft()

    def _rate(self) -> float:
        if not self._recent:
            return 0.0
        span = max(1.0, time.monotonic() - self._recent[0][0])
        return sum(n for _, n in self._recent) / span

    def _beat(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._last_beat = now
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {t} (worker_id, projection, host, pid, role, events_per_second,"
                " last_error, last_error_at) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                " CASE WHEN %s::text IS NULL THEN NULL ELSE now() END)"
                " ON CONFLICT (worker_id) DO UPDATE SET role = EXCLUDED.role,"
                " heartbeat_at = now(), events_per_second = EXCLUDED.events_per_second,"
                " last_error = coalesce(EXCLUDED.last_error, {t}.last_error),"
                " last_error_at = coalesce(EXCLUDED.last_error_at, {t}.last_error_at)"
            ).format(t=sql.Identifier(WORKERS)),
            (self.worker_id, self.spec.name, socket.gethostname(), os.getpid(), self._role,
             self._rate(), self._error, self._error),
        )
        self._error = None

    def _leave(self) -> int:
        self.conn.execute(
            sql.SQL("DELETE FROM {t} WHERE worker_id = %s").format(t=sql.Identifier(WORKERS)),
            (self.worker_id,),
        )
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.worker")
    parser.add_argument("--projection", required=True)
    parser.add_argument("--catalog", default="catalog/projection-catalog.yaml")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    shutdown = Shutdown().install()
    try:
        url = args.database_url or Settings().resolved_database_url()
        spec = load_catalog(args.catalog).get(args.projection)
        return Worker(url, spec, shutdown, poll_seconds=args.poll_seconds).run()
    except (AuraError, KeyError) as e:
        get_logger(projection=args.projection).error("cannot run", error=str(e))
        return EXIT_FAILED
    except psycopg.OperationalError as e:
        get_logger(projection=args.projection).error("database connection lost", error=str(e))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
