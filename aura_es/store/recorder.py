"""The library's PostgreSQL recorder, extended to write idempotency keys with the events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg import Cursor, sql
from psycopg.rows import DictRow

from aura_es.store import idempotency

EVENTS_TABLE = "aura_events"
#: How long an append waits for the events table's lock before it gives up (and is
#: retried): another writer holds it this long only if it is stuck.
LOCK_TIMEOUT_SECONDS = 10
#: No append statement runs longer than this, so no writer holds the lock unbounded.
STATEMENT_TIMEOUT_SECONDS = 30


class AuraRecorder(PostgresApplicationRecorder):
    """Writes the ``KeyRows`` given to ``app.save`` in the transaction of its events.

    Events and key rows go in as ONE statement (a data-modifying CTE) after the table
    lock and NOTIFY: a duplicate key aborts the whole statement, so the events are never
    half-written. The IntegrityError it raises is turned by the application into
    "duplicate, here is the original result". Plain typed arrays replace the library's
    composite type, whose client-side encoding is slower.

    The library sends the append in psycopg's pipeline mode, which deadlocks with
    large parameters (an event of a few hundred KB over a Unix socket never returned,
    holding the table lock). Here the lock and NOTIFY go as one simple-protocol round
    trip and the INSERT as a second: as fast on a local server (the commit's WAL flush
    dominates), and no size hangs. Lock and statement timeouts bound how long any
    writer can hold or wait for the lock.
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
        self._lock_and_notify = sql.SQL(
            "SET LOCAL lock_timeout = '{lock}s'; SET LOCAL statement_timeout = '{stmt}s';"
            " LOCK TABLE {events} IN EXCLUSIVE MODE; NOTIFY {channel}"
        ).format(
            lock=sql.Literal(LOCK_TIMEOUT_SECONDS), stmt=sql.Literal(STATEMENT_TIMEOUT_SECONDS),
            events=sql.Identifier(events_table_name), channel=sql.Identifier(self.channel_name),
        )

    @retry((InterfaceError, OperationalError), max_attempts=3, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return []
        with self.datastore.get_connection() as conn, conn.transaction(), \
                conn.cursor() as curs:
            self._insert_stored_events(curs, stored_events, **kwargs)
            return [row["notification_id"] for row in curs.fetchall()]

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> None:
        # No parameters: psycopg sends it with the simple protocol, all in one round trip.
        curs.execute(self._lock_and_notify)
        columns = (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )
        keys = idempotency.KeyRows.from_save_kwargs(kwargs)
        if keys is not None and keys.records:
            curs.execute(
                self._insert_with_keys, (*idempotency.insert_params(keys.records), *columns),
                binary=True,
            )
        else:
            curs.execute(self._insert_plain, columns, binary=True)
