"""A projection that proves exactly-once, in-order application per aggregate.

Each event is recorded by (aggregate, version): a second application of one event breaks
the primary key, and an event whose version is not its aggregate's last + 1 raises. Either
failure sends the event to the DLQ, which the partition tests require to stay empty.
``AURA_TEST_HANDLER_DELAY_MS`` makes it wait that long per event (an I/O-bound handler).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from psycopg import sql

from aura_es.projection import EventEnvelope, Projection, Tx

TOPICS = ("aura.debate.started.v1", "aura.debate.argument_added.v1")


class OutOfOrder(AssertionError):
    pass


class ExactlyOnce(Projection):
    key_column = "aggregate_id"

    def tables(self) -> list[str]:
        return [self.storage, self.aux_name("applied")]

    def create(self, tx: Tx) -> None:
        tx.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} (aggregate_id uuid PRIMARY KEY,"
            " version integer NOT NULL)").format(t=self.table))
        tx.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {a} (aggregate_id uuid, version integer,"
            " position bigint NOT NULL, pid integer NOT NULL,"
            " PRIMARY KEY (aggregate_id, version))").format(a=self.aux_table("applied")))

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        delay = float(os.environ.get("AURA_TEST_HANDLER_DELAY_MS") or 0) / 1000
        for event in batch:
            row = tx.execute(sql.SQL("SELECT version FROM {t} WHERE aggregate_id = %s")
                             .format(t=self.table), (event.aggregate_id,)).fetchone()
            last = row[0] if row else 0
            if event.version != last + 1:
                raise OutOfOrder(f"aggregate {event.aggregate_id}: version {event.version}"
                                 f" after {last}")
            tx.execute(sql.SQL(
                "INSERT INTO {t} VALUES (%s, %s) ON CONFLICT (aggregate_id)"
                " DO UPDATE SET version = EXCLUDED.version").format(t=self.table),
                (event.aggregate_id, event.version))
            tx.execute(sql.SQL("INSERT INTO {a} VALUES (%s, %s, %s, %s)").format(
                a=self.aux_table("applied")),
                (event.aggregate_id, event.version, event.position, os.getpid()))
            if delay:
                time.sleep(delay)


class WaitsPerEvent(ExactlyOnce):
    """An I/O-bound handler (the partitions benchmark): it waits 1 ms per event, as a call
    to another service would, then records the batch in one statement (a second
    application of an event still breaks the primary key)."""

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        for _ in batch:
            time.sleep(0.001)
        tx.cursor.executemany(
            sql.SQL("INSERT INTO {a} VALUES (%s, %s, %s, %s)").format(
                a=self.aux_table("applied")),
            [(e.aggregate_id, e.version, e.position, os.getpid()) for e in batch])
