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

A batch of commands uses the same pipeline stepwise (``StepwiseAppend``): a question
first, then statements sent as the batch is decided, then the chunks and the commit.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, NamedTuple

import psycopg
from psycopg import errors, generators, pq

from aura_es.store.prepared import PreparedAppend, read_positions

#: Given an append's positions before its commit is answered (``_Pipeline.run_rest``).
Meanwhile = Callable[[list[int]], None]
#: A chunk: its statement and its parameters (encoded when it is sent).
Chunk = tuple[PreparedAppend, Sequence[Any]]
#: Chunks of an append (their events mapped as they are asked for): a function, so a
#: second attempt can ask again.
Chunks = Callable[[], Iterable[Chunk]]

_OK, _FAILED = pq.ExecStatus.COMMAND_OK, pq.ExecStatus.FATAL_ERROR
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_REFUSED = (_FAILED, pq.ExecStatus.PIPELINE_ABORTED)
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
        except OutOfStep:
            continue
    return _Pipeline(conn).run(chunks(), last_try=True)


class OutOfStep(Exception):
    """The server did not hold a statement this process thought it held (it forgot them:
    ``DEALLOCATE ALL``), or held one it thought it did not: the append did nothing, and
    can run again, knowing better."""


class StepwiseAppend:
    """A question, then a transaction its caller adds to as it goes, appends in and
    commits, or leaves (rolled back).

    The question (``ask``: a statement run on its own before the transaction) goes
    first, and the caller works while the server answers it (``answer``: a batch's
    commands decided while the server looks its keys up). Each statement ``send``
    queues after it opens the transaction if it is not open, and is on its way, run by
    the server, while the caller works on (a batch's key rows, inserted while its next
    commands are decided); ``refused`` says, without waiting, whether the server has
    refused one so far (the transaction then commits nothing), and ``append`` sends
    the last chunks and the commit. One round trip in all, the server busy meanwhile:
    a batch that looked its keys up first idled the client through one round trip and
    the server through its decisions (issue 27). Used as a context manager; the
    connection comes back idle and out of pipeline mode, or closed (as
    ``append_in_chunks``'s).
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._pipeline = _Pipeline(conn)
        self._ended = False
        self._begun = False
        #: How many queries the server was asked to answer (a sync or a flush after them).
        self._asked = 0
        #: Where the question's answer is among the answers.
        self._question_at: int | None = None

    def __enter__(self) -> StepwiseAppend:
        self._pipeline.enter()
        return self

    def ask(self, question: PreparedAppend, params: Sequence[Any]) -> None:
        """Sends the question, on its own (before the transaction), answered at once."""
        pipeline = self._pipeline
        encoded = question.encode(params)
        with pipeline.closed_on_error:
            pipeline.send(question, encoded, appends=False)
            self._question_at = len(pipeline.sent) - 1
            pipeline.sync()
            pipeline.push()
        self._asked = len(pipeline.sent)

    def answer(self, *, wait: bool) -> pq.abc.PGresult | None:
        """The question's answer (its rows, in binary); None while it has not come
        (``wait=False``), or when the server could not answer it."""
        pipeline = self._pipeline
        at = self._question_at
        assert at is not None
        with pipeline.closed_on_error:
            if not pipeline.read_until(at + 1, wait=wait):
                return None
        result = pipeline.results[at][0]
        return result if result.status == pq.ExecStatus.TUPLES_OK else None

    @property
    def connection(self) -> psycopg.Connection[Any]:
        return self._pipeline.conn

    def send(self, statement: PreparedAppend, params: Sequence[Any]) -> None:
        """A statement into the transaction, run by the server while the caller goes on
        (its refusal, if any, is raised by ``append``)."""
        pipeline = self._pipeline
        encoded = statement.encode(params)
        with pipeline.closed_on_error:
            self._begin()
            pipeline.send(statement, encoded, appends=False)
            # The server keeps its answers until told to send them (a sync or a flush).
            pipeline.pgconn.send_flush_request()
            pipeline.push()
        self._asked = len(pipeline.sent)

    def refused(self) -> bool:
        """Whether the server has refused a statement sent so far (the question too),
        from the answers that have come (it does not wait for the others)."""
        pipeline = self._pipeline
        with pipeline.closed_on_error:
            pipeline.read_until(self._asked, wait=False)
        return any(result.status in _REFUSED for result, *_ in pipeline.results)

    def append(self, chunks: Iterable[Chunk], meanwhile: Meanwhile | None = None
               ) -> list[int]:
        """Appends the chunks and commits: their positions (given to ``meanwhile`` while
        the commit is on the server). Raises ``OutOfStep`` when a statement sent was not
        where this process thought (nothing appended), and the server's refusal of any
        as psycopg's error."""
        self._ended = True
        with self._pipeline.closed_on_error:
            self._begin()
        return self._pipeline.run_rest(chunks, meanwhile=meanwhile)

    def _begin(self) -> None:
        if not self._begun:
            self._begun = True
            self._pipeline.begin()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._ended:
            return
        self._ended = True
        # Nothing was appended: the transaction (if any) rolled back, what the server
        # answered learnt (a lost connection is closed, and met again by what comes
        # next). Without a transaction, the question's own sync ends the pipeline: no
        # round trip more for a batch sent again.
        with contextlib.suppress(OutOfStep, psycopg.Error):
            if self._begun:
                self._pipeline.run_rest(())
            else:
                self._pipeline.leave()


class _ClosedOnError:
    """Closes the connection when the block it guards raises (and lets it raise). A
    class, not a generator: entered between a batch's decisions."""

    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is not None:
            self._conn.close()


class _Sent(NamedTuple):
    """A query sent: the statement it prepares, or runs, and whether its rows are
    positions of the append."""

    prepares: PreparedAppend | None = None
    runs: PreparedAppend | None = None
    appends: bool = False


class _Pipeline:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.pgconn = conn.pgconn
        self.sent: list[_Sent] = []
        self.results: list[list[pq.abc.PGresult]] = []
        self._preparing: list[PreparedAppend] = []
        #: Guards a step of the protocol: a failure in the middle of it (a lost
        #: connection, an interrupt) closes the connection, so no other append uses it.
        self.closed_on_error = _ClosedOnError(conn)

    def run(self, chunks: Iterable[Chunk], *, last_try: bool = False) -> list[int]:
        self.enter()
        with self.closed_on_error:
            self.begin()
        return self.run_rest(chunks, last_try=last_try)

    def enter(self) -> None:
        self.pgconn.enter_pipeline_mode()

    def begin(self) -> None:
        self._queue(partial(self.pgconn.send_query_params, b"BEGIN", None), _Sent())

    def sync(self) -> None:
        """Ends what was sent so far (its own implicit transaction), answers flushed."""
        self._queue(self.pgconn.pipeline_sync, _Sent())

    def send(self, statement: PreparedAppend, encoded: list[bytes], *, appends: bool) -> None:
        """Queues a run of ``statement`` (prepared first where the connection does not
        hold it yet)."""
        conn = self.conn
        if not statement.held_by(conn) and statement not in self._preparing:
            # Only what the append uses: a store without keys or sealed subjects has
            # no table for the statements that write them.
            self._preparing.append(statement)
            self._queue(partial(statement.send_prepare, conn), _Sent(prepares=statement))
        self._queue(partial(statement.send_run, conn, encoded),
                    _Sent(runs=statement, appends=appends))

    def leave(self) -> None:
        """Out of pipeline mode when everything sent ended with a sync (no transaction
        open): the answers still to come read, what is held learnt."""
        with self.closed_on_error:
            self.read_until(len(self.sent), wait=True)
            self.pgconn.exit_pipeline_mode()
        self._learn_what_is_held()

    def run_rest(self, chunks: Iterable[Chunk], *, last_try: bool = False,
                 meanwhile: Meanwhile | None = None) -> list[int]:
        """The chunks after what was sent, then the commit (a rollback when a chunk
        could not be mapped, or none was given): the positions appended. ``meanwhile``
        is given them once every chunk is answered, while the commit is still on the
        server (its WAL flush); it must not write anything, as the commit may fail."""
        pgconn = self.pgconn
        unmappable: Exception | None = None
        appended = False
        failed_meanwhile: Exception | None = None
        positions: list[int] | None = None
        with self.closed_on_error:
            try:
                for statement, params in chunks:
                    self.send(statement, statement.encode(params), appends=True)
                    appended = True
                    self.push()  # on the server while the next chunk is mapped
            except Exception as e:  # a chunk not mapped or encoded: nothing may commit
                unmappable = e
            last = b"COMMIT" if unmappable is None and appended else b"ROLLBACK"
            answered = len(self.sent)
            if meanwhile is not None and last == b"COMMIT":
                pgconn.send_flush_request()  # the chunks' answers before the commit's
            self._queue(partial(pgconn.send_query_params, last, None), _Sent())
            self.sync()
            self.push()
            if meanwhile is not None and last == b"COMMIT":
                self.read_until(answered, wait=True)
                if not any(result.status in _REFUSED for result, *_ in self.results):
                    positions = self._positions()
                    try:
                        meanwhile(positions)
                    except Exception as e:  # the protocol is finished before it is raised
                        failed_meanwhile = e
            self._read_to_sync()
            if len(self.results) != len(self.sent):
                raise psycopg.InterfaceError(f"a pipelined append read {len(self.results)}"
                                             f" results for {len(self.sent)} queries")
            if pgconn.transaction_status != pq.TransactionStatus.IDLE:
                self._roll_back()  # a refused chunk left the transaction open, failed
            pgconn.exit_pipeline_mode()
        out_of_step = self._learn_what_is_held()
        if unmappable is not None:
            raise unmappable
        if out_of_step and not last_try:
            raise OutOfStep
        if positions is None or any(result.status == _FAILED for result, *_ in self.results):
            positions = self._positions()  # raises the first refusal (the commit's too)
        if failed_meanwhile is not None:
            raise failed_meanwhile
        return positions

    def _queue(self, send: Callable[[], None], sent: _Sent) -> None:
        """A query into libpq's buffer (sent by ``push``)."""
        self.sent.append(sent)
        send()

    def push(self, results: list[list[pq.abc.PGresult]] | None = None) -> None:
        """Sends what is buffered. While the server cannot take it all (its answers to
        the chunks before wait for this process to read them, a long append's), reads
        them meanwhile: neither side waits on the other. A flush that completes at once,
        the common case, costs one system call."""
        into = self.results if results is None else results
        while self.pgconn.flush():
            into.extend(self.conn.wait(
                generators.pipeline_communicate(self.pgconn, deque())))

    def read_until(self, count: int, *, wait: bool) -> bool:
        """Reads the answers of the first ``count`` queries; without ``wait``, only what
        has come. Whether they are all read."""
        pgconn = self.pgconn
        while len(self.results) < count:
            if not wait:
                pgconn.consume_input()
                if pgconn.is_busy():
                    return False
            self.results.append(self.conn.wait(generators.fetch_many(pgconn)))
        return True

    def _read_to_sync(self, results: list[list[pq.abc.PGresult]] | None = None) -> None:
        """Every answer still to come (a rollback's own, into ``results``): up to the
        last sync, not the first one seen (a question has its own)."""
        if results is None:
            self.read_until(len(self.sent), wait=True)
            return
        while not (results and results[-1][0].status == _SYNC):
            results.append(self.conn.wait(generators.fetch_many(self.pgconn)))

    def _roll_back(self) -> None:
        self.pgconn.send_query_params(b"ROLLBACK", None)
        self.pgconn.pipeline_sync()
        results: list[list[pq.abc.PGresult]] = []
        self.push(results)
        self._read_to_sync(results)

    def _learn_what_is_held(self) -> bool:
        """Which statements the connection holds, from the server's answers; True when
        this process was wrong about one (the append then did nothing)."""
        wrong = False
        for sent, (result, *_) in zip(self.sent, self.results, strict=True):
            state = _sqlstate(result)
            if sent.prepares is not None:  # held once prepared, or found prepared before
                held = result.status == _OK or state == _DUPLICATE
                sent.prepares.mark_held(self.conn, held)
                wrong |= state == _DUPLICATE
            elif sent.runs is not None and state == _FORGOTTEN:  # prepared again next time
                sent.runs.mark_held(self.conn, False)
                wrong = True
        return wrong

    def _positions(self) -> list[int]:
        positions: list[int] = []
        answered = self.sent[:len(self.results)]
        for sent, (result, *_) in zip(answered, self.results, strict=True):
            if result.status == _FAILED:  # the first refusal; the rest were aborted
                raise errors.error_from_result(result, encoding=self.conn.info.encoding)
            if sent.appends:
                positions.extend(read_positions(result))
        return positions


def _sqlstate(result: pq.abc.PGresult) -> str | None:
    """The SQLSTATE of a refused query (None for any other)."""
    if result.status != _FAILED:
        return None
    code = result.error_field(pq.DiagnosticField.SQLSTATE)
    return code.decode() if code else None
