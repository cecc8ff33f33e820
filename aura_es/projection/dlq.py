"""The ordered dead-letter queue: a poison event, and every later event of its aggregate
for the same projection parked behind it in order, while other aggregates flow (G5)."""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from aura_es.errors import EventUndecodable
from aura_es.store import eventlog, owners
from aura_es.store.envelope import EventEnvelope

DEAD_LETTERS = "aura_dead_letters"
PARKED = "aura_dead_letter_parked"
_DL = sql.Identifier(DEAD_LETTERS)
_PARKED = sql.Identifier(PARKED)

PARKED_STATUS, RESOLVED, DISCARDED = "parked", "resolved", "discarded"


def ddl() -> list[sql.Composed | sql.SQL]:
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " id bigserial PRIMARY KEY,"
            " projection text NOT NULL,"
            " position bigint NOT NULL,"
            " event_id text,"
            " aggregate_id uuid NOT NULL,"
            " topic text NOT NULL,"
            " error_type text NOT NULL,"
            " error_message text NOT NULL,"
            " traceback text NOT NULL,"
            " attempts integer NOT NULL,"
            " first_failed_at timestamptz NOT NULL,"
            " last_failed_at timestamptz NOT NULL,"
            " status text NOT NULL DEFAULT 'parked',"
            " discard_reason text,"
            " closed_at timestamptz,"
            " UNIQUE (projection, position))"
        ).format(t=_DL),
        sql.SQL(
            "CREATE UNIQUE INDEX IF NOT EXISTS {i} ON {t} (projection, aggregate_id)"
            " WHERE status = 'parked'"
        ).format(i=sql.Identifier(f"{DEAD_LETTERS}_one_open_per_aggregate"), t=_DL),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " dead_letter_id bigint NOT NULL REFERENCES {dl} (id),"
            " projection text NOT NULL,"
            " position bigint NOT NULL,"
            " PRIMARY KEY (projection, position))"
        ).format(t=_PARKED, dl=_DL),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (dead_letter_id)").format(
            i=sql.Identifier(f"{PARKED}_dead_letter_idx"), t=_PARKED
        ),
        # Added later (`db init` upgrades in place): true for a dead letter of a rebuild
        # in progress, which moves to the projection at the switch.
        sql.SQL(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS rebuild boolean NOT NULL DEFAULT false"
        ).format(t=_DL),
    ]


OWNER = owners.Owner("the dead-letter queue", ddl, (DEAD_LETTERS, PARKED))


@dataclass(frozen=True)
class Failure:
    """A handler's failure on one event, as the DLQ records it."""

    error_type: str
    message: str
    traceback: str
    attempts: int
    first_failed_at: datetime

    @classmethod
    def undecodable(cls, event: EventEnvelope) -> Failure:
        """An event whose stored bytes do not decode: no handler ran, no retry will help."""
        return cls(
            error_type=f"{EventUndecodable.__module__}.{EventUndecodable.__qualname__}",
            message=f"cannot decode the stored event: {event.undecodable}",
            traceback="", attempts=0, first_failed_at=datetime.now(UTC),
        )

    @classmethod
    def of(cls, error: BaseException, attempts: int, first_failed_at: datetime) -> Failure:
        return cls(
            error_type=f"{type(error).__module__}.{type(error).__qualname__}",
            message=str(error) or type(error).__name__,
            traceback="".join(traceback.format_exception(error)),
            attempts=attempts,
            first_failed_at=first_failed_at,
        )


def parked_aggregates(cur: psycopg.Cursor[Any], projection: str) -> dict[UUID, int]:
    """Aggregates whose events are parked for ``projection``: id -> dead letter id."""
    rows = cur.execute(
        sql.SQL("SELECT aggregate_id, id FROM {t} WHERE projection = %s AND status = %s").format(
            t=_DL
        ),
        (projection, PARKED_STATUS),
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def park(
    cur: psycopg.Cursor[Any], projection: str, events: Sequence[EventEnvelope],
    dead_letters: dict[UUID, int],
) -> None:
    cur.executemany(
        sql.SQL("INSERT INTO {t} (dead_letter_id, projection, position) VALUES (%s, %s, %s)")
        .format(t=_PARKED),
        [(dead_letters[e.aggregate_id], projection, e.position) for e in events],
    )


def dead_letter(
    cur: psycopg.Cursor[Any], projection: str, event: EventEnvelope, failure: Failure,
    *, rebuild: bool = False,
) -> int:
    row = cur.execute(
        sql.SQL(
            "INSERT INTO {t} (projection, position, event_id, aggregate_id, topic, error_type,"
            " error_message, traceback, attempts, first_failed_at, last_failed_at, rebuild)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), %s) RETURNING id"
        ).format(t=_DL),
        (projection, event.position, event.event_id, event.aggregate_id, event.topic,
         failure.error_type, failure.message, failure.traceback, failure.attempts,
         failure.first_failed_at, rebuild),
    ).fetchone()
    assert row is not None
    return int(row[0])


def depth(cur: psycopg.Cursor[Any]) -> dict[str, tuple[int, int, datetime | None]]:
    """Per projection: open dead letters, events parked behind them, oldest failure."""
    rows = cur.execute(sql.SQL(
        "SELECT d.projection, count(DISTINCT d.id), count(p.position),"
        " min(d.first_failed_at) FROM {dl} d LEFT JOIN {p} p ON p.dead_letter_id = d.id"
        " WHERE d.status = %s GROUP BY d.projection"
    ).format(dl=_DL, p=_PARKED), (PARKED_STATUS,)).fetchall()
    return {row[0]: (int(row[1]), int(row[2]), row[3]) for row in rows}


def listing(
    cur: psycopg.Cursor[Any], projection: str | None = None, status: str | None = PARKED_STATUS
) -> list[dict[str, Any]]:
    conditions, params = [], []
    if projection:
        conditions.append(sql.SQL("d.projection = %s"))
        params.append(projection)
    if status:
        conditions.append(sql.SQL("d.status = %s"))
        params.append(status)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    with cur.connection.cursor(row_factory=dict_row) as dcur:
        return dcur.execute(sql.SQL(
            "SELECT d.id, d.projection, d.position, d.event_id, d.aggregate_id, d.topic,"
            " d.error_type, d.error_message, d.attempts, d.first_failed_at, d.last_failed_at,"
            " d.status, d.discard_reason, d.closed_at, d.rebuild,"
            " (SELECT count(*) FROM {p} p WHERE p.dead_letter_id = d.id) AS parked_events"
            " FROM {dl} d{w} ORDER BY d.id"
        ).format(dl=_DL, p=_PARKED, w=where), params).fetchall()


def get(
    cur: psycopg.Cursor[Any], dead_letter_id: int, *, lock: bool = False
) -> dict[str, Any] | None:
    with cur.connection.cursor(row_factory=dict_row) as dcur:
        row = dcur.execute(
            sql.SQL("SELECT * FROM {t} WHERE id = %s" + (" FOR UPDATE" if lock else "")).format(
                t=_DL
            ),
            (dead_letter_id,),
        ).fetchone()
        if row is None:
            return None
        row["parked_positions"] = [r["position"] for r in dcur.execute(
            sql.SQL("SELECT position FROM {p} WHERE dead_letter_id = %s ORDER BY position")
            .format(p=_PARKED), (dead_letter_id,),
        )]
        return row


def events_of(cur: psycopg.Cursor[Any], dead_letter: dict[str, Any]) -> list[EventEnvelope]:
    """The dead-lettered event and the events parked behind it, in their order."""
    return eventlog.read_positions(
        cur, [dead_letter["position"], *dead_letter["parked_positions"]])


def resolve(cur: psycopg.Cursor[Any], dead_letter_id: int, note: str | None = None) -> int:
    """Its events are in the read model now (a retry, a partial replay): releases the
    parked ones and closes it as resolved. Returns how many events it held."""
    cur.execute(sql.SQL("DELETE FROM {p} WHERE dead_letter_id = %s").format(p=_PARKED),
                (dead_letter_id,))
    released = cur.rowcount
    close(cur, dead_letter_id, RESOLVED, note)
    return 1 + max(0, released)


def close(
    cur: psycopg.Cursor[Any], dead_letter_id: int, status: str, reason: str | None = None
) -> None:
    cur.execute(
        sql.SQL("UPDATE {t} SET status = %s, discard_reason = %s, closed_at = now()"
                " WHERE id = %s").format(t=_DL),
        (status, reason, dead_letter_id),
    )


def record_retry_failure(
    cur: psycopg.Cursor[Any], dead_letter_id: int, error: BaseException
) -> None:
    failure = Failure.of(error, 0, datetime.now())
    cur.execute(
        sql.SQL(
            "UPDATE {t} SET attempts = attempts + 1, last_failed_at = now(), error_type = %s,"
            " error_message = %s, traceback = %s WHERE id = %s"
        ).format(t=_DL),
        (failure.error_type, failure.message, failure.traceback, dead_letter_id),
    )


SUPERSEDED = "superseded"


def hand_over(cur: psycopg.Cursor[Any], projection: str, old_name: str, new_name: str) -> int:
    """At a replay's switch: the replaced read model's dead letters move to ``old_name``
    (open ones closed as superseded, their parked events dropped: the model they were
    kept out of is gone), and the new model's move from ``new_name`` to ``projection``.
    Returns how many open dead letters the new read model brings."""
    cur.execute(sql.SQL("DELETE FROM {p} WHERE projection = %s").format(p=_PARKED), (projection,))
    cur.execute(
        sql.SQL(
            "UPDATE {t} SET projection = %s, status = CASE WHEN status = %s THEN %s"
            " ELSE status END, closed_at = coalesce(closed_at, now()) WHERE projection = %s"
        ).format(t=_DL),
        (old_name, PARKED_STATUS, SUPERSEDED, projection),
    )
    cur.execute(
        sql.SQL("UPDATE {t} SET projection = %s WHERE projection = %s").format(t=_PARKED),
        (projection, new_name),
    )
    cur.execute(
        sql.SQL("UPDATE {t} SET projection = %s, rebuild = false WHERE projection = %s")
        .format(t=_DL),
        (projection, new_name),
    )
    row = cur.execute(
        sql.SQL("SELECT count(*) FROM {t} WHERE projection = %s AND status = %s").format(t=_DL),
        (projection, PARKED_STATUS),
    ).fetchone()
    return int(row[0]) if row else 0


def forget(cur: psycopg.Cursor[Any], projection: str) -> None:
    """Deletes every dead letter of ``projection`` (an abandoned rebuild's)."""
    cur.execute(sql.SQL("DELETE FROM {p} WHERE projection = %s").format(p=_PARKED), (projection,))
    cur.execute(sql.SQL("DELETE FROM {t} WHERE projection = %s").format(t=_DL), (projection,))


def scrub(cur: psycopg.Cursor[Any], positions: list[int]) -> int:
    """Clears the failure text of dead letters of these events (an erased subject's):
    a handler's error may have quoted a personal field. The letters stay, in place."""
    cur.execute(sql.SQL(
        "UPDATE {t} SET error_message = %s, traceback = %s WHERE position = ANY(%s)"
    ).format(t=_DL), (ERASED_NOTE, ERASED_NOTE, positions))
    return cur.rowcount


#: What a scrubbed dead letter's failure text reads.
ERASED_NOTE = "[erased: the subject of this event was erased]"
