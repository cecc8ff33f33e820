"""Creating and checking every table aura-es needs (`aura-es db init`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from aura_es.errors import SchemaMissing
from aura_es.store.idempotency import TABLE as IDEMPOTENCY_TABLE
from aura_es.store.recorder import EVENTS_TABLE

# Other parts (projections, the mirror) register their DDL here at import time,
# so `db init` creates them all in one place.
EVENT_TIME_FUNCTION = "aura_event_time"


def _event_log_ddl() -> list[sql.Composed | sql.SQL]:
    # When an event was recorded, read from its stored JSON; NULL for a row whose bytes
    # do not decode, so one damaged row never breaks a lag or a time-range query.
    return [sql.SQL(
        "CREATE OR REPLACE FUNCTION {f}(state bytea) RETURNS timestamptz"
        " LANGUAGE plpgsql STABLE PARALLEL SAFE AS $body$"
        " BEGIN RETURN (convert_from(state, 'UTF8')::jsonb ->> 'timestamp')::timestamptz;"
        " EXCEPTION WHEN others THEN RETURN NULL; END $body$"
    ).format(f=sql.Identifier(EVENT_TIME_FUNCTION))]


_extra_ddl: list[Callable[[], list[sql.Composed | sql.SQL]]] = [_event_log_ddl]
_required_tables: list[str] = [EVENTS_TABLE, IDEMPOTENCY_TABLE]
_required_functions: list[str] = [EVENT_TIME_FUNCTION]


def register(ddl: Callable[[], list[sql.Composed | sql.SQL]], tables: list[str]) -> None:
    _extra_ddl.append(ddl)
    _required_tables.extend(t for t in tables if t not in _required_tables)


def create_extra_tables(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction(), conn.cursor() as cur:
        for ddl in _extra_ddl:
            for statement in ddl():
                cur.execute(statement)


def missing_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Tables (and functions, named with "()") that `aura-es db init` would create."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(quote_ident(t)) IS NULL"
            " UNION ALL SELECT f || '()' FROM unnest(%s::text[]) AS f"
            " WHERE to_regproc(quote_ident(f)) IS NULL",
            (_required_tables, _required_functions),
        )
        return [row[0] for row in cur.fetchall()]


def require_tables(conn: psycopg.Connection[Any]) -> None:
    missing = missing_tables(conn)
    if missing:
        raise SchemaMissing(missing)
