"""Which tables belong to which read model: recorded when they are created, never guessed.

Every table a projection's runner creates is registered here, with its projection,
generation and the stable name readers use for it. A replay drops exactly the tables
registered to the generation it replaces, and a runner refuses to adopt a table that
another projection owns, or one that exists without being a read model (a user's own
table of the same name): aura-es never writes into or drops a table it did not create.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from aura_es.errors import ConfigurationError
from aura_es.store import owners

TABLE = "aura_read_model_tables"
_T = sql.Identifier(TABLE)


def ddl() -> list[sql.Composed | sql.SQL]:
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " name text PRIMARY KEY,"
            " projection text NOT NULL,"
            " generation integer NOT NULL,"
            " stable_name text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        ).format(t=_T),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (projection, generation)").format(
            i=sql.Identifier(f"{TABLE}_projection_idx"), t=_T
        ),
    ]


OWNER = owners.Owner("read-model tables", ddl, (TABLE,))


@dataclass(frozen=True)
class Registered:
    name: str
    stable_name: str


def claim(
    cur: psycopg.Cursor[Any], projection: str, generation: int,
    tables: Sequence[str], stable_names: Sequence[str], *, adopt_existing: bool,
) -> None:
    """Registers ``tables`` to ``projection``'s ``generation`` before they are created.

    ``adopt_existing``: the read model existed before tables were registered (its
    checkpoint is older than this table), so unregistered tables it finds are its own.
    """
    # Serialises claims of the same names (two runners starting at once).
    cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (TABLE,))
    owners = {
        row[0]: (row[1], int(row[2]))
        for row in cur.execute(
            sql.SQL("SELECT name, projection, generation FROM {t} WHERE name = ANY(%s)")
            .format(t=_T), (list(tables),),
        )
    }
    existing = set(_existing_relations(cur, tables))
    for name, stable in zip(tables, stable_names, strict=True):
        owner = owners.get(name)
        if owner is not None and owner[0] != projection:
            raise ConfigurationError(
                f"projection {projection!r}: table {name!r} belongs to projection"
                f" {owner[0]!r}; give one of them another storage name"
            )
        if owner is None and name in existing and not adopt_existing:
            raise ConfigurationError(
                f"projection {projection!r}: table {name!r} already exists and is not a read"
                " model aura-es created; aura-es will not write into (or later drop) it:"
                " choose another storage name or drop the table yourself"
            )
        if owner is None:
            cur.execute(
                sql.SQL("INSERT INTO {t} (name, projection, generation, stable_name)"
                        " VALUES (%s, %s, %s, %s)").format(t=_T),
                (name, projection, generation, stable),
            )


def tables_of(cur: psycopg.Cursor[Any], projection: str, generation: int) -> list[Registered]:
    rows = cur.execute(
        sql.SQL("SELECT name, stable_name FROM {t} WHERE projection = %s AND generation = %s"
                " ORDER BY name").format(t=_T),
        (projection, generation),
    ).fetchall()
    return [Registered(row[0], row[1]) for row in rows]


def existing(cur: psycopg.Cursor[Any], names: Sequence[str]) -> list[str]:
    """Which of ``names`` are tables in the current schema, in the given order."""
    found = set(_existing_relations(cur, names, kinds=("r", "p")))
    return [n for n in names if n in found]


def _existing_relations(
    cur: psycopg.Cursor[Any], names: Sequence[str], kinds: Sequence[str] = ("r", "p", "v", "m")
) -> list[str]:
    return [
        row[0]
        for row in cur.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace"
            " AND c.relname = ANY(%s) AND c.relkind = ANY(%s)",
            (list(names), list(kinds)),
        )
    ]


def forget(cur: psycopg.Cursor[Any], names: Sequence[str]) -> None:
    cur.execute(sql.SQL("DELETE FROM {t} WHERE name = ANY(%s)").format(t=_T), (list(names),))


def rename(cur: psycopg.Cursor[Any], old: str, new: str) -> None:
    cur.execute(sql.SQL("UPDATE {t} SET name = %s WHERE name = %s").format(t=_T), (new, old))
