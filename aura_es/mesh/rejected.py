"""Messages a mesh consumer refused (data that does not fit its schema): kept in the
service's database with the reason, in the transaction that moves the checkpoint past
them, so nothing is dropped without a trace."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

TABLE = "aura_mesh_rejected"
_T = sql.Identifier(TABLE)


def ensure(conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {t} (consumer text NOT NULL, stream_seq bigint NOT NULL,"
        " body bytea NOT NULL, reason text NOT NULL, rejected_at timestamptz NOT NULL"
        " DEFAULT now(), PRIMARY KEY (consumer, stream_seq))").format(t=_T))


def record(cur: psycopg.Cursor[Any], consumer: str, stream_seq: int, body: bytes,
           reason: str) -> None:
    cur.execute(sql.SQL("INSERT INTO {t} (consumer, stream_seq, body, reason)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING").format(t=_T),
                (consumer, stream_seq, body, reason))
