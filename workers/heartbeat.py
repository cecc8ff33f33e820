"""A worker's row in the workers table: who runs a projection, in which role, how fast,
its breaker and its last error; what `aura-es status` and `/health` read.

Written at most once a second on the worker's own connection. While that connection is
gone (the database restarted, the breaker is open and waiting), a small side connection
keeps the row fresh whenever the database answers, so the worker is reported as
"breaker open, next probe in N s" rather than "stopped".
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from aura_es.application import connect
from aura_es.errors import AuraError
from aura_es.projection.tables import WORKERS

HEARTBEAT_SECONDS = 1.0
#: How often a worker without a connection tries to open its side connection.
SIDE_RETRY_SECONDS = 5.0

_UPSERT = sql.SQL(
    "INSERT INTO {t} (worker_id, projection, host, pid, role, breaker, next_probe_at,"
    " events_per_second, last_error, last_error_at) VALUES (%s, %s, %s, %s, %s, %s,"
    " now() + make_interval(secs => %s), %s, %s,"
    " CASE WHEN %s::text IS NULL THEN NULL ELSE now() END)"
    " ON CONFLICT (worker_id) DO UPDATE SET role = EXCLUDED.role,"
    " breaker = EXCLUDED.breaker, next_probe_at = EXCLUDED.next_probe_at,"
    " heartbeat_at = now(), events_per_second = EXCLUDED.events_per_second,"
    " last_error = coalesce(EXCLUDED.last_error, {t}.last_error),"
    " last_error_at = coalesce(EXCLUDED.last_error_at, {t}.last_error_at)"
).format(t=sql.Identifier(WORKERS))


@dataclass(frozen=True)
class Beat:
    role: str
    breaker: str
    #: Seconds until the open breaker lets a probe through (None when it is not open).
    next_probe_seconds: float | None
    events_per_second: float
    error: str | None


class Heartbeat:
    def __init__(self, database_url: str, worker_id: str, projection: str) -> None:
        self.database_url = database_url
        self.worker_id = worker_id
        self.projection = projection
        self._last = 0.0
        self._side: psycopg.Connection[Any] | None = None
        self._side_tried = 0.0

    def due(self, force: bool = False) -> bool:
        return force or time.monotonic() - self._last >= HEARTBEAT_SECONDS

    def beat(self, conn: psycopg.Connection[Any] | None, beat: Beat) -> bool:
        """Writes the row; True when it was written (the caller's error is then kept)."""
        target = conn if conn is not None and not conn.broken else self._side_connection()
        if target is None:
            return False
        self._last = time.monotonic()
        try:
            target.execute(_UPSERT, (
                self.worker_id, self.projection, socket.gethostname(), os.getpid(), beat.role,
                beat.breaker, beat.next_probe_seconds, beat.events_per_second, beat.error,
                beat.error,
            ))
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
                target.execute(sql.SQL("DELETE FROM {t} WHERE worker_id = %s").format(
                    t=sql.Identifier(WORKERS)), (self.worker_id,))
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

    def _close_side(self) -> None:
        if self._side is not None:
            with contextlib.suppress(psycopg.Error):
                self._side.close()
            self._side = None
