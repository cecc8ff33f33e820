"""Generations of a read model: which tables serve a projection, and its rebuild history.

Generation 1 writes the catalog's ``storage`` tables themselves. A replay builds
generation N into ``<storage>__g<N>`` tables and, at the switch, turns every stable
name into a view of its generation-N table, in the same transaction that hands the
checkpoint over. Readers keep one name; writers always use the physical tables.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from aura_es import identifiers
from aura_es.catalog.model import ProjectionSpec
from aura_es.projection.engine import serving
from aura_es.projection.engine.loading import build
from aura_es.projection.state import registry
from aura_es.store import owners

REBUILDS = "aura_projection_rebuilds"
BUILDING, SWITCHED, ABANDONED = "building", "switched", "abandoned"
_R = sql.Identifier(REBUILDS)


def ddl() -> list[sql.Composed | sql.SQL]:
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " projection text NOT NULL,"
            " generation integer NOT NULL,"
            " storage text NOT NULL,"
            " fingerprint text NOT NULL,"
            " status text NOT NULL DEFAULT 'building',"
            " started_at timestamptz NOT NULL DEFAULT now(),"
            " finished_at timestamptz,"
            " events bigint NOT NULL DEFAULT 0,"
            " seconds double precision NOT NULL DEFAULT 0,"
            " switched_at_position bigint,"
            " PRIMARY KEY (projection, generation))"
        ).format(t=sql.Identifier(REBUILDS)),
        sql.SQL(
            "CREATE UNIQUE INDEX IF NOT EXISTS {i} ON {t} (projection) WHERE status = 'building'"
        ).format(i=sql.Identifier(f"{REBUILDS}_one_building"), t=sql.Identifier(REBUILDS)),
    ]


OWNER = owners.Owner("rebuilds", ddl, (REBUILDS,))


def physical_storage(spec: ProjectionSpec, generation: int) -> str:
    return identifiers.generation_table(spec.storage, generation)


def shadow_checkpoint(spec: ProjectionSpec, generation: int) -> str:
    return f"{spec.name}@g{generation}"


def next_generation(cur: psycopg.Cursor[Any], spec: ProjectionSpec) -> int:
    row = cur.execute(
        sql.SQL("SELECT coalesce(max(generation), 1) FROM {t} WHERE projection = %s").format(
            t=_R
        ),
        (spec.name,),
    ).fetchone()
    assert row is not None
    return max(int(row[0]), serving.current(cur, spec).generation) + 1


def building(cur: psycopg.Cursor[Any], spec: ProjectionSpec) -> tuple[int, str, str] | None:
    """The unfinished rebuild of ``spec``: generation, storage and fingerprint."""
    row = cur.execute(
        sql.SQL(
            "SELECT generation, storage, fingerprint FROM {t}"
            " WHERE projection = %s AND status = %s"
        ).format(t=_R),
        (spec.name, BUILDING),
    ).fetchone()
    return (int(row[0]), row[1], row[2]) if row else None


def last_rate(cur: psycopg.Cursor[Any], spec: ProjectionSpec) -> float | None:
    """Events per second of the projection's last finished rebuild, if any."""
    row = cur.execute(
        sql.SQL(
            "SELECT events / nullif(seconds, 0) FROM {t} WHERE projection = %s"
            " AND status = %s AND events > 1000 ORDER BY finished_at DESC LIMIT 1"
        ).format(t=_R),
        (spec.name, SWITCHED),
    ).fetchone()
    return float(row[0]) if row and row[0] else None


def start(
    cur: psycopg.Cursor[Any], spec: ProjectionSpec, generation: int, storage: str,
    fingerprint: str,
) -> None:
    cur.execute(
        sql.SQL("INSERT INTO {t} (projection, generation, storage, fingerprint)"
                " VALUES (%s, %s, %s, %s)").format(t=_R),
        (spec.name, generation, storage, fingerprint),
    )


def finish(
    cur: psycopg.Cursor[Any], spec: ProjectionSpec, generation: int, *, events: int,
    seconds: float, switched_at: int,
) -> None:
    cur.execute(
        sql.SQL(
            "UPDATE {t} SET status = %s, finished_at = now(), events = %s,"
            " seconds = seconds + %s, switched_at_position = %s"
            " WHERE projection = %s AND generation = %s"
        ).format(t=_R),
        (SWITCHED, events, seconds, switched_at, spec.name, generation),
    )


def abandon(cur: psycopg.Cursor[Any], spec: ProjectionSpec, generation: int) -> None:
    cur.execute(
        sql.SQL("UPDATE {t} SET status = %s, finished_at = now()"
                " WHERE projection = %s AND generation = %s").format(t=_R),
        (ABANDONED, spec.name, generation),
    )


def in_progress(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Per projection, the generation a rebuild is building now."""
    return {row[0]: int(row[1]) for row in conn.execute(
        sql.SQL("SELECT projection, generation FROM {t} WHERE status = %s").format(t=_R),
        (BUILDING,))}


def generation_tables(
    cur: psycopg.Cursor[Any], spec: ProjectionSpec, generation: int, storage: str
) -> list[registry.Registered]:
    """The tables of one generation of ``spec``'s read model, as recorded when they were
    created. A read model from before tables were recorded has none recorded: then its
    tables are exactly those the current definition names for ``storage`` (never a name
    matched by prefix, which could be another projection's table)."""
    recorded = registry.tables_of(cur, spec.name, generation)
    if recorded:
        return recorded
    physical = build(spec, storage).tables()
    stable = build(spec).tables()
    present = set(registry.existing(cur, physical))
    return [
        registry.Registered(name, stable_name)
        for name, stable_name in zip(physical, stable, strict=True) if name in present
    ]


def relation_kind(cur: psycopg.Cursor[Any], name: str) -> str | None:
    """'table', 'view' or None for a name in the current schema."""
    row = cur.execute(
        "SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(quote_ident(%s))", (name,)
    ).fetchone()
    if row is None:
        return None
    return {"r": "table", "v": "view"}.get(row[0], str(row[0]))
