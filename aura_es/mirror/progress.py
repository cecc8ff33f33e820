"""Where the relay is, for `aura-es status`: written after every confirmed batch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from aura_es.store import owners
from aura_es.store.eventlog import Cursor

PROGRESS = "aura_mirror_progress"
_T = sql.Identifier(PROGRESS)


def ddl() -> list[sql.Composed | sql.SQL]:
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} (stream text PRIMARY KEY, position bigint NOT NULL,"
            " stream_seq bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(t=_T),
        # The relay's cursor in the log's order (added with lock-free appends; older
        # progress rows are at (0, position), where every older event is).
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS transaction_id bigint"
                " NOT NULL DEFAULT 0").format(t=_T),
    ]


OWNER = owners.Owner("mirror progress", ddl, (PROGRESS,), columns=(f"{PROGRESS}.transaction_id",))


async def record(
    conn: psycopg.AsyncConnection[Any], stream: str, cursor: Cursor, stream_seq: int
) -> None:
    await conn.execute(
        sql.SQL(
            "INSERT INTO {t} (stream, position, transaction_id, stream_seq)"
            " VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (stream) DO UPDATE SET position = EXCLUDED.position,"
            " transaction_id = EXCLUDED.transaction_id,"
            " stream_seq = EXCLUDED.stream_seq, updated_at = now()"
        ).format(t=_T),
        (stream, cursor.position, cursor.transaction, stream_seq),
    )


@dataclass(frozen=True)
class Progress:
    stream: str
    position: int
    stream_seq: int
    updated_at: datetime
    cursor: Cursor


def every(conn: psycopg.Connection[Any]) -> list[Progress]:
    """Every stream's last recorded progress, by stream name."""
    return [
        Progress(row[0], int(row[1]), int(row[2]), row[3], Cursor(int(row[4]), int(row[1])))
        for row in conn.execute(sql.SQL(
            "SELECT stream, position, stream_seq, updated_at, transaction_id FROM {t}"
            " ORDER BY stream").format(t=_T))
    ]
