"""Who may write each partition of a projection: the ``owner`` and ``epoch`` of its
checkpoint row.

A worker claims a partition that has no owner, or whose owner is no longer a live member
(``presence.members``): the claim makes it the owner and raises the epoch. Every batch
then locks the row and checks that owner and epoch are still its own, in the transaction
that writes the read model, the checkpoint and the outbox (``BatchRunner``): a worker that
lost its partition (paused past its lease, cut off) can never commit to it again (G12).
A worker gives a partition up only between batches, after its last one committed.

Rows locked by a batch in flight are skipped, never waited for: a claim never blocks a
worker's loop behind another's transaction.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import psycopg
from psycopg import sql

from aura_es.projection.state.checkpoints import TABLE

_T = sql.Identifier(TABLE)

_CLAIM = sql.SQL(
    "WITH free AS (SELECT projection, partition FROM {t} WHERE projection = %s"
    " AND partition = %s AND (owner IS NULL OR owner = %s OR owner <> ALL(%s))"
    " FOR UPDATE SKIP LOCKED)"
    " UPDATE {t} SET owner = %s, epoch = {t}.epoch + 1 FROM free"
    " WHERE {t}.projection = free.projection AND {t}.partition = free.partition"
    " RETURNING {t}.epoch"
).format(t=_T)


def claim(
    conn: psycopg.Connection[Any], name: str, partition: int, worker_id: str,
    live: Collection[str],
) -> int | None:
    """Makes ``worker_id`` the owner of the partition if it has no live owner but itself;
    returns the new epoch, or None when it is someone else's (or locked by a batch)."""
    with conn.transaction():
        row = conn.execute(
            _CLAIM, (name, partition, worker_id, list(live), worker_id)).fetchone()
    return int(row[0]) if row else None


def release(conn: psycopg.Connection[Any], name: str, partition: int, worker_id: str,
            epoch: int) -> None:
    """Gives the partition up (its last batch has committed); a lease that already moved
    on is left alone."""
    with conn.transaction():
        conn.execute(
            sql.SQL("UPDATE {t} SET owner = NULL WHERE projection = %s AND partition = %s"
                    " AND owner = %s AND epoch = %s").format(t=_T),
            (name, partition, worker_id, epoch))


def release_all(conn: psycopg.Connection[Any], worker_id: str) -> None:
    with conn.transaction():
        conn.execute(sql.SQL("UPDATE {t} SET owner = NULL WHERE owner = %s").format(t=_T),
                     (worker_id,))

