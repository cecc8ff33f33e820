"""The event log's reads: every statement against the events and idempotency-key tables,
except the append itself (``recorder.py``), is here; everyone else calls these functions.

Gap safety (G3): positions are assigned under the recorder's table lock, so commit order
is position order, and every position up to the head seen in one snapshot is either
visible now or never will be (a rolled-back insert). A read of ``position > after`` up to
that head, in one statement, therefore never skips an event that commits later.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from aura_es.store import schema
from aura_es.store.envelope import EventEnvelope
from aura_es.store.idempotency import TABLE as KEYS_TABLE
from aura_es.store.recorder import EVENTS_TABLE

#: The channel the recorder NOTIFYs on every append (and a replay's switch).
CHANNEL = EVENTS_TABLE
#: Recorded time of an event from its stored JSON; NULL when the row does not decode.
EVENT_TIME_FUNCTION = "aura_event_time"

_E = sql.Identifier(EVENTS_TABLE)
_K = sql.Identifier(KEYS_TABLE)
_TIME = sql.Identifier(EVENT_TIME_FUNCTION)
_ROW = sql.SQL("notification_id, originator_id, originator_version, topic, state")


def ddl() -> list[sql.Composed | sql.SQL]:
    """What the log needs beyond the recorder's tables (which the library creates)."""
    return [sql.SQL(
        "CREATE OR REPLACE FUNCTION {f}(state bytea) RETURNS timestamptz"
        " LANGUAGE plpgsql STABLE PARALLEL SAFE AS $body$"
        " BEGIN RETURN (convert_from(state, 'UTF8')::jsonb ->> 'timestamp')::timestamptz;"
        " EXCEPTION WHEN others THEN RETURN NULL; END $body$"
    ).format(f=_TIME)]


OWNER = schema.Owner("the event log", ddl, (EVENTS_TABLE, KEYS_TABLE), (EVENT_TIME_FUNCTION,))


# -- tailing the log ---------------------------------------------------------------------

_READ_BATCH = sql.SQL(
    "WITH head AS (SELECT coalesce(max(notification_id), 0) AS head FROM {e})"
    " SELECT (SELECT head FROM head), e.notification_id, e.originator_id,"
    " e.originator_version, e.topic, e.state"
    " FROM (SELECT 1) AS one LEFT JOIN LATERAL ("
    "   SELECT notification_id, originator_id, originator_version, topic, state FROM {e}"
    "   WHERE notification_id > %(after)s::bigint"
    "     AND notification_id <= %(after)s::bigint + %(window)s::bigint"
    "     AND notification_id <= (SELECT head FROM head) AND topic = ANY(%(topics)s)"
    "   ORDER BY notification_id LIMIT %(limit)s) e ON true"
).format(e=_E)

_READ_ALL = sql.SQL(
    "WITH head AS (SELECT coalesce(max(notification_id), 0) AS head FROM {e})"
    " SELECT {row} FROM {e}"
    " WHERE notification_id > %s AND notification_id <= (SELECT head FROM head)"
    " ORDER BY notification_id LIMIT %s"
).format(e=_E, row=_ROW)

_READ_ONE = sql.SQL("SELECT {row} FROM {e} WHERE notification_id = %s").format(e=_E, row=_ROW)
_HEAD = sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {e}").format(e=_E)


@dataclass(frozen=True)
class Batch:
    events: Sequence[EventEnvelope]
    #: The position a checkpoint may move to: the last event, or as far as was scanned.
    scanned_to: int
    head: int


def read_batch(
    cur: psycopg.Cursor[Any], after: int, topics: Sequence[str], limit: int, window: int
) -> Batch:
    """At most ``limit`` events of ``topics`` after ``after``, scanning at most ``window``
    positions ahead, so a projection of rare topics still moves its checkpoint."""
    rows = cur.execute(
        _READ_BATCH, {"after": after, "window": window, "topics": list(topics), "limit": limit}
    ).fetchall()
    head = int(rows[0][0])
    events = [EventEnvelope.from_row(row[1:]) for row in rows if row[1] is not None]
    if len(events) == limit:
        scanned_to = events[-1].position
    else:
        scanned_to = max(after, min(after + window, head))
    return Batch(events=events, scanned_to=scanned_to, head=head)


async def read_all_after(
    conn: psycopg.AsyncConnection[Any], after: int, limit: int
) -> list[EventEnvelope]:
    """The next ``limit`` events of every topic (the mirror's read)."""
    cur = await conn.execute(_READ_ALL, (after, limit))
    return [EventEnvelope.from_row(row) for row in await cur.fetchall()]


async def read_one(conn: psycopg.AsyncConnection[Any], position: int) -> EventEnvelope | None:
    cur = await conn.execute(_READ_ONE, (position,))
    row = await cur.fetchone()
    return EventEnvelope.from_row(row) if row else None


def read_positions(cur: psycopg.Cursor[Any], positions: Sequence[int]) -> list[EventEnvelope]:
    """The events at ``positions``, in log order."""
    rows = cur.execute(
        sql.SQL("SELECT {row} FROM {e} WHERE notification_id = ANY(%s)"
                " ORDER BY notification_id").format(e=_E, row=_ROW),
        (list(positions),),
    ).fetchall()
    return [EventEnvelope.from_row(row) for row in rows]


def read_everything(conn: psycopg.Connection[Any]) -> Iterator[EventEnvelope]:
    """Every event in log order, streamed (a server-side cursor inside a transaction)."""
    with conn.transaction(), conn.cursor(name="aura_read_everything") as cur:
        cur.itersize = 5000
        cur.execute(sql.SQL("SELECT {row} FROM {e} ORDER BY notification_id").format(
            e=_E, row=_ROW))
        for row in cur:
            yield EventEnvelope.from_row(row)


def head(conn: psycopg.Connection[Any] | psycopg.Cursor[Any]) -> int:
    """The last position (0 for an empty log)."""
    row = conn.execute(_HEAD).fetchone()
    return int(row[0]) if row else 0


# -- counting and lag ----------------------------------------------------------------------

def pending(
    conn: psycopg.Connection[Any], topics: Sequence[str] | None, after: int,
    upto: int | None = None, cap: int | None = None,
) -> int:
    """Events (of ``topics``, all when None) with ``after < position <= upto``; counting
    stops at ``cap``."""
    conditions = [sql.SQL("notification_id > %s")]
    params: list[Any] = [after]
    if upto is not None:
        if upto <= after:
            return 0
        conditions.append(sql.SQL("notification_id <= %s"))
        params.append(upto)
    if topics is not None:
        conditions.append(sql.SQL("topic = ANY(%s)"))
        params.append(list(topics))
    limit = sql.SQL(" LIMIT %s") if cap is not None else sql.SQL("")
    if cap is not None:
        params.append(cap)
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {e} WHERE {w}{limit}) AS pending").format(
            e=_E, w=sql.SQL(" AND ").join(conditions), limit=limit),
        params,
    ).fetchone()
    return int(row[0]) if row else 0


def oldest_time_after(
    conn: psycopg.Connection[Any], after: int, topics: Sequence[str] | None = None
) -> datetime | None:
    """When the first event after ``after`` (of ``topics``) was recorded: the age of a
    reader's lag. None when there is none, or its row does not decode."""
    topic_filter = sql.SQL(" AND topic = ANY(%s)") if topics is not None else sql.SQL("")
    params: list[Any] = [after] + ([list(topics)] if topics is not None else [])
    row = conn.execute(
        sql.SQL("SELECT {time}(state) FROM {e} WHERE notification_id > %s{t}"
                " ORDER BY notification_id LIMIT 1").format(time=_TIME, e=_E, t=topic_filter),
        params,
    ).fetchone()
    return row[0] if row else None


# -- aggregates -------------------------------------------------------------------------

def aggregates_in_range(
    conn: psycopg.Connection[Any], topics: Sequence[str], *,
    from_position: int | None = None, to_position: int | None = None,
    since: datetime | None = None, until: datetime | None = None,
) -> list[UUID]:
    """The aggregates with events of ``topics`` in the range, first seen first."""
    conditions: list[sql.Composable] = [sql.SQL("topic = ANY(%s)")]
    params: list[Any] = [list(topics)]
    at = sql.SQL("{}(state)").format(_TIME)
    for column, op, value in (
        (sql.SQL("notification_id"), ">=", from_position),
        (sql.SQL("notification_id"), "<=", to_position),
        (at, ">=", since),
        (at, "<", until),
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


def events_of_aggregates(
    cur: psycopg.Cursor[Any], aggregate_ids: Sequence[UUID], topics: Sequence[str], upto: int
) -> list[EventEnvelope]:
    """Every event of these aggregates (of ``topics``) up to ``upto``, in log order."""
    rows = cur.execute(
        sql.SQL(
            "SELECT {row} FROM {e} WHERE originator_id = ANY(%s) AND topic = ANY(%s)"
            " AND notification_id <= %s ORDER BY notification_id"
        ).format(e=_E, row=_ROW),
        (list(aggregate_ids), list(topics), upto),
    ).fetchall()
    return [EventEnvelope.from_row(row) for row in rows]


def histories(cur: psycopg.Cursor[Any], aggregate_ids: Sequence[UUID]) -> list[Any]:
    """Raw stored events of these aggregates, by aggregate and version (for loading many
    aggregates in one query): rows of originator_id, originator_version, topic, state."""
    return cur.execute(
        sql.SQL(
            "SELECT originator_id, originator_version, topic, state FROM {e}"
            " WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
        ).format(e=_E),
        (list(set(aggregate_ids)),), prepare=True,
    ).fetchall()


def positions_of(cur: psycopg.Cursor[Any], aggregate_id: UUID, to_version: int) -> list[int]:
    """The positions of an aggregate's versions 1..``to_version``."""
    rows = cur.execute(
        sql.SQL("SELECT notification_id FROM {e} WHERE originator_id = %s"
                " AND originator_version <= %s ORDER BY originator_version").format(e=_E),
        (aggregate_id, to_version),
    ).fetchall()
    return [_first(row) for row in rows]


# -- idempotency keys -------------------------------------------------------------------

_KEYS_LOOKUP = sql.SQL(
    "SELECT i.key_hash, i.command_type, i.idempotency_key, i.aggregate_id, i.request_hash,"
    " i.from_version, i.to_version,"
    " ARRAY(SELECT e.notification_id FROM {e} e WHERE e.originator_id = i.aggregate_id"
    "   AND e.originator_version BETWEEN i.from_version AND i.to_version"
    "   ORDER BY e.originator_version) AS positions"
    " FROM {k} i WHERE i.key_hash = ANY(%s)"
).format(e=_E, k=_K)


def stored_keys(cur: psycopg.Cursor[Any], key_hashes: Sequence[str]) -> dict[str, Any]:
    """The stored keys among ``key_hashes``, with the positions their command stored."""
    cur.execute(_KEYS_LOOKUP, (list(key_hashes),), prepare=True)
    return {row["key_hash"]: row for row in cur.fetchall()}


# -- waking readers -----------------------------------------------------------------------

LISTEN = sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL))
NOTIFY = sql.SQL("NOTIFY {}").format(sql.Identifier(CHANNEL))


def listen(conn: psycopg.Connection[Any]) -> None:
    """From now on, every append (and replay switch) sends this connection a NOTIFY."""
    conn.execute(LISTEN)


def notify(cur: psycopg.Cursor[Any]) -> None:
    """Wakes every listening reader when the transaction commits."""
    cur.execute(NOTIFY)


def _first(row: Any) -> int:
    return int(row["notification_id"] if isinstance(row, dict) else row[0])
