"""What `aura-es status` reports: per projection, where it is and who is running it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from aura_es.catalog.model import ProjectionSpec
from aura_es.mirror.progress import PROGRESS
from aura_es.projection import dlq
from aura_es.projection.loading import fingerprint
from aura_es.projection.tables import CHECKPOINTS, WORKERS
from aura_es.replay.generations import BUILDING, REBUILDS
from aura_es.store.recorder import EVENTS_TABLE
from aura_es.store.schema import EVENT_TIME_FUNCTION

#: A worker whose heartbeat is older than this is taken for dead.
ALIVE_SECONDS = 5
_LAG_CAP = 1_000_000

_LAG = sql.SQL(
    "SELECT (SELECT count(*) FROM (SELECT 1 FROM {e} WHERE notification_id > %(cp)s"
    "   AND topic = ANY(%(topics)s) LIMIT %(cap)s) AS pending),"
    " (SELECT {time}(state) FROM {e}"
    "   WHERE notification_id > %(cp)s AND topic = ANY(%(topics)s)"
    "   ORDER BY notification_id LIMIT 1)"
).format(e=sql.Identifier(EVENTS_TABLE), time=sql.Identifier(EVENT_TIME_FUNCTION))


def projection_status(
    conn: psycopg.Connection[Any], specs: Sequence[ProjectionSpec]
) -> list[dict[str, Any]]:
    head_row = conn.execute(
        sql.SQL("SELECT coalesce(max(notification_id), 0), now() FROM {}").format(
            sql.Identifier(EVENTS_TABLE)
        )
    ).fetchone()
    assert head_row is not None
    head, now = int(head_row[0]), head_row[1]
    checkpoints = {
        row[0]: row[1:]
        for row in conn.execute(sql.SQL(
            "SELECT projection, position, events_applied, fingerprint, updated_at, generation"
            " FROM {}"
        ).format(sql.Identifier(CHECKPOINTS)))
    }
    rebuilds = {
        row[0]: {"generation": row[1], "position": row[2], "events_applied": row[3]}
        for row in conn.execute(sql.SQL(
            "SELECT r.projection, r.generation, coalesce(c.position, 0),"
            " coalesce(c.events_applied, 0) FROM {r} r LEFT JOIN {c} c"
            " ON c.projection = r.projection || '@g' || r.generation WHERE r.status = %s"
        ).format(r=sql.Identifier(REBUILDS), c=sql.Identifier(CHECKPOINTS)), (BUILDING,))
    }
    workers: dict[str, list[tuple[Any, ...]]] = {}
    for row in conn.execute(sql.SQL(
        "SELECT projection, role, pid, host, events_per_second, last_error, last_error_at,"
        " heartbeat_at > now() - make_interval(secs => %s), breaker,"
        " greatest(0, extract(epoch FROM next_probe_at - now()))::float FROM {}"
        " ORDER BY started_at"
    ).format(sql.Identifier(WORKERS)), (ALIVE_SECONDS,)):
        workers.setdefault(row[0], []).append(row[1:])
    with conn.cursor() as cur:
        dead = dlq.depth(cur)
    return [
        _one(conn, spec, head, now, checkpoints.get(spec.name), workers.get(spec.name, []),
             dead.get(spec.name)) | {"rebuild": rebuilds.get(spec.name)}
        for spec in specs
    ]


def _one(
    conn: psycopg.Connection[Any], spec: ProjectionSpec, head: int, now: datetime,
    checkpoint: tuple[Any, ...] | None, workers: list[tuple[Any, ...]],
    dead: tuple[int, int, datetime | None] | None,
) -> dict[str, Any]:
    position, applied, built_by, updated_at, generation = checkpoint or (0, 0, None, None, 1)
    lag_row = conn.execute(
        _LAG, {"cp": position, "topics": list(spec.source_events), "cap": _LAG_CAP}
    ).fetchone()
    assert lag_row is not None
    lag_events, oldest = int(lag_row[0]), lag_row[1]
    alive = [w for w in workers if w[6]]
    active = next((w for w in alive if w[0] in ("active", "paused")), None)
    # A worker whose breaker is open and whose connection is gone is waiting for its
    # probe: alive, and about to try again, not stopped.
    waiting = next((w for w in alive if w[0] == "waiting"), None)
    shown = active or waiting
    if active:
        state = "paused" if active[0] == "paused" else "running"
    elif waiting:
        state = "breaker_open"
    else:
        state = "standby" if alive else "stopped"
    letters, parked, oldest_failure = dead or (0, 0, None)
    errors = [w for w in workers if w[4] and w[5]]
    last_error = max(errors, key=lambda w: w[5]) if errors else None
    current = fingerprint(spec)
    return {
        "projection": spec.name,
        "storage": spec.storage,
        "generation": generation,
        "state": state,
        "checkpoint": position,
        "head": head,
        "lag_events": lag_events,
        "lag_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
        "events_applied": applied,
        "events_per_second": round(active[3], 1) if active else 0.0,
        "pid": active[1] if active else None,
        "host": active[2] if active else None,
        "standbys": sum(1 for w in alive if w[0] == "standby"),
        "breaker": shown[7] if shown else None,
        "next_probe_seconds": (
            round(shown[8], 1) if shown and shown[7] == "open" and shown[8] is not None
            else None
        ),
        "dead_letters": letters,
        "parked_events": parked,
        "oldest_dead_letter_seconds": (
            round((now - oldest_failure).total_seconds(), 1) if oldest_failure else None
        ),
        "last_error": last_error[4] if last_error else None,
        "last_error_at": last_error[5].isoformat() if last_error else None,
        "updated_at": updated_at.isoformat() if updated_at else None,
        "fingerprint": current,
        "drift": built_by is not None and built_by != current,
    }


def mirror_status(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Per mirrored stream: the last position the relay confirmed, and its lag."""
    rows = conn.execute(sql.SQL(
        "SELECT p.stream, p.position, p.stream_seq, p.updated_at, now(),"
        " (SELECT count(*) FROM {e} e WHERE e.notification_id > p.position),"
        " (SELECT {time}(state) FROM {e} e"
        "   WHERE e.notification_id > p.position ORDER BY e.notification_id LIMIT 1)"
        " FROM {p} p ORDER BY p.stream"
    ).format(e=sql.Identifier(EVENTS_TABLE), p=sql.Identifier(PROGRESS),
             time=sql.Identifier(EVENT_TIME_FUNCTION))).fetchall()
    return [
        {
            "stream": stream, "position": position, "stream_seq": seq,
            "lag_events": int(lag), "lag_seconds": (
                round((now - oldest).total_seconds(), 3) if oldest else 0.0
            ),
            "updated_at": updated.isoformat(),
        }
        for stream, position, seq, updated, now, lag, oldest in rows
    ]
