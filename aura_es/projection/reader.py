"""Reads a projection's next batch: only its topics, after its checkpoint, never past a gap.

Positions are assigned under the recorder's table lock, so commit order is position
order: every position up to the head seen in one snapshot is either visible now or
never will be (a rolled-back insert). Reading ``position > checkpoint`` in one
statement with that head is therefore gap-safe (G3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from aura_es.projection.envelope import EventEnvelope
from aura_es.store.recorder import EVENTS_TABLE

_READ = sql.SQL(
    "WITH head AS (SELECT coalesce(max(notification_id), 0) AS head FROM {events})"
    " SELECT (SELECT head FROM head), e.notification_id, e.originator_id,"
    " e.originator_version, e.topic, e.state"
    " FROM (SELECT 1) AS one LEFT JOIN LATERAL ("
    "   SELECT notification_id, originator_id, originator_version, topic, state FROM {events}"
    "   WHERE notification_id > %(after)s::bigint"
    "     AND notification_id <= %(after)s::bigint + %(window)s::bigint"
    "     AND notification_id <= (SELECT head FROM head) AND topic = ANY(%(topics)s)"
    "   ORDER BY notification_id LIMIT %(limit)s) e ON true"
).format(events=sql.Identifier(EVENTS_TABLE))


# The same gap-safe read over every topic, for the mirror's relay.
READ_ALL = sql.SQL(
    "WITH head AS (SELECT coalesce(max(notification_id), 0) AS head FROM {e})"
    " SELECT notification_id, originator_id, originator_version, topic, state FROM {e}"
    " WHERE notification_id > %s AND notification_id <= (SELECT head FROM head)"
    " ORDER BY notification_id LIMIT %s"
).format(e=sql.Identifier(EVENTS_TABLE))


@dataclass(frozen=True)
class Batch:
    events: Sequence[EventEnvelope]
    #: The position the checkpoint may move to: the last event, or as far as was scanned.
    scanned_to: int
    head: int


def read_batch(
    cur: psycopg.Cursor[Any], after: int, topics: Sequence[str], limit: int, window: int
) -> Batch:
    rows = cur.execute(
        _READ, {"after": after, "window": window, "topics": list(topics), "limit": limit}
    ).fetchall()
    head = int(rows[0][0])
    events = [EventEnvelope.from_row(row[1:]) for row in rows if row[1] is not None]
    if len(events) == limit:
        scanned_to = events[-1].position
    else:
        scanned_to = max(after, min(after + window, head))
    return Batch(events=events, scanned_to=scanned_to, head=head)

# One event by position (the relay checks whether an older message is the store's).
READ_ONE = sql.SQL(
    "SELECT notification_id, originator_id, originator_version, topic, state FROM {e}"
    " WHERE notification_id = %s"
).format(e=sql.Identifier(EVENTS_TABLE))
