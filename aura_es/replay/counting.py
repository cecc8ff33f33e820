"""How many events a replay has ahead of it: for progress, ETAs and dry runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from aura_es.store.recorder import EVENTS_TABLE


def pending_events(
    conn: psycopg.Connection[Any], topics: Sequence[str], after: int, upto: int
) -> int:
    """Events of ``topics`` with ``after < position <= upto``."""
    if upto <= after:
        return 0
    row = conn.execute(
        sql.SQL(
            "SELECT count(*) FROM {e} WHERE notification_id > %s AND notification_id <= %s"
            " AND topic = ANY(%s)"
        ).format(e=sql.Identifier(EVENTS_TABLE)),
        (after, upto, list(topics)),
    ).fetchone()
    return int(row[0]) if row else 0


def head(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        sql.SQL("SELECT coalesce(max(notification_id), 0) FROM {}").format(
            sql.Identifier(EVENTS_TABLE)
        )
    ).fetchone()
    return int(row[0]) if row else 0
