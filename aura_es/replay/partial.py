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

from aura_es.catalog.model import ProjectionSpec
from aura_es.errors import ConfigurationError
from aura_es.projection import dlq
from aura_es.projection.engine import serving
from aura_es.projection.engine.engine import Engine
from aura_es.projection.engine.loading import build
from aura_es.projection.state import checkpoints
from aura_es.replay import claim
from aura_es.store import eventlog, partitioning
from aura_es.store.envelope import EventEnvelope

CHUNK_AGGREGATES = 500


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
    return eventlog.aggregates_in_range(
        conn, spec.source_events, from_position=from_position, to_position=to_position,
        since=since, until=until,
    )


def events_of(
    cur: psycopg.Cursor[Any], spec: ProjectionSpec, aggregate_ids: Sequence[UUID],
    upto: eventlog.Cursor,
) -> list[EventEnvelope]:
    return eventlog.events_of_aggregates(cur, aggregate_ids, spec.source_events, upto)


def _live_events(
    cur: psycopg.Cursor[Any], spec: ProjectionSpec, ids: list[UUID], cursor: eventlog.Cursor,
) -> list[EventEnvelope]:
    """The events the live read model holds of ``ids``: each up to its own partition's
    cursor when the projection is split."""
    rows = checkpoints.rows_of(cur, spec.name)
    if len(rows) <= 1:
        return events_of(cur, spec, ids, cursor)
    by_partition: dict[int, list[UUID]] = {}
    for aggregate_id in ids:
        by_partition.setdefault(partitioning.partition_of(aggregate_id, len(rows)),
                                []).append(aggregate_id)
    events = [e for p, group in by_partition.items()
              for e in events_of(cur, spec, group, rows[p].cursor)]
    return sorted(events, key=lambda e: (e.transaction, e.position))


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
        with conn.cursor() as cur:
            if not serving.current(cur, spec).exists:
                raise ConfigurationError(
                    f"projection {spec.name!r} has no read model yet: run `aura-es workers run`")
        # The claim keeps rebuilds away, so the generation serving now serves throughout.
        engine = Engine.attach(conn, spec)
        for start in range(0, len(aggregate_ids), chunk):
            ids = list(aggregate_ids[start:start + chunk])
            with conn.transaction(), conn.cursor() as cur:
                n, upto, r, k = _replay_chunk(cur, engine, ids)
            events, resolved, skipped = events + n, resolved + r, skipped + k
            if on_progress is not None:
                on_progress(start + len(ids), len(aggregate_ids))
    finally:
        claim.release(conn, spec.name)
    return PartialResult(spec.name, len(aggregate_ids) - skipped, events, upto, resolved,
                         time.perf_counter() - started, skipped)


def _replay_chunk(
    cur: psycopg.Cursor[Any], engine: Engine, ids: list[UUID]
) -> tuple[int, int, int, int]:
    spec = engine.spec
    live = serving.current(cur, spec, lock=True)  # the live workers wait meanwhile
    events = _live_events(cur, spec, ids, live.cursor)
    # An aggregate with an event that does not decode keeps its rows and its dead
    # letter: its events cannot all be folded, so its rows are left as the live worker
    # made them.
    broken = {e.aggregate_id for e in events if e.undecodable is not None}
    if broken:
        ids = [i for i in ids if i not in broken]
        events = [e for e in events if e.aggregate_id not in broken]
    engine.refold(cur, ids, events)
    chosen = set(ids)
    letters = [
        letter_id
        for aggregate, letter_id in dlq.parked_aggregates(cur, spec.name).items()
        if aggregate in chosen
    ]
    newly_applied = sum(
        dlq.resolve(cur, letter_id, "resolved by a partial replay") for letter_id in letters
    )
    checkpoints.count_applied(cur, spec.name, newly_applied)
    return len(events), live.position, len(letters), len(broken)
