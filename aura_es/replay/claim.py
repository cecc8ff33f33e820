"""One replay per projection at a time, across hosts: a session advisory lock, and a row
naming its holder so a second replay can say who is already at it."""

from __future__ import annotations

import os
import socket
from typing import Any

import psycopg
from psycopg import sql

from aura_es import locks
from aura_es.errors import AuraError
from aura_es.store import owners

CLAIMS = "aura_replay_claims"
_NAMESPACE = "aura.replay:"


class ReplayRunning(AuraError):
    """Another replay of the same projection holds its claim."""


def ddl() -> list[sql.Composed | sql.SQL]:
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " projection text PRIMARY KEY,"
            " kind text NOT NULL,"
            " owner text NOT NULL,"
            " started_at timestamptz NOT NULL DEFAULT now())"
        ).format(t=sql.Identifier(CLAIMS)),
    ]


OWNER = owners.Owner("replay claims", ddl, (CLAIMS,))


def owner() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def claim(conn: psycopg.Connection[Any], projection: str, kind: str) -> None:
    """Takes the projection's replay lock for this session, or raises ``ReplayRunning``."""
    if not locks.try_lock(conn, _NAMESPACE + projection):
        holder = conn.execute(
            sql.SQL("SELECT kind, owner, started_at FROM {t} WHERE projection = %s").format(
                t=sql.Identifier(CLAIMS)
            ),
            (projection,),
        ).fetchone()
        who = (
            f"a {holder[0]} by {holder[1]}, started {holder[2]:%Y-%m-%d %H:%M:%S %Z}"
            if holder else "another session"
        )
        raise ReplayRunning(f"projection {projection!r} is already being replayed: {who}")
    # The lock makes this session the only writer of the row; a stale row from a
    # replay that died is simply overwritten.
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} (projection, kind, owner) VALUES (%s, %s, %s)"
            " ON CONFLICT (projection) DO UPDATE SET kind = EXCLUDED.kind,"
            " owner = EXCLUDED.owner, started_at = now()"
        ).format(t=sql.Identifier(CLAIMS)),
        (projection, kind, owner()),
    )


def release(conn: psycopg.Connection[Any], projection: str) -> None:
    if conn.broken or conn.closed:
        return
    conn.execute(
        sql.SQL("DELETE FROM {t} WHERE projection = %s").format(t=sql.Identifier(CLAIMS)),
        (projection,),
    )
    locks.unlock(conn, _NAMESPACE + projection)
