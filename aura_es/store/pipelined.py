"""A long append in one transaction, sent in chunks while its later events are still
being mapped.

A 100-event command spent its client's time mapping every event (JSON, the write
check) and only then sent one statement, which the server spent as long again
inserting: on two cores one of them idled through each half (issue 27). Sent as
chunks in libpq's pipeline mode, the server inserts one chunk while this process maps
the next; there is still one round trip and one transaction: ``BEGIN``, the chunks
(each run by a statement of ``prepared.py``, prepared in the same pipeline where the
connection does not hold it yet), ``COMMIT`` and a sync, the results read at the end.

Nothing is committed unless every chunk was mapped and inserted: a chunk that cannot be
mapped (a payload refused) sends ``ROLLBACK`` in place of the ``COMMIT``, and a chunk the
server refuses aborts the rest, the transaction rolled back after the sync. Either way
the connection comes back idle and out of pipeline mode, or is closed when it cannot
(a lost connection, an interrupt), never left half way for the next append. A server
that forgot a statement (``DEALLOCATE ALL``), or held one this process thought it did
not, makes the append fail having done nothing: it runs again, knowing better.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import psycopg
from psycopg import errors, generators, pq

from aura_es.store.prepared import PreparedAppend, read_positions

#: A chunk: its statement and its parameters (encoded when it is sent).
Chunk = tuple[PreparedAppend, Sequence[Any]]
#: Chunks of an append (their events mapped as they are asked for): a function, so a
#: second attempt can ask again.
Chunks = Callable[[], Iterable[Chunk]]

_OK, _FAILED = pq.ExecStatus.COMMAND_OK, pq.ExecStatus.FATAL_ERROR
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_DUPLICATE = errors.DuplicatePreparedStatement.sqlstate
_FORGOTTEN = errors.InvalidSqlStatementName.sqlstate


def append_in_chunks(conn: psycopg.Connection[Any], statements: Sequence[PreparedAppend],
                     chunks: Chunks) -> list[int]:
    """The positions of the chunks' events, appended in one transaction on ``conn``
    (autocommit, idle, not in use by anyone else); ``statements`` are every statement
    the chunks may use. Errors are psycopg's."""
    # Each failed attempt corrects what is known of at least one statement's
    # preparation on this connection, so every statement's mistake costs one at most.
    for _ in range(len(statements)):
        try:
            return _Pipeline(conn).run(chunks())
        except _OutOfStep:
            continue
    return _Pipeline(conn).run(chunks(), last_try=True)


class _OutOfStep(Exception):
    """The server did not hold a statement this process thought it held (it forgot them:
    ``DEALLOCATE ALL``), or held one it thought it did not: the append did nothing, and
    can run again, knowing better."""


class _Pipeline:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._pgconn = conn.pgconn
        #: Each query sent: the statement it prepares, or runs (a chunk), or neither.
        self._sent: list[tuple[PreparedAppend | None, PreparedAppend | None]] = []
        self._preparing: list[PreparedAppend] = []
        self._results: list[list[pq.abc.PGresult]] = []

    def run(self, chunks: Iterable[Chunk], *, last_try: bool = False) -> list[int]:
        conn, pgconn = self._conn, self._pgconn
        pgconn.enter_pipeline_mode()
        unmappable: Exception | None = None
        try:
            self._queue(partial(pgconn.send_query_params, b"BEGIN", None))
            try:
                for statement, params in chunks:
                    encoded = statement.encode(params)
                    if not statement.held_by(conn) and statement not in self._preparing:
                        # Only what the append uses: a store without keys or sealed
                        # subjects has no table for the statements that write them.
                        self._preparing.append(statement)
                        self._queue(partial(statement.send_prepare, conn), prepares=statement)
                    self._queue(partial(statement.send_run, conn, encoded), runs=statement)
                    self._push()  # on the server while the next chunk is mapped
            except Exception as e:  # a chunk not mapped or encoded: nothing may commit
                unmappable = e
            end = b"COMMIT" if unmappable is None else b"ROLLBACK"
            self._queue(partial(pgconn.send_query_params, end, None))
            self._queue(pgconn.pipeline_sync)
            self._push()
            self._read_to_sync()
            if len(self._results) != len(self._sent):
                raise psycopg.InterfaceError(f"a pipelined append read {len(self._results)}"
                                             f" results for {len(self._sent)} queries")
            if pgconn.transaction_status != pq.TransactionStatus.IDLE:
                self._roll_back()  # a refused chunk left the transaction open, failed
            pgconn.exit_pipeline_mode()
        except BaseException:
            conn.close()  # in the middle of the protocol: no other append may use it
            raise
        out_of_step = self._learn_what_is_held()
        if unmappable is not None:
            raise unmappable
        if out_of_step and not last_try:
            raise _OutOfStep
        return self._positions()

    def _queue(self, send: Callable[[], None], *, prepares: PreparedAppend | None = None,
               runs: PreparedAppend | None = None) -> None:
        """A query into libpq's buffer (sent by ``_push``)."""
        self._sent.append((prepares, runs))
        send()

    def _push(self, results: list[list[pq.abc.PGresult]] | None = None) -> None:
        """Sends what is buffered. While the server cannot take it all (its answers to
        the chunks before wait for this process to read them, a long append's), reads
        them meanwhile: neither side waits on the other. A flush that completes at once,
        the common case, costs one system call."""
        into = self._results if results is None else results
        while self._pgconn.flush():
            into.extend(self._conn.wait(
                generators.pipeline_communicate(self._pgconn, deque())))

    def _read_to_sync(self, results: list[list[pq.abc.PGresult]] | None = None) -> None:
        into = self._results if results is None else results
        while not (into and into[-1][0].status == _SYNC):
            into.append(self._conn.wait(generators.fetch_many(self._pgconn)))

    def _roll_back(self) -> None:
        self._pgconn.send_query_params(b"ROLLBACK", None)
        self._pgconn.pipeline_sync()
        results: list[list[pq.abc.PGresult]] = []
        self._push(results)
        self._read_to_sync(results)

    def _learn_what_is_held(self) -> bool:
        """Which statements the connection holds, from the server's answers; True when
        this process was wrong about one (the append then did nothing)."""
        wrong = False
        for (prepares, runs), (result, *_) in zip(self._sent, self._results, strict=True):
            state = _sqlstate(result)
            if prepares is not None:  # held once prepared, or found prepared before
                held = result.status == _OK or state == _DUPLICATE
                prepares.mark_held(self._conn, held)
                wrong |= state == _DUPLICATE
            elif runs is not None and state == _FORGOTTEN:  # prepared again next time
                runs.mark_held(self._conn, False)
                wrong = True
        return wrong

    def _positions(self) -> list[int]:
        positions: list[int] = []
        for (_, runs), (result, *_) in zip(self._sent, self._results, strict=True):
            if result.status == _FAILED:  # the first refusal; the rest were aborted
                raise errors.error_from_result(result, encoding=self._conn.info.encoding)
            if runs is not None:
                positions.extend(read_positions(result))
        return positions


def _sqlstate(result: pq.abc.PGresult) -> str | None:
    """The SQLSTATE of a refused query (None for any other)."""
    if result.status != _FAILED:
        return None
    code = result.error_field(pq.DiagnosticField.SQLSTATE)
    return code.decode() if code else None
