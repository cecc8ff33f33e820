"""Who runs each projection: one row per worker process (role, breaker, rate, last error),
kept fresh by its heartbeat; what `aura-es status` and `/health` read.

The only module with SQL on the workers table.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from aura_es.store import owners

TABLE = "aura_projection_workers"
_T = sql.Identifier(TABLE)
#: A worker whose heartbeat is older than this is taken for dead.
ALIVE_SECONDS = 5


def ddl() -> list[sql.Composed | sql.SQL]:
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " worker_id text PRIMARY KEY,"
            " projection text NOT NULL,"
            " host text NOT NULL,"
            " pid integer NOT NULL,"
            " role text NOT NULL,"
            " started_at timestamptz NOT NULL DEFAULT now(),"
            " heartbeat_at timestamptz NOT NULL DEFAULT now(),"
            " events_per_second double precision NOT NULL DEFAULT 0,"
            " last_error text,"
            " last_error_at timestamptz)"
        ).format(t=_T),
        # Added after the first release (`db init` upgrades in place).
        sql.SQL(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS breaker text NOT NULL DEFAULT 'closed'"
        ).format(t=_T),
        # When an open breaker lets its next probe through (NULL when it is not open).
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS next_probe_at timestamptz").format(
            t=_T),
        # When the worker last did its work without an error: an error older than this
        # is history (shown by --wide and --json), not something that needs attention.
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS healthy_at timestamptz").format(
            t=_T),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (projection)").format(
            i=sql.Identifier(f"{TABLE}_projection_idx"), t=_T),
    ]


OWNER = owners.Owner("worker presence", ddl, (TABLE,), columns=(f"{TABLE}.healthy_at",))


@dataclass(frozen=True)
class Beat:
    role: str
    breaker: str
    #: Seconds until the open breaker lets a probe through (None when it is not open).
    next_probe_seconds: float | None
    events_per_second: float
    error: str | None
    #: The worker has just done its work (a batch committed, or nothing new to read).
    healthy: bool = False


_UPSERT = sql.SQL(
    "INSERT INTO {t} (worker_id, projection, host, pid, role, breaker, next_probe_at,"
    " events_per_second, last_error, last_error_at, healthy_at) VALUES (%s, %s, %s, %s,"
    " %s, %s, now() + make_interval(secs => %s), %s, %s,"
    " CASE WHEN %s::text IS NULL THEN NULL ELSE now() END,"
    " CASE WHEN %s AND %s::text IS NULL THEN now() END)"
    " ON CONFLICT (worker_id) DO UPDATE SET role = EXCLUDED.role,"
    " breaker = EXCLUDED.breaker, next_probe_at = EXCLUDED.next_probe_at,"
    " heartbeat_at = now(), events_per_second = EXCLUDED.events_per_second,"
    " last_error = coalesce(EXCLUDED.last_error, {t}.last_error),"
    " last_error_at = coalesce(EXCLUDED.last_error_at, {t}.last_error_at),"
    " healthy_at = coalesce(EXCLUDED.healthy_at, {t}.healthy_at)"
).format(t=_T)


def beat(conn: psycopg.Connection[Any], worker_id: str, projection: str, b: Beat) -> None:
    conn.execute(_UPSERT, (
        worker_id, projection, socket.gethostname(), os.getpid(), b.role, b.breaker,
        b.next_probe_seconds, b.events_per_second, b.error, b.error, b.healthy, b.error,
    ))


def pulse(conn: psycopg.Connection[Any], worker_id: str) -> None:
    """Only "this process is alive": sent beside the loop, so a worker busy in one long
    step (slow side effects, a slow handler) is not taken for dead."""
    conn.execute(sql.SQL("UPDATE {t} SET heartbeat_at = now() WHERE worker_id = %s")
                 .format(t=_T), (worker_id,))


def leave(conn: psycopg.Connection[Any], worker_id: str) -> None:
    conn.execute(sql.SQL("DELETE FROM {t} WHERE worker_id = %s").format(t=_T), (worker_id,))


@dataclass(frozen=True)
class Worker:
    projection: str
    role: str
    pid: int
    host: str
    events_per_second: float
    last_error: str | None
    last_error_at: datetime | None
    alive: bool
    breaker: str
    next_probe_seconds: float | None
    #: Its last error came after its last healthy step: it still needs attention.
    error_current: bool = False
    worker_id: str = ""


def every(conn: psycopg.Connection[Any]) -> dict[str, list[Worker]]:
    """Per projection, its workers, oldest first."""
    workers: dict[str, list[Worker]] = {}
    for row in conn.execute(sql.SQL(
        "SELECT projection, role, pid, host, events_per_second, last_error, last_error_at,"
        " heartbeat_at > now() - make_interval(secs => %s), breaker,"
        " greatest(0, extract(epoch FROM next_probe_at - now()))::float,"
        " last_error_at IS NOT NULL AND last_error_at >= coalesce(healthy_at, '-infinity'),"
        " worker_id FROM {t}"
        " ORDER BY started_at"
    ).format(t=_T), (ALIVE_SECONDS,)):
        workers.setdefault(row[0], []).append(Worker(*row))
    return workers


def active_pids(conn: psycopg.Connection[Any], projection: str) -> list[int]:
    return [row[0] for row in conn.execute(
        sql.SQL("SELECT pid FROM {t} WHERE projection = %s AND role = 'active'"
                " AND heartbeat_at > now() - make_interval(secs => %s)").format(t=_T),
        (projection, ALIVE_SECONDS),
    )]


#: The session lock a worker holds while its connection lives: a member whose session
#: died (SIGKILL, a lost host) is dead at once, without waiting out its heartbeat.
MEMBER_LOCK = "aura.worker:"


@dataclass(frozen=True, order=True)
class Member:
    """A live worker of a projection, in the order partitions are dealt: oldest first."""

    started_at: datetime
    worker_id: str


def members(conn: psycopg.Connection[Any], projection: str, lease_seconds: float) -> list[Member]:
    """The workers of ``projection`` that are alive: a heartbeat within the lease, and
    their session (which holds ``MEMBER_LOCK`` + id) still open on this server."""
    return [Member(row[0], row[1]) for row in conn.execute(sql.SQL(
        "SELECT started_at, worker_id FROM {t} w WHERE projection = %s"
        " AND heartbeat_at > now() - make_interval(secs => %s)"
        " AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
        "  AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database"
        "   WHERE datname = current_database())"
        "  AND ((l.classid::bigint << 32) | l.objid::bigint)"
        "   = hashtextextended(%s || w.worker_id, 0))"
        " ORDER BY started_at, worker_id"
    ).format(t=_T), (projection, lease_seconds, MEMBER_LOCK))]
