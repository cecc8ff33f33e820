"""Messages a mesh consumer did not apply, kept in the service's database with the
reason, in the transaction that moves the checkpoint past them: nothing is dropped
without a trace.

Kinds:

- ``invalid``: its content can never be applied (not JSON, data that does not fit its
  schema, impossible headers);
- ``foreign``: no aura-es store published it (no ``Aura-Position`` header);
- ``poison``: its handler failed on it every time it was tried;
- ``parked``: a later message of the same aggregate as a poison one, held back so that
  the aggregate's events are never applied out of order.

Poison and parked rows are handed to the handler again by ``MeshConsumer.redeliver``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

TABLE = "aura_mesh_rejected"
_T = sql.Identifier(TABLE)
HOLDING = ("poison", "parked")

DDL = [
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {t} (consumer text NOT NULL, stream_seq bigint NOT NULL,"
        " body bytea NOT NULL, reason text NOT NULL, rejected_at timestamptz NOT NULL"
        " DEFAULT now(), PRIMARY KEY (consumer, stream_seq))").format(t=_T),
    sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'invalid',"
            " ADD COLUMN IF NOT EXISTS aggregate_id uuid,"
            " ADD COLUMN IF NOT EXISTS headers jsonb").format(t=_T),
]


@dataclass(frozen=True)
class Row:
    stream_seq: int
    kind: str
    headers: dict[str, str]
    body: bytes


def ensure(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        for statement in DDL:
            conn.execute(statement)


def record(cur: psycopg.Cursor[Any], consumer: str, stream_seq: int, body: bytes,
           reason: str, *, kind: str = "invalid", aggregate_id: UUID | None = None,
           headers: Mapping[str, str] | None = None) -> None:
    cur.execute(sql.SQL("INSERT INTO {t} (consumer, stream_seq, body, reason, kind,"
                        " aggregate_id, headers) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT DO NOTHING").format(t=_T),
                (consumer, stream_seq, body, reason, kind, aggregate_id,
                 Jsonb(dict(headers or {}))))


def held_back(cur: psycopg.Cursor[Any], consumer: str, aggregates: Collection[UUID]
              ) -> set[UUID]:
    """Which of ``aggregates`` have a poison or parked row (their later events park)."""
    rows = cur.execute(sql.SQL("SELECT DISTINCT aggregate_id FROM {t} WHERE consumer = %s"
                               " AND kind IN ('poison', 'parked') AND aggregate_id = ANY(%s)")
                       .format(t=_T), (consumer, list(aggregates))).fetchall()
    return {row[0] for row in rows}


def holding(cur: psycopg.Cursor[Any], consumer: str, aggregate_id: UUID | None) -> list[Row]:
    """Poison and parked rows, of one aggregate or all, in stream order."""
    rows = cur.execute(sql.SQL(
        "SELECT stream_seq, kind, headers, body FROM {t} WHERE consumer = %s"
        " AND kind IN ('poison', 'parked') AND (%s::uuid IS NULL OR aggregate_id = %s)"
        " ORDER BY stream_seq FOR UPDATE").format(t=_T),
        (consumer, aggregate_id, aggregate_id)).fetchall()
    return [Row(int(seq), kind, dict(headers or {}), bytes(body))
            for seq, kind, headers, body in rows]


def forget(cur: psycopg.Cursor[Any], consumer: str, stream_seqs: list[int]) -> None:
    cur.execute(sql.SQL("DELETE FROM {t} WHERE consumer = %s AND stream_seq = ANY(%s)")
                .format(t=_T), (consumer, stream_seqs))
