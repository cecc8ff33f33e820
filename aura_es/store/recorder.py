"""The library's PostgreSQL recorder, appending without a table lock.

One append is ONE statement in its own transaction (autocommit): the idempotency key
rows and the events; the NOTIFY that wakes readers follows the commit (``wakeup.py``
says why it is not inside). A duplicate key aborts the whole statement, so the events
are never half-written; the IntegrityError it raises is turned by the application into
"duplicate, here is the original result".

No lock serialises writers, so concurrent appends commit in parallel and PostgreSQL
groups their WAL flushes. Two columns keep the log well ordered without it:

- ``transaction_id``: the appending transaction's id (``pg_current_xact_id()``). Readers
  order by ``(transaction_id, notification_id)`` and read only transactions older than
  every running one (``store/eventlog.py``): gap-safe whatever the commit order.
- ``notification_id``: each append reserves a contiguous block of positions (a
  microsecond-long session lock around the sequence, released before the insert), so
  one append's events never interleave with another's.

Events stored before this change keep ``transaction_id = 0``: they stay ahead of every
new one, in their old order.

An append runs on the pooled connection the recorder keeps between appends
(``own_connection.py``; another thread's append takes one from the pool), and a
one-event append by a statement prepared once on that connection and run by libpq
(``prepared.py``): together ~40 µs less client CPU a keyed command (issue 27).

``serial=True`` (``EventSourcedApp.serial_appends``, env ``AURA_ES_SERIAL_APPENDS``)
takes the table lock again, for users of the library's own readers (notification logs,
``subscribe``, its ``ProjectionRunner``): they read in position order, which is only
gap-safe when positions commit in order. Every writer of the store must then use it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import DataError, InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg import Cursor, sql
from psycopg.rows import tuple_row

from aura_es.errors import ServiceUnavailable
from aura_es.store import idempotency, keystore, pooled, wakeup
from aura_es.store.arrays import BigInts, Blobs, Texts, Uuids, as_uuid
from aura_es.store.at_once import AppendAtOnce
from aura_es.store.chunked import CHUNKED_FROM, ChunkStatements, append_statement
from aura_es.store.keyring import Keyring, SubjectErased
from aura_es.store.mapper import SealedStoredEvent, stored_event
from aura_es.store.names import EVENTS_TABLE, RESERVE_FUNCTION
from aura_es.store.own_connection import OwnConnection
from aura_es.store.pipelined import StepwiseAppend, append_in_chunks
from aura_es.store.prepared import PreparedAppend

#: No append statement runs longer than this (a stalled client cannot hold rows it
#: inserted, nor its keys, for ever).
STATEMENT_TIMEOUT_SECONDS = 30
#: In serial mode, the longest a writer waits for the events table's lock; the wait is
#: not retried (a writer queued behind a stalled one would otherwise wait 3 x 30 s).
SERIAL_LOCK_TIMEOUT_SECONDS = 10
# The session lock that makes a block reservation atomic (a constant key of ours).
_RESERVE_LOCK_KEY = 0x61757261_706F73  # "aurapos"


def log_ddl(table: str) -> list[sql.Composed | sql.SQL]:
    """The columns, indexes and function the lock-free append and readers need; each
    statement can run again, and upgrades a log written with the table lock in place."""
    t = sql.Identifier(table)
    sequence = sql.Literal(f"{table}_notification_id_seq")
    return [
        # Existing rows read as 0 (no table rewrite), so they stay first, in order.
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS transaction_id bigint"
                " NOT NULL DEFAULT 0").format(t=t),
        sql.SQL("ALTER TABLE {t} ALTER COLUMN transaction_id"
                " SET DEFAULT (pg_current_xact_id()::text::bigint)").format(t=t),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (transaction_id, notification_id)")
        .format(i=sql.Identifier(f"{table}_cursor_idx"), t=t),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t}"
                " (topic, transaction_id, notification_id)")
        .format(i=sql.Identifier(f"{table}_topic_cursor_idx"), t=t),
        # Whose personal data an event holds (its fields are sealed with their key):
        # what an erasure's proof and scrub find the subject's events by.
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS subject text").format(t=t),
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (subject, notification_id)"
                " WHERE subject IS NOT NULL")
        .format(i=sql.Identifier(f"{table}_subject_idx"), t=t),
        # The session lock is held only around nextval/setval, never to the commit; a
        # cancel (statement_timeout) inside releases it before the error goes on.
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {f}(n integer) RETURNS bigint LANGUAGE plpgsql"
            " VOLATILE AS $body$ DECLARE first bigint; BEGIN"
            " BEGIN"
            "  PERFORM pg_advisory_lock({k});"
            "  first := nextval({s});"
            "  IF n > 1 THEN PERFORM setval({s}, first + n - 1); END IF;"
            " EXCEPTION WHEN OTHERS OR QUERY_CANCELED THEN"
            "  PERFORM pg_advisory_unlock_all(); RAISE;"
            " END;"
            " PERFORM pg_advisory_unlock({k});"
            " RETURN first; END $body$"
        ).format(f=sql.Identifier(RESERVE_FUNCTION), k=sql.Literal(_RESERVE_LOCK_KEY),
                 s=sequence),
    ]


class _Turn:
    """One use of a connection (``AuraRecorder.connection``): the kept one, or one from
    the pool while another thread has it. A class, not a generator: entered once per
    append, where a generator's frames cost a keyed command ~2 µs of client CPU."""

    __slots__ = ("_datastore", "_own", "_owner", "_pooled")

    def __init__(self, owner: OwnConnection, datastore: PostgresDatastore) -> None:
        self._owner = owner
        self._datastore = datastore
        self._own: psycopg.Connection[Any] | None = None
        self._pooled: contextlib.AbstractContextManager[psycopg.Connection[Any]] | None = None

    def __enter__(self) -> psycopg.Connection[Any]:
        try:
            self._own = self._owner.take()
        except psycopg.Error as e:
            raise pooled.as_persistence_error(e) from e
        if self._own is not None:
            return self._own
        self._pooled = pooled.connection(self._datastore)  # another thread is using it
        return self._pooled.__enter__()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool | None:
        if self._own is None:
            assert self._pooled is not None
            return self._pooled.__exit__(kind, error, traceback)
        self._owner.give_back(self._own)
        if isinstance(error, psycopg.Error):
            raise pooled.as_persistence_error(error) from error
        return None


class SerialLockTimeout(ServiceUnavailable):
    """Serial mode: the events table's lock stayed taken past its bound. Not retried by
    the recorder (its retries are for lost connections)."""


class AuraRecorder(PostgresApplicationRecorder):
    """Writes the ``KeyRows`` given to ``app.save`` in the statement of its events."""

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = EVENTS_TABLE,
        serial: bool = False, wake_interval: float = wakeup.MIN_INTERVAL_SECONDS,
    ):
        super().__init__(datastore, events_table_name=events_table_name)
        self.serial = serial
        #: Forgets a subject's cached key when an append finds them erased (set by the
        #: application that seals with it).
        self.keyring: Keyring | None = None
        # SET LOCAL: the bound holds for this transaction only, whoever shares the session.
        self._lock = sql.SQL(
            "SET LOCAL lock_timeout = {ms}; LOCK TABLE {t} IN EXCLUSIVE MODE"
        ).format(ms=sql.Literal(f"{SERIAL_LOCK_TIMEOUT_SECONDS * 1000}"),
                 t=sql.Identifier(events_table_name))
        self.sql_create_statements.extend(log_ddl(events_table_name))  # type: ignore[arg-type]
        # A NOTIFY takes a transaction id, and its commit would wait for a WAL flush under
        # the server-wide notify lock. It is only a hint (readers also poll), so it need
        # not wait for the disk. SET LOCAL, in one round trip: a session-wide SET would
        # leak to other clients through a transaction-pooling proxy (pgbouncer).
        self._notify = sql.SQL(
            "BEGIN; SET LOCAL synchronous_commit = off; NOTIFY {}; COMMIT"
        ).format(sql.Identifier(self.channel_name))
        self._notifier: psycopg.Connection[Any] | None = None
        self._own = OwnConnection(datastore.pool)
        self._select_by_shape: dict[tuple[bool, ...], sql.SQL] = {}
        self._notifier_pid = 0
        self.waker = wakeup.register(wakeup.Waker(
            self._send_notify, self._close_notifier, min_interval=wake_interval))
        # One event (most commands): plain parameters, not arrays (dumped in Python, ~60
        # µs of a keyed command's client CPU through psycopg's cursor).
        event = sql.SQL(
            "ev AS (INSERT INTO {events}"
            " (notification_id, originator_id, originator_version, topic, state)"
            " VALUES ({reserve}(1), %s::uuid, %s::bigint, %s::text, %s::bytea)"
            " RETURNING notification_id)"
            " SELECT notification_id FROM ev"
        ).format(reserve=sql.Identifier(RESERVE_FUNCTION),
                 events=sql.Identifier(events_table_name))
        # Events with sealed personal fields: the subject column, and a check in the same
        # statement that no subject is erased (``keystore``: AUR01). ``ok`` is joined into
        # the insert, so it runs first, and its value is tested: the check is STABLE, and
        # a value nobody reads was never computed (PostgreSQL 16 dropped it, and the
        # appends of an erased subject's writers holding its key went through).
        check = sql.SQL("ok AS (SELECT {f}(%s::text[]) AS ok)").format(
            f=sql.Identifier(keystore.CHECK_FUNCTION))
        into = sql.SQL(
            "ev AS (INSERT INTO {events}"
            " (notification_id, originator_id, originator_version, topic, state, subject)"
        ).format(events=sql.Identifier(events_table_name))
        reserve = sql.Identifier(RESERVE_FUNCTION)
        # One sealed event (most commands): plain parameters, as ``event`` below.
        sealed_one = sql.SQL(
            "{check}, {into} SELECT {reserve}(1), %s::uuid, %s::bigint, %s::text, %s::bytea,"
            " %s::text FROM ok WHERE ok.ok = 1 RETURNING notification_id)"
            " SELECT notification_id FROM ev"
        ).format(check=check, into=into, reserve=reserve)
        # Many events: the key rows and the events from arrays (``chunked.py``); a long
        # run of them in chunks.
        table = events_table_name
        self._insert_plain = sql.SQL(append_statement(table, sealed=False, keys=False))
        self._insert_with_keys = sql.SQL(append_statement(table, sealed=False, keys=True))
        self._insert_sealed = sql.SQL(append_statement(table, sealed=True, keys=False))
        self._insert_sealed_with_keys = sql.SQL(append_statement(table, sealed=True, keys=True))
        self._chunked = ChunkStatements(table)
        self._insert_sealed_one = _rendered(sql.SQL("WITH {one}").format(one=sealed_one))
        self._insert_sealed_one_with_key = _rendered(
            sql.SQL("WITH keys AS ({key}), {one}").format(
                key=idempotency.INSERT_ONE, one=sealed_one))
        # Rendered once: psycopg would compose the statement again on every append.
        self._insert_one = _rendered(sql.SQL("WITH {event}").format(event=event))
        self._insert_one_with_key = _rendered(sql.SQL("WITH keys AS ({key}), {event}").format(
            key=idempotency.INSERT_ONE, event=event))
        # The same one-event statements, run by libpq with our own parameter encoding
        # (``prepared.py``).
        self._prepared_one = PreparedAppend(self._insert_one.as_string())
        self._prepared_one_with_key = PreparedAppend(self._insert_one_with_key.as_string())
        self._prepared_sealed_one = PreparedAppend(self._insert_sealed_one.as_string())
        self._prepared_sealed_one_with_key = PreparedAppend(
            self._insert_sealed_one_with_key.as_string())
        self._insert_keys = PreparedAppend(idempotency.INSERT.as_string())
        self._look_up_keys = PreparedAppend(idempotency.LOOKUP.as_string())

    @retry((InterfaceError, OperationalError), max_attempts=3, wait=0.2)
    def insert_one(self, stored: StoredEvent,
                   record: idempotency.IdempotencyRecord | None) -> int:
        """One event and its key row, most commands' append: ``insert_events`` of one
        event, without the steps it takes for any number of them."""
        with self.connection() as conn:
            if self.serial or not _speaks_utf8(conn):
                keys = idempotency.KeyRows((record,) if record else ())
                [position] = self._append(conn, (stored,), keys.as_save_kwargs())
            else:
                [position] = self._append_one(conn, stored, record)
        self.waker.committed()
        return position

    @retry((InterfaceError, OperationalError), max_attempts=3, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return []
        with self.connection() as conn:
            positions = self._append(conn, stored_events, kwargs)
        self.waker.committed()
        return positions

    @contextlib.contextmanager
    def appending_at_once(self, key_hashes: Sequence[str]) -> Iterator[AppendAtOnce | None]:
        """Which of ``key_hashes`` are stored, asked first, then a transaction a batch
        inserts its key rows in as its commands are decided, then its events
        (``at_once.py``); None where appends are not pipelined (serial mode, a session
        not in UTF-8). Rolled back unless appended."""
        if self.serial:
            yield None
            return
        at_once: AppendAtOnce | None = None
        try:
            with self.connection() as conn:
                if not _speaks_utf8(conn):
                    yield None
                    return
                with StepwiseAppend(conn) as stepwise:
                    at_once = AppendAtOnce(stepwise, self._chunked, self._insert_keys,
                                           self._look_up_keys, key_hashes)
                    yield at_once
        finally:
            if at_once is not None and at_once.appended:
                self.waker.committed()

    def stored_keys(self, key_hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored keys among ``key_hashes``, with the positions their commands stored
        (``idempotency.LOOKUP``): a retry's answer, by the statement prepared on the
        connection and run by libpq. Through psycopg's cursor, the lookup cost a retried
        command a third of its client CPU, most of it composing the statement again
        (issue 27)."""
        with self.connection() as conn:
            return idempotency.stored_in(
                conn, self._look_up_keys.result(conn, (list(key_hashes),)))

    def connection(self) -> _Turn:
        """The connection this recorder keeps when no other thread is using it, else one
        from the pool (``own_connection.py``); driver errors become the library's."""
        return _Turn(self._own, self.datastore)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_events(
        self, originator_id: UUID | str, *, gt: int | None = None, lte: int | None = None,
        desc: bool = False, limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """The library's read of one aggregate's events (what loading it runs), on the
        kept connection, by a statement rendered once per shape, in binary: the
        library's own composes its SQL on every call, checks out a pooled connection
        through its wrapper and reads every column as dicts, ~60 µs of an update
        command's client CPU (issue 27)."""
        shape = (gt is not None, lte is not None, desc, limit is not None)
        statement = self._select_by_shape.get(shape)
        if statement is None:
            statement = self._select_by_shape[shape] = _select_events(
                self.events_table_name, *shape)
        try:
            aggregate_id = as_uuid(originator_id)
        except ValueError:  # as the library's read: the server refuses it, a DataError
            raise DataError(f"aggregate id {str(originator_id)[:40]!r} is not a UUID") from None
        params = [value for value in (gt, lte, limit) if value is not None]
        with self.connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(statement, (aggregate_id, *params), prepare=True,
                         binary=True)
            return [stored_event(row[0], row[1], row[2], bytes(row[3]))
                    for row in curs.fetchall()]

    def _append(self, conn: psycopg.Connection[Any], stored_events: Sequence[StoredEvent],
                kwargs: dict[str, Any]) -> list[int]:
        if (not self.serial and (len(stored_events) == 1 or len(stored_events) >= CHUNKED_FROM)
                and _speaks_utf8(conn)):
            keys = idempotency.KeyRows.from_save_kwargs(kwargs)
            records = keys.records if keys is not None else ()
            if len(stored_events) > 1:
                return self._append_in_chunks(conn, stored_events, records)
            if len(records) <= 1:
                return self._append_one(conn, stored_events[0], records[0] if records else None)
        # Rows as tuples: the dict row factory builds the column names on every append.
        with conn.cursor(row_factory=tuple_row) as curs:
            assert conn.autocommit  # one statement, one transaction
            if self.serial:
                with conn.transaction():
                    try:
                        curs.execute(self._lock)
                    except psycopg.errors.LockNotAvailable:
                        raise SerialLockTimeout(
                            f"the events table's lock was not free within"
                            f" {SERIAL_LOCK_TIMEOUT_SECONDS} s (serial appends): another"
                            " writer holds it") from None
                    self._insert_stored_events(curs, stored_events, **kwargs)
            else:
                self._insert_stored_events(curs, stored_events, **kwargs)
            return [row[0] for row in curs.fetchall()]

    def _append_one(self, conn: psycopg.Connection[Any], e: StoredEvent,
                    record: idempotency.IdempotencyRecord | None) -> list[int]:
        """One event and at most one key row (most commands): by a statement prepared on
        the connection, its parameters encoded here (``prepared.py``, which takes an id
        as a UUID or its text). A key row is its own parameters, its fields in order."""
        key: tuple[Any, ...] = record or ()
        row = (e.originator_id, e.originator_version, e.topic, e.state)
        subject = e.subject if isinstance(e, SealedStoredEvent) else None
        if not subject:
            plain = self._prepared_one_with_key if record else self._prepared_one
            return plain.positions(conn, (*key, *row))
        sealed = self._prepared_sealed_one_with_key if record else self._prepared_sealed_one
        try:
            return sealed.positions(conn, (*key, [subject], *row, subject))
        except psycopg.Error as error:
            self._raise_if_erased(error)
            raise

    def _append_in_chunks(self, conn: psycopg.Connection[Any],
                          stored_events: Sequence[StoredEvent],
                          records: tuple[idempotency.IdempotencyRecord, ...]) -> list[int]:
        """Many events: in chunks, one transaction, the server inserting a chunk while
        the next is mapped (``pipelined.py``)."""
        try:
            return append_in_chunks(conn, self._chunked.statements,
                                    lambda: self._chunked.chunks(stored_events, records))
        except psycopg.Error as error:
            self._raise_if_erased(error)
            raise

    def _raise_if_erased(self, error: psycopg.Error) -> None:
        """The append was refused because a subject is erased: ``SubjectErased``, their
        cached keys forgotten."""
        if (erased := _erased_subject(error)) is not None:
            if self.keyring is not None:
                self.keyring.forget(erased.subjects)
            raise erased from None

    def append_in(self, curs: Cursor[Any], stored_events: Sequence[StoredEvent]) -> list[int]:
        """Appends in the caller's transaction (an erasure records its event in the
        transaction that deletes the key); the caller commits, then wakes readers."""
        self._insert_stored_events(curs, stored_events)
        positions = [row[0] for row in curs.fetchall()]
        return positions

    def wake(self) -> None:
        self.waker.committed()

    def _send_notify(self) -> None:
        pool = self.datastore.pool
        if pool.closed:  # the application was closed: nobody to wake for
            self._close_notifier()
            return
        if self._notifier is None or self._notifier.closed or self._notifier_pid != os.getpid():
            self._notifier = pooled.connect_like(pool)
            self._notifier_pid = os.getpid()
        try:
            self._notifier.execute(self._notify)
        except psycopg.Error:
            self._close_notifier()  # the next NOTIFY reconnects
            raise

    def close(self) -> None:
        """Sends the last NOTIFY still owed, then closes the waker's connection."""
        self.waker.flush(timeout=1.0)
        self._close_notifier()
        self._own.close()

    def _close_notifier(self) -> None:
        if self._notifier is not None and self._notifier_pid == os.getpid():
            self._notifier.close()
            self._notifier = None

    def _insert_sealed_events(
        self, curs: Cursor[Any], stored_events: Sequence[StoredEvent],
        subjects: list[str | None], records: tuple[idempotency.IdempotencyRecord, ...],
    ) -> None:
        named = sorted({s for s in subjects if s})
        try:
            if len(stored_events) == 1 and len(records) <= 1:
                (e,) = stored_events
                row = (named, as_uuid(e.originator_id), e.originator_version, e.topic, e.state,
                       subjects[0])
                if records:
                    curs.execute(self._insert_sealed_one_with_key,
                                 (*records[0], *row),
                                 binary=True)
                else:
                    curs.execute(self._insert_sealed_one, row, binary=True)
                return
            columns = (
                named,
                len(stored_events),
                Uuids(e.originator_id for e in stored_events),
                BigInts(e.originator_version for e in stored_events),
                Texts(e.topic for e in stored_events),
                Blobs(e.state for e in stored_events),
                subjects,  # a list: it has NULLs (events without personal fields)
            )
            if records:
                curs.execute(self._insert_sealed_with_keys,
                             (*idempotency.insert_params(records), *columns), binary=True)
            else:
                curs.execute(self._insert_sealed, columns, binary=True)
        except psycopg.Error as e:
            self._raise_if_erased(e)
            raise

    def _insert_stored_events(
        self,
        curs: Cursor[Any],
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> None:
        keys = idempotency.KeyRows.from_save_kwargs(kwargs)
        records = keys.records if keys is not None else ()
        subjects = [e.subject if isinstance(e, SealedStoredEvent) else None
                    for e in stored_events]
        if any(subjects):
            self._insert_sealed_events(curs, stored_events, subjects, records)
            return
        if len(stored_events) == 1 and len(records) <= 1:
            (e,) = stored_events
            row = _one_row(e)
            if records:
                curs.execute(self._insert_one_with_key,
                             (*records[0], *row), binary=True)
            else:
                curs.execute(self._insert_one, row, binary=True)
            return
        columns = (
            len(stored_events),
            Uuids(e.originator_id for e in stored_events),
            BigInts(e.originator_version for e in stored_events),
            Texts(e.topic for e in stored_events),
            Blobs(e.state for e in stored_events),
        )
        if records:
            curs.execute(
                self._insert_with_keys, (*idempotency.insert_params(records), *columns),
                binary=True,
            )
        else:
            curs.execute(self._insert_plain, columns, binary=True)


def _select_events(table: str, gt: bool, lte: bool, desc: bool, limit: bool) -> sql.SQL:
    """The statement of one shape of ``select_events`` (which bounds it is given)."""
    return _rendered(sql.SQL(
        "SELECT originator_id, originator_version, topic, state FROM {t}"
        " WHERE originator_id = %s{gt}{lte} ORDER BY originator_version {order}{limit}"
    ).format(t=sql.Identifier(table),
             gt=sql.SQL(" AND originator_version > %s" if gt else ""),
             lte=sql.SQL(" AND originator_version <= %s" if lte else ""),
             order=sql.SQL("DESC" if desc else "ASC"),
             limit=sql.SQL(" LIMIT %s" if limit else "")))


def _speaks_utf8(conn: psycopg.Connection[Any]) -> bool:
    """Whether our own encoding of texts (UTF-8) is what the session expects."""
    return conn.pgconn.parameter_status(b"client_encoding") == b"UTF8"


def _one_row(e: StoredEvent) -> tuple[Any, ...]:
    return (as_uuid(e.originator_id), e.originator_version, e.topic, e.state)


def _erased_subject(error: psycopg.Error) -> SubjectErased | None:
    if error.sqlstate != keystore.ERASED_SQLSTATE:
        return None
    detail = error.diag.message_detail or ""
    return SubjectErased([detail] if detail else [])


def _rendered(statement: sql.Composed) -> sql.SQL:
    return sql.SQL(statement.as_string())

