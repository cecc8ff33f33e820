"""The store's identity: a random id made once by `aura-es db init`.

Every CloudEvent the mirror publishes carries it (``aurastore``, header ``Aura-Store``),
so a stream can tell one store's events from another's: the relay refuses to mirror a
store into a stream that holds another store's events. A copy of the database (a
restored backup, ``CREATE DATABASE … TEMPLATE``) is the same store and keeps the id.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from aura_es.store import owners

TABLE = "aura_store"


def ddl() -> list[sql.Composed | sql.SQL]:
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " one boolean PRIMARY KEY DEFAULT true CHECK (one),"
            " store_id uuid NOT NULL DEFAULT gen_random_uuid(),"
            " created_at timestamptz NOT NULL DEFAULT now())"
        ).format(t=sql.Identifier(TABLE)),
        sql.SQL("INSERT INTO {t} DEFAULT VALUES ON CONFLICT DO NOTHING").format(
            t=sql.Identifier(TABLE)
        ),
    ]


OWNER = owners.Owner("the store's identity", ddl, (TABLE,))

SELECT = sql.SQL("SELECT store_id FROM {t}").format(t=sql.Identifier(TABLE))


def store_id(conn: psycopg.Connection[Any]) -> UUID:
    row = conn.execute(SELECT).fetchone()
    assert row is not None, "aura_store has no row: run `aura-es db init`"
    return UUID(str(row[0]))


async def store_id_async(conn: psycopg.AsyncConnection[Any]) -> UUID:
    cur = await conn.execute(SELECT)
    row = await cur.fetchone()
    assert row is not None, "aura_store has no row: run `aura-es db init`"
    return UUID(str(row[0]))
