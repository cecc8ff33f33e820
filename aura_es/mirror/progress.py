"""Where the relay is, for `aura-es status`: written after every confirmed batch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from aura_es.store import schema

PROGRESS = "aura_mirror_progress"


def ddl() -> list[sql.Composed | sql.SQL]:
    return [sql.SQL(
        "CREATE TABLE IF NOT EXISTS {t} (stream text PRIMARY KEY, position bigint NOT NULL,"
        " stream_seq bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
    ).format(t=sql.Identifier(PROGRESS))]


OWNER = schema.Owner("mirror progress", ddl, (PROGRESS,))


async def record(
    conn: psycopg.AsyncConnection[Any], stream: str, position: int, stream_seq: int
) -> None:
    await conn.execute(
        sql.SQL(
            "INSERT INTO {t} (stream, position, stream_seq) VALUES (%s, %s, %s)"
            " ON CONFLICT (stream) DO UPDATE SET position = EXCLUDED.position,"
            " stream_seq = EXCLUDED.stream_seq, updated_at = now()"
        ).format(t=sql.Identifier(PROGRESS)),
        (stream, position, stream_seq),
    )


@dataclass(frozen=True)
class Progress:
    stream: str
    position: int
    stream_seq: int
    updated_at: datetime


def every(conn: psycopg.Connection[Any]) -> list[Progress]:
    """Every stream's last recorded progress, by stream name."""
    return [Progress(*row) for row in conn.execute(
        sql.SQL("SELECT stream, position, stream_seq, updated_at FROM {t} ORDER BY stream")
        .format(t=sql.Identifier(PROGRESS)))]
