"""Where a mesh consumer is: the stream sequence of the last message applied, kept in
the service's own database and moved in the transaction that applies the message."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

TABLE = "aura_mesh_checkpoints"
_T = sql.Identifier(TABLE)

DDL = sql.SQL(
    "CREATE TABLE IF NOT EXISTS {t} (consumer text PRIMARY KEY, stream text NOT NULL,"
    " stream_seq bigint NOT NULL DEFAULT 0, position bigint, applied bigint NOT NULL"
    " DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now())"
).format(t=_T)


def ensure(conn: psycopg.Connection[Any], consumer: str, stream: str) -> None:
    with conn.transaction():
        conn.execute(DDL)
        conn.execute(sql.SQL("INSERT INTO {t} (consumer, stream) VALUES (%s, %s)"
                             " ON CONFLICT (consumer) DO NOTHING").format(t=_T),
                     (consumer, stream))


def lock(cur: psycopg.Cursor[Any], consumer: str) -> int:
    """The last applied stream sequence, the row locked until the transaction ends (a
    second copy of the consumer waits here instead of applying the same message)."""
    row = cur.execute(sql.SQL("SELECT stream_seq FROM {t} WHERE consumer = %s FOR UPDATE")
                      .format(t=_T), (consumer,)).fetchone()
    assert row is not None, "ensure() first"
    return int(row[0])


def advance(cur: psycopg.Cursor[Any], consumer: str, stream_seq: int, position: int | None,
            applied: int) -> None:
    cur.execute(sql.SQL("UPDATE {t} SET stream_seq = %s, position = %s,"
                        " applied = applied + %s, updated_at = now() WHERE consumer = %s")
                .format(t=_T), (stream_seq, position, applied, consumer))
