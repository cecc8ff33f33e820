"""Tables as their owners declare them, and creating or checking a list of owners.

Every table has one owning module, which declares it once as an ``Owner`` (its DDL, its
tables, its functions) and is the only module that writes SQL against it. The full,
ordered list of owners is ``aura_es.tables.OWNERS`` (what `aura-es db init` creates);
no table is registered by importing a module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from aura_es.errors import SchemaMissing

Ddl = Callable[[], list[sql.Composed | sql.SQL]]


@dataclass(frozen=True)
class Owner:
    """One module's tables: ``ddl`` creates or upgrades them, and is idempotent."""

    name: str
    ddl: Ddl
    tables: tuple[str, ...]
    functions: tuple[str, ...] = field(default=())
    #: Columns added to existing tables since they were first made ("table.column"):
    #: a store from an older release lacks them until `aura-es db init` upgrades it.
    columns: tuple[str, ...] = field(default=())


def create(conn: psycopg.Connection[Any], owners: Sequence[Owner]) -> None:
    """Runs every owner's DDL in order, in one transaction."""
    with conn.transaction(), conn.cursor() as cur:
        for owner in owners:
            for statement in owner.ddl():
                cur.execute(statement)


def missing(conn: psycopg.Connection[Any], owners: Sequence[Owner]) -> list[str]:
    """Tables, functions (named with "()") and columns ("table.column", of tables that
    exist) the owners need and the database lacks."""
    tables = [t for o in owners for t in o.tables]
    functions = [f for o in owners for f in o.functions]
    columns = [c.split(".", 1) for o in owners for c in o.columns]
    with conn.cursor() as cur:
        cur.execute(
            "SELECT t FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, i)"
            " WHERE to_regclass(quote_ident(t)) IS NULL"
            " UNION ALL SELECT f || '()' FROM unnest(%s::text[]) AS f"
            " WHERE to_regproc(quote_ident(f)) IS NULL"
            " UNION ALL SELECT t || '.' || c FROM unnest(%s::text[], %s::text[]) AS x(t, c)"
            " WHERE to_regclass(quote_ident(t)) IS NOT NULL AND NOT EXISTS ("
            "  SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(quote_ident(t))"
            "  AND attname = c AND NOT attisdropped)",
            (tables, functions, [t for t, _ in columns], [c for _, c in columns]),
        )
        return [row[0] for row in cur.fetchall()]


def require(conn: psycopg.Connection[Any], owners: Sequence[Owner]) -> None:
    """``SchemaMissing`` (one line: run `aura-es db init`) when anything is missing."""
    gaps = missing(conn, owners)
    if gaps:
        raise SchemaMissing(gaps)
