"""Named PostgreSQL session advisory locks: one holder per name across every host.

A lock lives as long as the session that took it: a holder that dies (SIGKILL, a lost
host) drops its connection and so its lock, and whoever polls for it takes over. Names
are hashed with ``hashtextextended`` (stable across servers and releases).
"""

from __future__ import annotations

from typing import Any

import psycopg

_TRY = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"


def try_lock(conn: psycopg.Connection[Any], name: str) -> bool:
    """Takes the lock ``name`` for this session if it is free; never waits."""
    row = conn.execute(_TRY, (name,)).fetchone()
    return bool(row and row[0])


async def try_lock_async(conn: psycopg.AsyncConnection[Any], name: str) -> bool:
    cur = await conn.execute(_TRY, (name,))
    row = await cur.fetchone()
    return bool(row and row[0])


def unlock(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(_UNLOCK, (name,))


def lock_for_transaction(cur: psycopg.Cursor[Any], name: str) -> None:
    """Waits for the lock ``name``; it is held until the transaction ends."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))
