"""Partial replay: rebuild the rows of some aggregates in the live read model, in place.

For projections whose rows are each made by one aggregate. Per chunk of aggregates, one
transaction holds the live checkpoint row (so the live worker waits), deletes those
aggregates' rows, and folds their events up to the checkpoint again. Every other row is
left untouched. Dead letters of a replayed aggregate are resolved: its events, parked
ones included, are all in the read model afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from aura_es.catalog.model import ProjectionSpec
from aura_es.errors import ConfigurationError
from aura_es.projection import dlq
from aura_es.projection.api import Tx
from aura_es.projection.envelope import EventEnvelope
from aura_es.projection.loading import build
from aura_es.projection.tables import CHECKPOINTS
from aura_es.replay import claim, generations
from aura_es.store.recorder import EVENTS_TABLE
from aura_es.store.schema import EVENT_TIME_FUNCTION

CHUNK_AGGREGATES = 500
_E = sql.Identifier(EVENTS_TABLE)
_TIMESTAMP = sql.SQL("{}(state)").format(sql.Identifier(EVENT_TIME_FUNCTION))


@dataclass(frozen=True)
class PartialResult:
    projection: str
    aggregates: int
    events: int
    upto_position: int
    dead_letters_resolved: int
    seconds: float
    #: Aggregates left as they were: one of their events does not decode.
    skipped_undecodable: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "projection": self.projection, "aggregates": self.aggregates,
            "events": self.events, "upto_position": self.upto_position,
            "dead_letters_resolved": self.dead_letters_resolved,
            "seconds": round(self.seconds, 3),
            "skipped_undecodable": self.skipped_undecodable,
        }


def refusal(spec: ProjectionSpec) -> str | None:
    """Why ``spec`` cannot be replayed partially, or None."""
    return build(spec).partial_replay_refusal()


def aggregates_in_range(
    conn: psycopg.Connection[Any], spec: ProjectionSpec, *,
    from_position: int | None = None, to_position: int | None = None,
    since: datetime | None = None, until: datetime | None = None,
) -> list[UUID]:
    """The aggregates with events of ``spec``'s topics in the range, first seen first."""
    conditions: list[sql.Composable] = [sql.SQL("topic = ANY(%s)")]
    params: list[Any] = [list(spec.source_events)]
    for column, op, value in (
        (sql.SQL("notification_id"), ">=", from_position),
        (sql.SQL("notification_id"), "<=", to_position),
        (_TIMESTAMP, ">=", since),
        (_TIMESTAMP, "<", until),
    ):
        if value is not None:
            conditions.append(sql.SQL("{} " + op + " %s").format(column))
            params.append(value)
    rows = conn.execute(
        sql.SQL(
            "SELECT originator_id FROM {e} WHERE {w} GROUP BY originator_id"
            " ORDER BY min(notification_id)"
        ).format(e=_E, w=sql.SQL(" AND ").join(conditions)),
        params,
    ).fetchall()
    return [row[0] for row in rows]


def events_of(
    cur: psycopg.Cursor[Any], spec: ProjectionSpec, aggregate_ids: Sequence[UUID], upto: int
) -> list[EventEnvelope]:
    rows = cur.execute(
        sql.SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {e}"
            " WHERE originator_id = ANY(%s) AND topic = ANY(%s) AND notification_id <= %s"
            " ORDER BY notification_id"
        ).format(e=_E),
        (list(aggregate_ids), list(spec.source_events), upto),
    ).fetchall()
    return [EventEnvelope.from_row(row) for row in rows]


def replay_aggregates(
    conn: psycopg.Connection[Any], spec: ProjectionSpec, aggregate_ids: Sequence[UUID], *,
    on_progress: Callable[[int, int], None] | None = None,
    chunk: int = CHUNK_AGGREGATES,
) -> PartialResult:
    """Rebuilds these aggregates' rows; ``on_progress(aggregates_done, total)``."""
    reason = refusal(spec)
    if reason:
        raise ConfigurationError(reason)
    started = time.perf_counter()
    claim.claim(conn, spec.name, "partial replay")
    events = resolved = skipped = 0
    upto = 0
    try:
        for start in range(0, len(aggregate_ids), chunk):
            ids = list(aggregate_ids[start:start + chunk])
            with conn.transaction(), conn.cursor() as cur:
                n, upto, r, k = _replay_chunk(cur, spec, ids)
            events, resolved, skipped = events + n, resolved + r, skipped + k
            if on_progress is not None:
                on_progress(start + len(ids), len(aggregate_ids))
    finally:
        claim.release(conn, spec.name)
    return PartialResult(spec.name, len(aggregate_ids) - skipped, events, upto, resolved,
                         time.perf_counter() - started, skipped)


def _replay_chunk(
    cur: psycopg.Cursor[Any], spec: ProjectionSpec, ids: list[UUID]
) -> tuple[int, int, int, int]:
    live = generations.live(cur, spec, lock=True)
    if not live.exists:
        raise ConfigurationError(
            f"projection {spec.name!r} has no read model yet: run `aura-es workers run`"
        )
    projection = build(spec, live.storage)
    events = events_of(cur, spec, ids, live.position)
    # An aggregate with an event that does not decode keeps its rows and its dead
    # letter: its events cannot all be folded, so its rows are left as the live worker
    # made them.
    broken = {e.aggregate_id for e in events if e.undecodable is not None}
    if broken:
        ids = [i for i in ids if i not in broken]
        events = [e for e in events if e.aggregate_id not in broken]
    tx = Tx(cur, replaying=True)
    projection.forget(tx, ids)
    for start in range(0, len(events), spec.batch_size):
        projection.handle(events[start:start + spec.batch_size], tx)
    chosen = set(ids)
    letters = [
        letter_id
        for aggregate, letter_id in dlq.parked_aggregates(cur, spec.name).items()
        if aggregate in chosen
    ]
    newly_applied = 0
    for letter_id in letters:
        letter = dlq.get(cur, letter_id, lock=True)
        assert letter is not None
        newly_applied += 1 + len(letter["parked_positions"])
        cur.execute(sql.SQL("DELETE FROM {t} WHERE dead_letter_id = %s").format(
            t=sql.Identifier(dlq.PARKED)), (letter_id,))
        dlq.close(cur, letter_id, dlq.RESOLVED, "resolved by a partial replay")
    if newly_applied:
        cur.execute(
            sql.SQL("UPDATE {t} SET events_applied = events_applied + %s WHERE projection = %s")
            .format(t=sql.Identifier(CHECKPOINTS)), (newly_applied, spec.name),
        )
    return len(events), live.position, len(letters), len(broken)
