"""The library's PostgreSQL recorder, extended to write idempotency keys with the events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor, sql
from psycopg.rows import DictRow

from aura_es.store import idempotency

EVENTS_TABLE = "aura_events"


class AuraRecorder(PostgresApplicationRecorder):
    """Writes ``idempotency=[IdempotencyRecord, ...]`` given to ``app.save`` in its transaction.

    Events and key rows go in as ONE statement (a data-modifying CTE) after the
    library's table lock and NOTIFY: one round trip less than a second INSERT, and a
    duplicate key aborts the whole statement, so the events are never half-written.
    The IntegrityError it raises is turned by the application into "duplicate, here
    is the original result". Plain typed arrays replace the library's composite type,
    whose client-side encoding is slower.
    """

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = EVENTS_TABLE):
        super().__init__(datastore, events_table_name=events_table_name)
        self.sql_create_statements.extend(idempotency.DDL)
        events = sql.SQL(
            "INSERT INTO {events} (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::bytea[])"
            " RETURNING notification_id"
        ).format(events=sql.Identifier(events_table_name))
        self._insert_plain = events
        self._insert_with_keys = sql.SQL("WITH keys AS ({keys}) {events}").format(
            keys=idempotency.INSERT, events=events
        )

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        columns = (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )
        records: list[idempotency.IdempotencyRecord] | None = kwargs.get("idempotency")
        if records:
            curs.execute(
                self._insert_with_keys, (*idempotency.insert_params(records), *columns),
                binary=True,
            )
        else:
            curs.execute(self._insert_plain, columns, binary=True)
