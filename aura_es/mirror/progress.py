"""Where the relay is, for `aura-es status`: written after every confirmed batch."""

from __future__ import annotations

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


schema.register(ddl, [PROGRESS])


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
