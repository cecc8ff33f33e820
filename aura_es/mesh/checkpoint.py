"""Where a mesh consumer is, kept in the service's own database and moved in the
transaction that applies the messages:

- ``stream_seq``: the last stream sequence read (applied, rejected or not subscribed),
  every one before it read too, in order; and the ``fingerprint`` of the message there,
  so a stream rewritten under the consumer is noticed;
- the store's cursor ``(transaction_id, position)`` of the last store message read, so a
  re-published event is absorbed, and ``store``, the store those cursors belong to;
- ``parked``: how many of its rejected rows hold an aggregate back (poison, parked)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from aura_es.store.eventlog import ORIGIN, Cursor

TABLE = "aura_mesh_checkpoints"
_T = sql.Identifier(TABLE)

DDL = [
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {t} (consumer text PRIMARY KEY, stream text NOT NULL,"
        " stream_seq bigint NOT NULL DEFAULT 0, position bigint, applied bigint NOT NULL"
        " DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now())"
    ).format(t=_T),
    # Added by the release whose consumer reads in order from its checkpoint; a row of
    # the earlier release has NULL here, and its cursor is recovered from the stream.
    sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS transaction_id bigint,"
            " ADD COLUMN IF NOT EXISTS store text, ADD COLUMN IF NOT EXISTS fingerprint text,"
            " ADD COLUMN IF NOT EXISTS parked bigint NOT NULL DEFAULT 0").format(t=_T),
]


@dataclass(frozen=True)
class State:
    stream_seq: int = 0
    #: None: a row written by a release that did not keep it (recovered from the stream).
    cursor: Cursor | None = ORIGIN
    store: str | None = None
    fingerprint: str | None = None
    parked: int = 0

    def read(self, stream_seq: int, fingerprint: str, cursor: Cursor | None = None,
             store: str | None = None) -> State:
        """The state after reading one more message."""
        return replace(self, stream_seq=stream_seq, fingerprint=fingerprint,
                       cursor=cursor if cursor is not None else self.cursor,
                       store=self.store or store)


def ensure(conn: psycopg.Connection[Any], consumer: str, stream: str) -> None:
    with conn.transaction():
        for statement in DDL:
            conn.execute(statement)
        conn.execute(sql.SQL("INSERT INTO {t} (consumer, stream) VALUES (%s, %s)"
                             " ON CONFLICT (consumer) DO NOTHING").format(t=_T),
                     (consumer, stream))


_COLUMNS = sql.SQL("stream_seq, transaction_id, position, store, fingerprint, parked")


def _state(row: tuple[Any, ...] | None) -> State:
    assert row is not None, "ensure() first"
    seq, transaction, position, store, fingerprint, parked = row
    if transaction is None:  # the earlier release's row: its cursor is not known
        cursor = ORIGIN if seq == 0 else None
    else:
        cursor = Cursor(int(transaction), int(position or 0))
    return State(int(seq), cursor, store, fingerprint, int(parked))


def load(conn: psycopg.Connection[Any], consumer: str) -> State:
    return _state(conn.execute(sql.SQL("SELECT {c} FROM {t} WHERE consumer = %s")
                               .format(c=_COLUMNS, t=_T), (consumer,)).fetchone())


def lock(cur: psycopg.Cursor[Any], consumer: str) -> State:
    """The state, its row locked until the transaction ends (a second copy of the
    consumer waits here instead of applying the same message)."""
    return _state(cur.execute(sql.SQL("SELECT {c} FROM {t} WHERE consumer = %s FOR UPDATE")
                              .format(c=_COLUMNS, t=_T), (consumer,)).fetchone())


def advance(cur: psycopg.Cursor[Any], consumer: str, state: State, applied: int) -> None:
    cursor = state.cursor or ORIGIN
    cur.execute(sql.SQL(
        "UPDATE {t} SET stream_seq = %s, transaction_id = %s, position = %s, store = %s,"
        " fingerprint = %s, parked = %s, applied = applied + %s, updated_at = now()"
        " WHERE consumer = %s").format(t=_T),
        (state.stream_seq, cursor.transaction, cursor.position, state.store,
         state.fingerprint, state.parked, applied, consumer))


def unpark(cur: psycopg.Cursor[Any], consumer: str, count: int) -> None:
    """``count`` poison or parked rows were applied and forgotten."""
    cur.execute(sql.SQL("UPDATE {t} SET parked = greatest(parked - %s, 0), updated_at = now()"
                        " WHERE consumer = %s").format(t=_T), (count, consumer))
