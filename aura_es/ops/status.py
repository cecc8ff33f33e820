"""What `aura-es status` reports: per projection, where it is and who is running it; per
mirrored stream, how far behind it is. Read from the tables' owners, never from workers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from aura_es.catalog.model import ProjectionSpec
from aura_es.mirror import progress
from aura_es.projection import dlq
from aura_es.projection.engine.loading import fingerprint
from aura_es.projection.state import checkpoints, outbox, presence
from aura_es.replay import generations
from aura_es.store import eventlog
from aura_es.store.partitioning import Partition

#: Lag is counted up to this many events (a count of millions costs a scan).
_LAG_CAP = 1_000_000


def projection_status(
    conn: psycopg.Connection[Any], specs: Sequence[ProjectionSpec]
) -> list[dict[str, Any]]:
    head = eventlog.head(conn)
    now = _now(conn)
    stored = checkpoints.every(conn)
    building = generations.in_progress(conn)
    workers = presence.every(conn)
    with conn.cursor() as cur:
        dead = dlq.depth(cur)
    effects = outbox.counts(conn)
    rows = []
    for spec in specs:
        rebuild = None
        if spec.name in building:
            generation = building[spec.name]
            shadow = stored.get(generations.shadow_checkpoint(spec, generation))
            rebuild = {"generation": generation,
                       "position": shadow.position if shadow else 0,
                       "events_applied": shadow.events_applied if shadow else 0}
        pending = effects.get(spec.name, {})
        rows.append(_one(conn, spec, head, now, stored.get(spec.name),
                         workers.get(spec.name, []), dead.get(spec.name))
                    | {"rebuild": rebuild,
                       "side_effects_pending": pending.get(outbox.PENDING, 0),
                       "side_effects_dead": pending.get(outbox.DEAD, 0)})
    return rows


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _one(
    conn: psycopg.Connection[Any], spec: ProjectionSpec, head: int, now: datetime,
    checkpoint: checkpoints.Checkpoint | None, workers: list[presence.Worker],
    dead: tuple[int, int, datetime | None] | None,
) -> dict[str, Any]:
    position = checkpoint.position if checkpoint else 0
    cursor = checkpoint.cursor if checkpoint else eventlog.ORIGIN
    rows = checkpoints.rows_of(conn, spec.name)
    parts = rows if len(rows) > 1 else []
    if parts:  # each partition's own: their cursors differ
        lag_events = sum(_lag(conn, spec, part) for part in parts)
    else:
        lag_events = eventlog.pending(conn, spec.source_events, cursor, cap=_LAG_CAP)
    # From the cursor every partition has passed: the oldest event one may still lack.
    oldest = eventlog.oldest_time_after(conn, cursor, spec.source_events) if lag_events else None
    alive = [w for w in workers if w.alive]
    alive_ids = {w.worker_id for w in alive}
    active = next((w for w in alive if w.role in ("active", "paused")), None)
    # A worker whose breaker is open and whose connection is gone is waiting for its
    # probe: alive, and about to try again, not stopped.
    waiting = next((w for w in alive if w.role == "waiting"), None)
    shown = active or waiting
    if active:
        state = "paused" if active.role == "paused" else "running"
    elif waiting:
        state = "breaker_open"
    else:
        state = "standby" if alive else "stopped"
    letters, parked, oldest_failure = dead or (0, 0, None)
    errors = [w for w in workers if w.last_error and w.last_error_at]
    last_error = max(errors, key=lambda w: w.last_error_at or now) if errors else None
    current = fingerprint(spec)
    built_by = checkpoint.fingerprint if checkpoint else None
    return {
        "projection": spec.name,
        "storage": spec.storage,
        "generation": checkpoint.generation if checkpoint else 1,
        "state": state,
        "checkpoint": position,
        "head": head,
        "lag_events": lag_events,
        "lag_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
        "events_applied": checkpoint.events_applied if checkpoint else 0,
        "events_per_second": round(active.events_per_second, 1) if active else 0.0,
        "pid": active.pid if active else None,
        "host": active.host if active else None,
        "standbys": sum(1 for w in alive if w.role == "standby"),
        "partitions": checkpoint.partitions if checkpoint else spec.partitions,
        "active_workers": sum(1 for w in alive if w.role in ("active", "paused")),
        # Partitions no live worker holds: waiting for a claim (a lease running out).
        "partitions_unowned": sum(1 for row in rows if row.owner not in alive_ids),
        "breaker": shown.breaker if shown else None,
        "next_probe_seconds": (
            round(shown.next_probe_seconds, 1)
            if shown and shown.breaker == "open" and shown.next_probe_seconds is not None
            else None
        ),
        "dead_letters": letters,
        "parked_events": parked,
        "oldest_dead_letter_seconds": (
            round((now - oldest_failure).total_seconds(), 1) if oldest_failure else None
        ),
        "last_error": last_error.last_error if last_error else None,
        "last_error_at": (
            last_error.last_error_at.isoformat()
            if last_error and last_error.last_error_at else None
        ),
        # False once the worker has done its work since: history, not attention.
        "last_error_current": bool(last_error and last_error.error_current),
        "updated_at": (
            checkpoint.updated_at.isoformat() if checkpoint and checkpoint.updated_at else None
        ),
        "fingerprint": current,
        "drift": built_by is not None and built_by != current,
    }


def _lag(conn: psycopg.Connection[Any], spec: ProjectionSpec,
         part: checkpoints.Checkpoint) -> int:
    return eventlog.pending(conn, spec.source_events, part.cursor, cap=_LAG_CAP,
                            partition=Partition(part.partition, part.partitions))


def partition_status(
    conn: psycopg.Connection[Any], specs: Sequence[ProjectionSpec]
) -> list[dict[str, Any]]:
    """One entry per (projection, partition): its owner (and whether that worker is
    alive), the lease's epoch, its cursor, checkpoint and lag."""
    workers = {w.worker_id: w for ws in presence.every(conn).values() for w in ws}
    rows = []
    for spec in specs:
        for part in checkpoints.rows_of(conn, spec.name):
            owner = workers.get(part.owner) if part.owner else None
            rows.append({
                "projection": spec.name,
                "partition": part.partition,
                "partitions": part.partitions,
                "owner": part.owner,
                "owner_alive": bool(owner and owner.alive),
                "host": owner.host if owner else None,
                "pid": owner.pid if owner else None,
                "epoch": part.epoch,
                "checkpoint": part.position,
                "cursor": [part.cursor.transaction, part.cursor.position],
                "lag_events": _lag(conn, spec, part),
                "events_applied": part.events_applied,
                "updated_at": part.updated_at.isoformat() if part.updated_at else None,
            })
    return rows


#: A horizon held back longer than this is reported (readers wait for it).
HELD_BACK_SECONDS = 5.0


def horizon_status(
    conn: psycopg.Connection[Any], at_least_seconds: float = HELD_BACK_SECONDS,
) -> dict[str, Any]:
    """Whether readers are held back, and by whom: the oldest writing transaction on the
    server (any database), when it is older than ``at_least_seconds``."""
    holder = eventlog.held_back(conn, at_least_seconds)
    return {
        "horizon": eventlog.horizon(conn),
        "held_back": None if holder is None else {
            "pid": holder.pid, "database": holder.database,
            "application_name": holder.application_name,
            "started_at": holder.started_at.isoformat() if holder.started_at else None,
            "seconds": holder.seconds, "kind": holder.kind,
        },
    }


def mirror_status(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Per mirrored stream: the last position the relay confirmed, and its lag."""
    now = _now(conn)
    out = []
    for p in progress.every(conn):
        oldest = eventlog.oldest_time_after(conn, p.cursor)
        out.append({
            "stream": p.stream, "position": p.position, "stream_seq": p.stream_seq,
            "lag_events": eventlog.pending(conn, None, p.cursor),
            "lag_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
            "updated_at": p.updated_at.isoformat(),
        })
    return out
