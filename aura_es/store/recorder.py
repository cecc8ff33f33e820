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

    The key rows go in last, after the events and under the recorder's table lock: a
    statement that fails in pipeline mode makes Postgres skip the ones queued after it,
    and skipped PREPAREs would leave psycopg's prepared-statement cache wrong. Last, a
    duplicate key only aborts the transaction. The IntegrityError it raises is turned
    by the application into "duplicate, here is the original result".
    """

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = EVENTS_TABLE):
        super().__init__(datastore, events_table_name=events_table_name)
        self.sql_create_statements.extend(idempotency.DDL)

    def _fetch_ids_after_insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> Sequence[int] | None:
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        records: list[idempotency.IdempotencyRecord] | None = kwargs.get("idempotency")
        if records:
            curs.execute(idempotency.INSERT, idempotency.insert_params(records))
            # Fetching syncs the pipeline, so a duplicate key raises here, inside the
            # recorder's error handling, not later at commit as an InternalError.
            curs.fetchall()
        return ids
