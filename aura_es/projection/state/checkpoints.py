"""Checkpoints: how far each read model (and each rebuild's shadow) has applied the log,
which generation of the read model it writes, and the definition that built it.

A read model split into partitions has one row per partition (``partition``, of
``partitions``), each with its own cursor; an unsplit one has the single row 0 of 1.
Every row of one read model carries the same generation, storage and fingerprint.

With ``leases.py`` (which owns the rows' ``owner`` and ``epoch``), the only module with
SQL on the checkpoints table. A checkpoint row is locked (``lock``) by every batch before
it writes, so two writers of one partition can never interleave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from aura_es.errors import ConfigurationError
from aura_es.store import owners, partitioning
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
        # Partitions: a row per (projection, partition), owned by the worker that holds
        # its lease (``owner``) in its ``epoch``: the fence every batch checks.
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS partition integer NOT NULL"
                " DEFAULT 0").format(t=_T),
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS partitions integer NOT NULL"
                " DEFAULT 1").format(t=_T),
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS owner text").format(t=_T),
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0")
        .format(t=_T),
        sql.SQL(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint"
            " WHERE conname = {key}) THEN"
            " ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {old};"
            " ALTER TABLE {t} ADD CONSTRAINT {key_id} PRIMARY KEY (projection, partition);"
            " END IF; END $$"
        ).format(t=_T, key=sql.Literal(f"{TABLE}_partition_key"),
                 old=sql.Identifier(f"{TABLE}_pkey"),
                 key_id=sql.Identifier(f"{TABLE}_partition_key")),
    ]


OWNER = owners.Owner("checkpoints", ddl, (TABLE,),
                     columns=(f"{TABLE}.cursor_transaction", f"{TABLE}.cursor_position",
                              f"{TABLE}.partition", f"{TABLE}.owner"))


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
    partition: int = 0
    partitions: int = 1
    #: The worker holding this partition's lease, and the lease's epoch (the fence).
    owner: str | None = None
    epoch: int = 0


_COLUMNS = sql.SQL("projection, position, events_applied, fingerprint, generation, storage,"
                   " updated_at, cursor_transaction, coalesce(cursor_position, position),"
                   " partition, partitions, owner, epoch")


def _of(row: Any) -> Checkpoint:
    return Checkpoint(row[0], int(row[1]), int(row[2]), row[3], int(row[4]), row[5], row[6],
                      Cursor(int(row[7]), int(row[8])), int(row[9]), int(row[10]), row[11],
                      int(row[12]))


def get(
    cur: psycopg.Cursor[Any], name: str, partition: int = 0, *, lock: bool = False,
) -> Checkpoint | None:
    """Partition ``partition`` of the checkpoint ``name`` (row 0 carries what every row
    shares); ``lock`` holds its row until the transaction ends."""
    row = cur.execute(
        sql.SQL("SELECT {c} FROM {t} WHERE projection = %s AND partition = %s"
                + (" FOR UPDATE" if lock else "")).format(c=_COLUMNS, t=_T),
        (name, partition),
    ).fetchone()
    return _of(row) if row else None


def rows_of(
    cur: psycopg.Connection[Any] | psycopg.Cursor[Any], name: str, *, lock: bool = False,
) -> list[Checkpoint]:
    """Every partition's row of ``name``, in partition order."""
    return [_of(row) for row in cur.execute(
        sql.SQL("SELECT {c} FROM {t} WHERE projection = %s ORDER BY partition"
                + (" FOR UPDATE" if lock else "")).format(c=_COLUMNS, t=_T),
        (name,),
    )]


def every_partition(conn: psycopg.Connection[Any] | psycopg.Cursor[Any]) -> list[Checkpoint]:
    return [_of(row) for row in conn.execute(
        sql.SQL("SELECT {c} FROM {t} ORDER BY projection, partition").format(c=_COLUMNS, t=_T))]


def every(conn: psycopg.Connection[Any] | psycopg.Cursor[Any]) -> dict[str, Checkpoint]:
    """One checkpoint per read model; a split one's is its partitions' together: the
    position and cursor every partition has reached, the events all of them applied."""
    merged: dict[str, Checkpoint] = {}
    for row in every_partition(conn):
        seen = merged.get(row.name)
        merged[row.name] = row if seen is None else _together(seen, row)
    return merged


def _together(a: Checkpoint, b: Checkpoint) -> Checkpoint:
    first = a if a.partition <= b.partition else b
    times = [t for t in (a.updated_at, b.updated_at) if t is not None]
    return replace(
        first, position=min(a.position, b.position),
        events_applied=a.events_applied + b.events_applied,
        updated_at=min(times) if times else None, cursor=min(a.cursor, b.cursor),
        owner=None)


def ensure(
    cur: psycopg.Cursor[Any], name: str, *, fingerprint: str | None, generation: int,
    storage: str, partition: int = 0, partitions: int = 1,
) -> Checkpoint:
    """Creates the checkpoint at position 0 if it is new; returns it as it is.

    The fingerprint of the definition that starts a read model stays with it: a later
    worker with another definition is drift, which `status` shows.
    """
    cur.execute(
        sql.SQL("INSERT INTO {t} (projection, fingerprint, generation, storage,"
                " cursor_position, partition, partitions) VALUES (%s, %s, %s, %s, 0, %s, %s)"
                " ON CONFLICT (projection, partition) DO NOTHING").format(t=_T),
        (name, fingerprint, generation, storage, partition, partitions),
    )
    found = get(cur, name, partition)
    assert found is not None
    return found


def split(cur: psycopg.Cursor[Any], rows: list[Checkpoint], partitions: int) -> None:
    """Splits ``rows`` (every partition of one read model, locked) ``partitions`` ways:
    each new partition goes on from the cursor of the one it splits from; every lease
    ends (the workers claim the new layout afresh)."""
    old = len(rows)
    name = rows[0].name
    for index in range(old, partitions):
        source = rows[partitioning.split_source(index, old)]
        cur.execute(
            sql.SQL("INSERT INTO {t} (projection, position, events_applied, fingerprint,"
                    " generation, storage, cursor_transaction, cursor_position, partition,"
                    " partitions, epoch) VALUES (%s, %s, 0, %s, %s, %s, %s, %s, %s, %s, %s)")
            .format(t=_T),
            (name, source.position, source.fingerprint, source.generation, source.storage,
             source.cursor.transaction, source.cursor.position, index, partitions,
             source.epoch + 1),
        )
    cur.execute(sql.SQL("UPDATE {t} SET partitions = %s, owner = NULL, epoch = epoch + 1"
                        " WHERE projection = %s AND partition < %s").format(t=_T),
                (partitions, name, old))


def lock_for_batch(cur: psycopg.Cursor[Any], name: str, partition: int = 0) -> Checkpoint | None:
    """Locks the row for one batch's transaction.

    A read model is derived data: if the server crashes before the batch's commit reaches
    disk, read-model rows and checkpoint are lost together and the events are applied
    again. Consistency (G4) holds; only the wait for the disk goes.
    """
    cur.execute("SET LOCAL synchronous_commit = off")
    return get(cur, name, partition, lock=True)


def advance(
    cur: psycopg.Cursor[Any], name: str, cursor: Cursor, covered: int, applied: int,
    partition: int = 0,
) -> None:
    cur.execute(
        sql.SQL("UPDATE {t} SET cursor_transaction = %s, cursor_position = %s,"
                " position = greatest(position, %s), events_applied = events_applied + %s,"
                " updated_at = now() WHERE projection = %s AND partition = %s").format(t=_T),
        (cursor.transaction, cursor.position, covered, applied, name, partition),
    )


def count_applied(cur: psycopg.Cursor[Any], name: str, applied: int, partition: int = 0) -> None:
    """Events applied out of order (a dead letter's retry, a partial replay)."""
    if applied:
        cur.execute(
            sql.SQL("UPDATE {t} SET events_applied = events_applied + %s"
                    " WHERE projection = %s AND partition = %s").format(t=_T),
            (applied, name, partition),
        )


def take_over(
    cur: psycopg.Cursor[Any], name: str, shadows: Sequence[Checkpoint], partitions: int = 1,
) -> None:
    """At a replay's switch: ``name`` becomes what the rebuild's shadow checkpoint says
    (position, events, definition, generation, table), split ``partitions`` ways: each
    partition from its own shadow row when the shadow was split the same way, else every
    partition from the one unsplit shadow's cursor. The shadow is deleted; leases end."""
    epoch = max((row.epoch for row in rows_of(cur, name, lock=True)), default=0) + 1
    delete(cur, name)
    split_alike = len(shadows) == partitions
    for index in range(partitions):
        shadow = shadows[index if split_alike else 0]
        applied = shadow.events_applied if split_alike or index == 0 else 0
        cur.execute(
            sql.SQL(
                "INSERT INTO {t} (projection, position, events_applied, fingerprint,"
                " generation, storage, cursor_transaction, cursor_position, partition,"
                " partitions, epoch) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            ).format(t=_T),
            (name, shadow.position, applied, shadow.fingerprint, shadow.generation,
             shadow.storage, shadow.cursor.transaction, shadow.cursor.position, index,
             partitions, epoch),
        )
    delete(cur, shadows[0].name)


def delete(cur: psycopg.Cursor[Any], name: str) -> None:
    cur.execute(sql.SQL("DELETE FROM {t} WHERE projection = %s").format(t=_T), (name,))


def layout(
    cur: psycopg.Cursor[Any], name: str, partitions: int, *, fingerprint: str | None,
    generation: int, storage: str,
) -> list[Checkpoint]:
    """Every partition's row of ``name``, made or split to ``partitions``, in ``cur``'s
    transaction (its rows locked): a new read model gets them all at the origin; one
    with fewer partitions whose count divides ``partitions`` is split; any other change
    is refused (``PartitionsChanged``), nothing written."""
    rows = rows_of(cur, name, lock=True)
    if not rows:
        for index in range(partitions):
            ensure(cur, name, fingerprint=fingerprint, generation=generation,
                   storage=storage, partition=index, partitions=partitions)
        return rows_of(cur, name)
    _refuse_unless_split(name, rows, partitions)
    if len(rows) == partitions:
        return rows
    split(cur, rows, partitions)
    return rows_of(cur, name)


def check_layout(conn: psycopg.Connection[Any], name: str, partitions: int) -> None:
    """``PartitionsChanged`` when a worker with ``partitions`` could not run ``name``'s
    read model as it is laid out now; nothing is written."""
    rows = rows_of(conn, name)
    if rows:
        _refuse_unless_split(name, rows, partitions)


def _refuse_unless_split(name: str, rows: list[Checkpoint], partitions: int) -> None:
    """``rows`` (every partition of ``name``) may be run with ``partitions`` as they are,
    or after a split; otherwise ``PartitionsChanged``."""
    stored = rows[0].partitions
    whole = len(rows) == stored
    if not whole or (stored != partitions and not partitioning.is_split(stored, partitions)):
        raise PartitionsChanged(name, stored, partitions)


class PartitionsChanged(ConfigurationError):
    """The catalog's partition count is not the read model's, nor a split of it."""

    def __init__(self, name: str, stored: int, wanted: int) -> None:
        super().__init__(
            f"projection {name!r}: partitions is {wanted} in this catalog but {stored} in"
            f" the read model; only a multiple of {stored} splits it in place. Rebuild it"
            f" with `aura-es replay {name}`, or run this worker with the catalog the other"
            " workers use"
        )
        self.stored, self.wanted = stored, wanted
