"""The event log's reads: every statement against the events and idempotency-key tables,
except the append itself (``recorder.py``), is here; everyone else calls these functions.

Gap safety (G3) without a table lock: readers follow the log in (transaction, position)
order and read only transactions below the horizon, the oldest transaction still running
anywhere on the server; see "tailing the log" below and docs/guarantees.md.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import psycopg
from psycopg import pq, sql

from aura_es.personal import ERASURE_TOPIC
from aura_es.positions import MAX_POSITION
from aura_es.store import keystore, owners, partitioning
from aura_es.store.envelope import EventEnvelope
from aura_es.store.names import EVENTS_TABLE, RESERVE_FUNCTION
from aura_es.store.partitioning import WHOLE, Partition

#: The channel the recorder NOTIFYs on every append (and a replay's switch).
CHANNEL = EVENTS_TABLE
#: Recorded time of an event from its stored JSON; NULL when the row does not decode.
EVENT_TIME_FUNCTION = "aura_event_time"

_E = sql.Identifier(EVENTS_TABLE)
_TIME = sql.Identifier(EVENT_TIME_FUNCTION)
_ROW = sql.SQL(
    "notification_id, originator_id, originator_version, topic, state, transaction_id")


def ddl() -> list[sql.Composed | sql.SQL]:
    """What the log needs beyond the recorder's tables (which the library creates)."""
    return [sql.SQL(
        "CREATE OR REPLACE FUNCTION {f}(state bytea) RETURNS timestamptz"
        " LANGUAGE plpgsql STABLE PARALLEL SAFE AS $body$"
        " BEGIN RETURN (convert_from(state, 'UTF8')::jsonb ->> 'timestamp')::timestamptz;"
        " EXCEPTION WHEN others THEN RETURN NULL; END $body$"
    ).format(f=_TIME)]


OWNER = owners.Owner(
    "the event log", ddl, (EVENTS_TABLE,), (EVENT_TIME_FUNCTION, RESERVE_FUNCTION),
    columns=(f"{EVENTS_TABLE}.transaction_id", f"{EVENTS_TABLE}.subject"))


# -- tailing the log ---------------------------------------------------------------------
#
# Appends take no lock, so positions do not commit in order. Readers order the log by
# (transaction_id, notification_id) instead, and read only the transactions older than
# every transaction still running anywhere on the server (the snapshot's xmin, "the
# horizon"): each of those has committed or rolled back for good, so nothing can ever
# appear behind a reader's cursor (G3). The cost: a long-running *writing* transaction,
# in any database of the server, holds every reader back until it ends (``held_back``).


@dataclass(frozen=True, order=True)
class Cursor:
    """How far a reader has read: every event of a transaction below ``transaction``,
    and those of ``transaction`` itself up to ``position``."""

    transaction: int = 0
    position: int = 0

    @classmethod
    def of(cls, event: EventEnvelope) -> Cursor:
        return cls(event.transaction, event.position)


ORIGIN = Cursor()
#: After every event there is or will be: "no upper bound".
END = Cursor(MAX_POSITION, MAX_POSITION)
_HORIZON = sql.SQL("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
_AFTER = sql.SQL("(transaction_id, notification_id) > (%s, %s)")
_READ_ONE = sql.SQL("SELECT {row} FROM {e} WHERE notification_id = %s").format(e=_E, row=_ROW)
_HEAD = sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {e}").format(e=_E)


@dataclass(frozen=True)
class Batch:
    events: Sequence[EventEnvelope]
    #: Where the reader's cursor may move: the last event, or the horizon when the
    #: batch was not full (every older transaction has been read).
    scanned_to: Cursor
    #: No more events of these topics below the horizon: the reader is caught up.
    caught_up: bool
    #: The highest position this read covers (shown, not used to read).
    covered: int


@functools.cache
def _batch_query(topics: int, split: tuple[bool, ...] = (), with_keys: bool = False
                 ) -> sql.Composed:
    """One index range scan per topic (topic, transaction_id, notification_id), merged:
    a projection of rare topics reads only its own events, however long the log. A
    partition's reader filters the scan by the aggregate's partition (``partitioning``)
    for each topic ``split`` marks: it reads past the other partitions' rows, but never
    hands them to its handler. The picked rows are then read one by one by position (a
    plain join was planned as a scan of the whole table, or of its position index from
    the start, on every batch: 18 ms for 1,000 events in a log of 40,000, 2 ms this way).
    Each row: ``(horizon, position, aggregate, version, topic, state, transaction,
    subject)``, one row of NULLs after the horizon when there is no event; ``with_keys``
    adds the position of the latest erasure (``_LATEST_ERASURE``)."""
    in_partition = sql.SQL(" AND {key} %% %s = %s").format(
        key=partitioning.key_sql("originator_id"))

    def per_topic(partitioned: bool) -> sql.Composed:
        return sql.SQL(
            "(SELECT transaction_id, notification_id FROM {e} WHERE topic = %s"
            " AND {after} AND transaction_id < (SELECT horizon FROM h){in_partition}"
            " ORDER BY transaction_id, notification_id LIMIT %s)"
        ).format(e=_E, after=_AFTER,
                 in_partition=in_partition if partitioned else sql.SQL(""))

    split = split or (False,) * topics
    return sql.SQL(
        "WITH h AS (SELECT {horizon} AS horizon),"
        " picked AS (SELECT * FROM ({union}) AS u ORDER BY 1, 2 LIMIT %s)"
        " SELECT (SELECT horizon FROM h), e.notification_id, e.originator_id,"
        " e.originator_version, e.topic, e.state, e.transaction_id, e.subject{erasure}"
        " FROM (SELECT 1) AS one LEFT JOIN LATERAL ("
        "   SELECT x.* FROM picked CROSS JOIN LATERAL ("
        "     SELECT * FROM {e} AS y WHERE y.notification_id = picked.notification_id"
        "     LIMIT 1) AS x"
        "   ORDER BY picked.transaction_id, picked.notification_id) AS e ON true"
    ).format(
        e=_E, horizon=_HORIZON,
        union=sql.SQL(" UNION ALL ").join([per_topic(p) for p in split]),
        erasure=sql.SQL(", ({})").format(_LATEST_ERASURE) if with_keys else sql.SQL(""))


#: Where the latest erasure is in the log (NULL: there is none): a batch's keys are
#: current while it does not move (``keystore.ERASURES_WAIT``).
_LATEST_ERASURE = sql.SQL(
    "SELECT notification_id FROM {e} WHERE topic = {topic}"
    " ORDER BY transaction_id DESC, notification_id DESC LIMIT 1"
).format(e=_E, topic=sql.Literal(ERASURE_TOPIC))


# What a batch's scans may be planned as. Without fresh statistics (a new topic, a bulk
# load, a topic grown since the last ANALYZE) PostgreSQL estimates a few dozen rows after
# the cursor and plans a bitmap scan of *every* row of the topic after it, or a scan of
# the whole table, then a sort: 11-20 ms a batch of 1,000 on 40,000 events, growing with
# the log, and on a fully analyzed table it still chose a parallel scan of the whole
# table for a topic of one event in 20. Without those two the only plans left are the
# ordered index scans that stop after the batch (2-3 ms). Set for the one statement and
# put back before a handler's own SQL runs in the same transaction. The settings as they
# were are read before they are changed (a materialized CTE is scanned before the select
# list that changes them is evaluated): one round trip, which also waits, for a reader
# of keys, for an erasure in flight to commit (``keystore.ERASURES_WAIT``).
_ORDERED_ONLY = {keys: sql.SQL(
    "WITH was AS MATERIALIZED (SELECT current_setting('enable_bitmapscan') AS bitmap,"
    " current_setting('enable_seqscan') AS seq)"
    " SELECT bitmap, seq, set_config('enable_bitmapscan', 'off', true),"
    " set_config('enable_seqscan', 'off', true){gate} FROM was"
).format(gate=sql.SQL(", {}").format(keystore.ERASURES_WAIT) if keys else sql.SQL(""))
    for keys in (False, True)}
_PLANNER_AS_IT_WAS = sql.SQL("SELECT set_config('enable_bitmapscan', %s, true),"
                             " set_config('enable_seqscan', %s, true)")


@contextlib.contextmanager
def ordered_scans(cur: psycopg.Cursor[Any], *, keys: bool = False) -> Iterator[None]:
    """Inside a transaction: what runs here is planned without bitmap or sequential
    scans (the batch statement: an ordered index scan of each topic that stops after the
    batch); the planner is as it was afterwards, for whatever else the transaction runs.
    ``keys``: no erasure commits until the transaction ends, and any erasure committed
    before is seen by what runs here (``keystore.ERASURES_WAIT``)."""
    conn = cur.connection
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        # Each statement its own transaction: the settings would be gone before it ran.
        raise psycopg.ProgrammingError("the batch read needs a transaction")
    row = cur.execute(_ORDERED_ONLY[keys]).fetchone()
    assert row is not None
    # Not put back after an error: the statement's failure aborted the transaction,
    # whose rollback puts the settings back by itself.
    yield
    cur.execute(_PLANNER_AS_IT_WAS, (row[0], row[1]))


class Keys(Protocol):
    """The data keys of a batch's subjects (``keyring.Keyring``)."""

    def current(self, cur: psycopg.Cursor[Any], subjects: Iterable[str],
                latest_erasure: int | None) -> Mapping[str, bytes | None]: ...


def read_batch(
    cur: psycopg.Cursor[Any], after: Cursor, topics: Sequence[str], limit: int,
    partition: Partition = WHOLE, keys: Keys | None = None, *, lazily: bool = False,
) -> Batch:
    """At most ``limit`` events of ``topics`` after ``after``, in log order; only those
    of ``partition``'s aggregates when the projection is split (an erasure is read by
    every partition: the subject's rows may be in any of them). With ``keys``, no
    erasure commits until ``cur``'s transaction ends (one committed before is seen), and
    each event is opened with its subject's key as it is decoded (one pass: opening
    afterwards copies every event), or, ``lazily``, when one of its personal fields is
    first read (``EventEnvelope.payload``)."""
    partitioned = partition.count > 1
    split = tuple(partitioned and topic != ERASURE_TOPIC for topic in topics)
    params: list[Any] = []
    for topic, in_partition in zip(topics, split, strict=True):
        params += [topic, after.transaction, after.position]
        if in_partition:
            params += [partition.count, partition.index]
        params.append(limit)
    # Binary results: the state's bytes as they are, not hex text to decode (~2 µs an
    # event of 400 bytes, more for a sealed one; measured with issue 25's benchmark).
    with ordered_scans(cur, keys=keys is not None):
        rows = cur.execute(_batch_query(len(topics), split, keys is not None),
                           [*params, limit], binary=True).fetchall()
    horizon = int(rows[0][0])
    opened_with = None
    if keys is not None:
        subjects = {row[7] for row in rows if row[1] is not None and row[7] is not None}
        if subjects:
            opened_with = keys.current(cur, subjects, rows[0][8])
    events = [EventEnvelope.from_row(row[1:], opened_with, lazily=lazily)
              for row in rows if row[1] is not None]
    if len(events) == limit:
        last = events[-1]
        return Batch(events, Cursor.of(last), False, last.position)
    # Every transaction below the horizon is read: the cursor may move up to it.
    covered = _covered(cur, after, horizon)
    scanned = max(after, Cursor(horizon, 0))
    return Batch(events, scanned, True, max([covered, *(e.position for e in events)]))


def _covered(cur: psycopg.Cursor[Any], after: Cursor, horizon: int) -> int:
    # Never prepared: the generic plan of max() with a range is a backward scan of the
    # whole position index (~100 ms on 200,000 events, on every batch of a live
    # worker); planned with the values it is an index range scan of a few new rows.
    row = cur.execute(
        sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {e}"
                " WHERE transaction_id >= %s AND transaction_id < %s").format(e=_E),
        (after.transaction, horizon), prepare=False,
    ).fetchone()
    return int(row[0]) if row else 0


_READ_ALL = sql.SQL(
    "SELECT {row} FROM {e} WHERE {after} AND transaction_id < {horizon}"
    " ORDER BY transaction_id, notification_id LIMIT %s"
).format(row=_ROW, e=_E, after=_AFTER, horizon=_HORIZON)


def read_after(conn: psycopg.Connection[Any], after: Cursor, limit: int) -> list[EventEnvelope]:
    """The next ``limit`` events of every topic, in log order, below the horizon."""
    rows = conn.execute(_READ_ALL, (after.transaction, after.position, limit)).fetchall()
    return [EventEnvelope.from_row(row) for row in rows]


async def read_all_after(
    conn: psycopg.AsyncConnection[Any], after: Cursor, limit: int
) -> list[EventEnvelope]:
    """The same for asyncio (the mirror's read)."""
    cur = await conn.execute(_READ_ALL, (after.transaction, after.position, limit))
    return [EventEnvelope.from_row(row) for row in await cur.fetchall()]


async def read_one(conn: psycopg.AsyncConnection[Any], position: int) -> EventEnvelope | None:
    cur = await conn.execute(_READ_ONE, (position,))
    row = await cur.fetchone()
    return EventEnvelope.from_row(row) if row else None


def read_positions(cur: psycopg.Cursor[Any], positions: Sequence[int]) -> list[EventEnvelope]:
    """The events at ``positions``, in log order."""
    rows = cur.execute(
        sql.SQL("SELECT {row} FROM {e} WHERE notification_id = ANY(%s)"
                " ORDER BY transaction_id, notification_id").format(e=_E, row=_ROW),
        (list(positions),),
    ).fetchall()
    return [EventEnvelope.from_row(row) for row in rows]


def read_everything(conn: psycopg.Connection[Any]) -> Iterator[EventEnvelope]:
    """Every event in log order, streamed (a server-side cursor inside a transaction)."""
    with conn.transaction(), conn.cursor(name="aura_read_everything") as cur:
        cur.itersize = 5000
        cur.execute(sql.SQL("SELECT {row} FROM {e} ORDER BY transaction_id, notification_id")
                    .format(e=_E, row=_ROW))
        for row in cur:
            yield EventEnvelope.from_row(row)


def head(conn: psycopg.Connection[Any] | psycopg.Cursor[Any]) -> int:
    """The highest position stored (0 for an empty log): what readers catch up to."""
    row = conn.execute(_HEAD).fetchone()
    return int(row[0]) if row else 0


def horizon(conn: psycopg.Connection[Any] | psycopg.Cursor[Any]) -> int:
    """Readers read transactions below this one."""
    row = conn.execute(sql.SQL("SELECT {}").format(_HORIZON)).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class HeldBack:
    """The oldest writing transaction on the server, which holds every reader back."""

    pid: int | None
    database: str | None
    application_name: str | None
    started_at: datetime | None
    seconds: float
    #: "transaction", or "prepared transaction" (which no backend runs any more).
    kind: str


def held_back(conn: psycopg.Connection[Any], at_least_seconds: float = 0.0) -> HeldBack | None:
    """Who holds the readers' horizon back, when it has been held for at least
    ``at_least_seconds``: the oldest transaction with an id, in any database (seen with
    its details given ``pg_read_all_stats``), or a prepared transaction."""
    row = conn.execute(sql.SQL(
        "WITH oldest AS ("
        "  SELECT pid, datname::text AS db, application_name, xact_start AS at,"
        "   'transaction' AS kind, age(backend_xid) AS age FROM pg_stat_activity"
        "  WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
        "  UNION ALL SELECT NULL, database::text, gid, prepared, 'prepared transaction',"
        "   age(transaction) FROM pg_prepared_xacts)"
        " SELECT pid, db, application_name, at,"
        "  extract(epoch FROM now() - at)::float, kind FROM oldest"
        " ORDER BY age DESC LIMIT 1")).fetchone()
    if row is None or row[4] is None or row[4] < at_least_seconds:
        return None
    return HeldBack(row[0], row[1], row[2], row[3], round(float(row[4]), 1), row[5])


# -- counting and lag ----------------------------------------------------------------------

def pending(
    conn: psycopg.Connection[Any], topics: Sequence[str] | None, after: Cursor,
    upto: int | None = None, cap: int | None = None, above: int | None = None,
    partition: Partition = WHOLE,
) -> int:
    """Events (of ``topics``, all when None; of ``partition``'s aggregates) after the
    cursor ``after``, at or below position ``upto`` and above position ``above`` when
    given; counting stops at ``cap``."""
    conditions: list[sql.Composable] = [_AFTER]
    params: list[Any] = [after.transaction, after.position]
    if partition.count > 1:
        conditions.append(sql.SQL("{key} %% %s = %s").format(
            key=partitioning.key_sql("originator_id")))
        params += [partition.count, partition.index]
    if upto is not None:
        conditions.append(sql.SQL("notification_id <= %s"))
        params.append(upto)
    if above is not None:
        conditions.append(sql.SQL("notification_id > %s"))
        params.append(above)
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
    conn: psycopg.Connection[Any], after: Cursor, topics: Sequence[str] | None = None
) -> datetime | None:
    """When the first event after ``after`` (of ``topics``) was recorded: the age of a
    reader's lag. None when there is none, or its row does not decode."""
    topic_filter = sql.SQL(" AND topic = ANY(%s)") if topics is not None else sql.SQL("")
    params: list[Any] = [after.transaction, after.position]
    params += [list(topics)] if topics is not None else []
    row = conn.execute(
        sql.SQL("SELECT {time}(state) FROM {e} WHERE {after}{t}"
                " ORDER BY transaction_id, notification_id LIMIT 1").format(
            time=_TIME, e=_E, after=_AFTER, t=topic_filter),
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
    cur: psycopg.Cursor[Any], aggregate_ids: Sequence[UUID], topics: Sequence[str],
    upto: Cursor,
) -> list[EventEnvelope]:
    """Every event of these aggregates (of ``topics``) up to the cursor, in log order."""
    rows = cur.execute(
        sql.SQL(
            "SELECT {row} FROM {e} WHERE originator_id = ANY(%s) AND topic = ANY(%s)"
            " AND (transaction_id, notification_id) <= (%s, %s)"
            " ORDER BY transaction_id, notification_id"
        ).format(e=_E, row=_ROW),
        (list(aggregate_ids), list(topics), upto.transaction, upto.position),
    ).fetchall()
    return [EventEnvelope.from_row(row) for row in rows]


def histories(cur: psycopg.Cursor[Any], aggregate_ids: Sequence[UUID]) -> list[Any]:
    """Raw stored events of these aggregates, by aggregate and version (for loading many
    aggregates in one query): rows of originator_id, originator_version, topic, state,
    subject (whose personal fields it seals, if any)."""
    return cur.execute(
        sql.SQL(
            "SELECT originator_id, originator_version, topic, state, subject FROM {e}"
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


def positions_of_subject(cur: psycopg.Cursor[Any], subject: str) -> list[int]:
    """The positions of every event holding ``subject``'s sealed fields, in order (read
    from the subject index alone)."""
    return [int(r[0]) for r in cur.execute(
        sql.SQL("SELECT notification_id FROM {e} WHERE subject = %s ORDER BY notification_id")
        .format(e=_E), (subject,))]


def of_subject(cur: psycopg.Cursor[Any], subject: str) -> list[EventEnvelope]:
    """Every event holding ``subject``'s sealed personal fields, in position order."""
    rows = cur.execute(
        sql.SQL("SELECT {row} FROM {e} WHERE subject = %s ORDER BY notification_id")
        .format(e=_E, row=_ROW), (subject,)).fetchall()
    return [EventEnvelope.from_row(row) for row in rows]


# -- idempotency keys -------------------------------------------------------------------

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
