"""The library's PostgreSQL recorder, extended to write idempotency keys with the events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow

from aura_es.store import idempotency

EVENTS_TABLE = "aura_events"


class AuraRecorder(PostgresApplicationRecorder):
    """Writes ``idempotency=[IdempotencyRecord, ...]`` given to ``app.save`` in its transaction.

    The key rows are inserted before the recorder takes its table lock, so a concurrent
    duplicate waits on the unique index (not on the lock) and then fails with an
    IntegrityError, which the application turns into "duplicate, here is the original".
    """

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = EVENTS_TABLE):
        super().__init__(datastore, events_table_name=events_table_name)
        self.sql_create_statements.extend(idempotency.DDL)

    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> None:
        records: list[idempotency.IdempotencyRecord] | None = kwargs.get("idempotency")
        if records:
            curs.execute(idempotency.INSERT, idempotency.insert_params(records), prepare=True)
