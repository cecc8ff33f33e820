"""Checkpoints: how far each read model (and each rebuild's shadow) has applied the log,
which generation of the read model it writes, and the definition that built it.

The only module with SQL on the checkpoints table. A checkpoint row is locked (``lock``)
by every batch before it writes, so two writers of one read model can never interleave.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from aura_es.store import owners
from aura_es.store.eventlog import ORIGIN, Cursor

TABLE = "aura_projection_checkpoints"
_T = sql.Identifier(TABLE)


def ddl() -> list[sql.Composed | sql.SQL]:
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " projection text PRIMARY KEY,"
            " position bigint NOT NULL DEFAULT 0,"
            " events_applied bigint NOT NULL DEFAULT 0,"
            " fingerprint text,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(t=_T),
        # Added after the first release (`db init` upgrades in place): the generation of
        # the read model, and the table it writes (NULL: the catalog's storage itself).
        sql.SQL(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS generation integer NOT NULL DEFAULT 1"
        ).format(t=_T),
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS storage text").format(t=_T),
        # The reader's cursor in the log's order (transaction, position); ``position``
        # stays the highest position covered, for people. A checkpoint from before
        # lock-free appends is the cursor (0, position): every old event has transaction 0.
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS cursor_transaction bigint"
                " NOT NULL DEFAULT 0").format(t=_T),
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS cursor_position bigint").format(
            t=_T),
        sql.SQL("UPDATE {t} SET cursor_position = position WHERE cursor_position IS NULL")
        .format(t=_T),
    ]


OWNER = owners.Owner("checkpoints", ddl, (TABLE,),
                     columns=(f"{TABLE}.cursor_transaction", f"{TABLE}.cursor_position"))


@dataclass(frozen=True)
class Checkpoint:
    name: str
    #: The highest log position the read model covers (for people: lag, status).
    position: int
    events_applied: int
    fingerprint: str | None
    generation: int
    #: The physical table it writes (None: the catalog's ``storage`` itself).
    storage: str | None
    updated_at: datetime | None = None
    #: Where its reader goes on from, in the log's order.
    cursor: Cursor = ORIGIN


_COLUMNS = sql.SQL("projection, position, events_applied, fingerprint, generation, storage,"
                   " updated_at, cursor_transaction, coalesce(cursor_position, position)")


def _of(row: Any) -> Checkpoint:
    return Checkpoint(row[0], int(row[1]), int(row[2]), row[3], int(row[4]), row[5], row[6],
                      Cursor(int(row[7]), int(row[8])))


def get(cur: psycopg.Cursor[Any], name: str, *, lock: bool = False) -> Checkpoint | None:
    """The checkpoint ``name``; ``lock`` holds its row until the transaction ends."""
    row = cur.execute(
        sql.SQL("SELECT {c} FROM {t} WHERE projection = %s" + (" FOR UPDATE" if lock else ""))
        .format(c=_COLUMNS, t=_T),
        (name,),
    ).fetchone()
    return _of(row) if row else None


def every(conn: psycopg.Connection[Any] | psycopg.Cursor[Any]) -> dict[str, Checkpoint]:
    return {c.name: c for c in map(_of, conn.execute(
        sql.SQL("SELECT {c} FROM {t}").format(c=_COLUMNS, t=_T)))}


def ensure(
    cur: psycopg.Cursor[Any], name: str, *, fingerprint: str | None, generation: int,
    storage: str,
) -> Checkpoint:
    """Creates the checkpoint at position 0 if it is new; returns it as it is.

    The fingerprint of the definition that starts a read model stays with it: a later
    worker with another definition is drift, which `status` shows.
    """
    cur.execute(
        sql.SQL("INSERT INTO {t} (projection, fingerprint, generation, storage,"
                " cursor_position) VALUES (%s, %s, %s, %s, 0)"
                " ON CONFLICT (projection) DO NOTHING").format(t=_T),
        (name, fingerprint, generation, storage),
    )
    found = get(cur, name)
    assert found is not None
    return found


def lock_for_batch(cur: psycopg.Cursor[Any], name: str) -> Checkpoint | None:
    """Locks the row for one batch's transaction.

    A read model is derived data: if the server crashes before the batch's commit reaches
    disk, read-model rows and checkpoint are lost together and the events are applied
    again. Consistency (G4) holds; only the wait for the disk goes.
    """
    cur.execute("SET LOCAL synchronous_commit = off")
    return get(cur, name, lock=True)


def advance(
    cur: psycopg.Cursor[Any], name: str, cursor: Cursor, covered: int, applied: int,
) -> None:
    cur.execute(
        sql.SQL("UPDATE {t} SET cursor_transaction = %s, cursor_position = %s,"
                " position = greatest(position, %s), events_applied = events_applied + %s,"
                " updated_at = now() WHERE projection = %s").format(t=_T),
        (cursor.transaction, cursor.position, covered, applied, name),
    )


def count_applied(cur: psycopg.Cursor[Any], name: str, applied: int) -> None:
    """Events applied out of order (a dead letter's retry, a partial replay)."""
    if applied:
        cur.execute(
            sql.SQL("UPDATE {t} SET events_applied = events_applied + %s WHERE projection = %s")
            .format(t=_T),
            (applied, name),
        )


def take_over(cur: psycopg.Cursor[Any], name: str, shadow: Checkpoint) -> None:
    """At a replay's switch: ``name`` becomes what the rebuild's shadow checkpoint says
    (position, events, definition, generation, table); the shadow is deleted."""
    cur.execute(
        sql.SQL(
            "INSERT INTO {t} (projection, position, events_applied, fingerprint,"
            " generation, storage, cursor_transaction, cursor_position)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (projection) DO UPDATE SET position = EXCLUDED.position,"
            " events_applied = EXCLUDED.events_applied,"
            " fingerprint = EXCLUDED.fingerprint, generation = EXCLUDED.generation,"
            " storage = EXCLUDED.storage, cursor_transaction = EXCLUDED.cursor_transaction,"
            " cursor_position = EXCLUDED.cursor_position, updated_at = now()"
        ).format(t=_T),
        (name, shadow.position, shadow.events_applied, shadow.fingerprint, shadow.generation,
         shadow.storage, shadow.cursor.transaction, shadow.cursor.position),
    )
    delete(cur, shadow.name)


def delete(cur: psycopg.Cursor[Any], name: str) -> None:
    cur.execute(sql.SQL("DELETE FROM {t} WHERE projection = %s").format(t=_T), (name,))
