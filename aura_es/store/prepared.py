"""The single-event append statements, prepared once per connection and run by libpq.

psycopg's cursor prepares a statement after five runs too, but each run still goes
through its query conversion, its parameter dumpers, its prepared-statement cache and
its result machinery: about 10 µs of a keyed command's client CPU beyond the libpq
call (issue 27). The append's statements are few and fixed, and their parameters of
few kinds (``_ENCODERS``), so they are prepared under a name of ours and run by
``send_query_prepared`` with the parameters encoded here, all in binary, the result read
in binary.

Nothing here can go stale. The statement's plan is the server's (PostgreSQL replans a
prepared statement after DDL on its tables). What is cached is only which connections
hold the statement (a new connection after a reconnect holds none, and prepares it
again); a server that forgot it (``DISCARD ALL``, a pooler that moved the session) says
so, and it is prepared again and run once more: the failed run did nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import struct
import weakref
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors, generators, pq

from aura_es.store.arrays import (
    as_uuid,
    dump_bigints,
    dump_blobs,
    dump_texts,
    dump_uuids,
)

#: How a parameter of each kind is sent (all in binary: a text's UTF-8 bytes with their
#: length, so a NUL is refused by the server instead of cutting the text short).
Encode = Callable[[Any], bytes]
_INT8 = struct.Struct(">q")
_INT4 = struct.Struct(">i")


def text(value: str) -> bytes:
    return value.encode()


def uuid(value: UUID | str) -> bytes:
    return as_uuid(value).bytes


def bigint(value: int) -> bytes:
    return _INT8.pack(value)


def bytea(value: bytes) -> bytes:
    return bytes(value)


def integer(value: int) -> bytes:
    return _INT4.pack(value)


_ENCODERS: dict[str, Encode] = {
    "text": text, "uuid": uuid, "bigint": bigint, "bytea": bytea, "integer": integer,
    # A text[] may hold NULLs (the subjects of events without personal fields); the
    # other arrays never do (their dumpers refuse None).
    "text[]": dump_texts, "uuid[]": dump_uuids, "bigint[]": dump_bigints,
    "bytea[]": dump_blobs,
}
_PLACEHOLDER = re.compile(r"%s::(\w+(?:\[\])?)")
_names = itertools.count(1)


class PreparedAppend:
    """One statement whose every parameter is written ``%s::type`` (a type of
    ``_ENCODERS``) and whose rows are one bigint each: the positions the append took."""

    def __init__(self, statement: str) -> None:
        kinds = _PLACEHOLDER.findall(statement)
        if statement.count("%s") != len(kinds) or not kinds:
            raise ValueError("every parameter must be written %s::type")
        unknown = sorted(set(kinds) - set(_ENCODERS))
        if unknown:
            raise ValueError(f"no encoding for parameters of type {', '.join(unknown)}")
        numbers = itertools.count(1)
        self.text = _PLACEHOLDER.sub(lambda m: f"${next(numbers)}::{m.group(1)}", statement)
        self.name = f"aura_append_{next(_names)}".encode()
        self._encoders = tuple(_ENCODERS[k] for k in kinds)
        self._formats = [pq.Format.BINARY] * len(kinds)
        # Which connections hold it: weak, so a closed connection is forgotten with it.
        self._held: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()

    def encode(self, params: Sequence[Any]) -> list[bytes]:
        return [encode(value) for encode, value in zip(self._encoders, params, strict=True)]

    # For a pipeline (``pipelined.py``), which queues the preparation and the runs, and
    # says which connections hold the statement once the server has answered.

    def held_by(self, conn: psycopg.Connection[Any]) -> bool:
        return conn in self._held

    def send_prepare(self, conn: psycopg.Connection[Any]) -> None:
        conn.pgconn.send_prepare(self.name, self.text.encode())

    def send_run(self, conn: psycopg.Connection[Any], encoded: list[bytes]) -> None:
        conn.pgconn.send_query_prepared(self.name, encoded, self._formats, pq.Format.BINARY)

    def mark_held(self, conn: psycopg.Connection[Any], held: bool) -> None:
        if held:
            self._held.add(conn)
        else:
            self._held.discard(conn)

    def positions(self, conn: psycopg.Connection[Any], params: Sequence[Any]) -> list[int]:
        """Runs the statement on ``conn`` (autocommit, not in use by anyone else) and
        returns the positions; errors are psycopg's, as a cursor would raise them."""
        encoded = self.encode(params)
        if conn not in self._held:
            self._prepare(conn)
        try:
            return self._run(conn, encoded)
        except errors.InvalidSqlStatementName:
            self._held.discard(conn)
            self._prepare(conn)
            return self._run(conn, encoded)

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        pgconn = conn.pgconn
        pgconn.send_prepare(self.name, self.text.encode())
        # Prepared before but its answer lost (an interrupt): the name is this text's.
        with contextlib.suppress(errors.DuplicatePreparedStatement):
            self._check(conn, conn.wait(generators.execute(pgconn)), pq.ExecStatus.COMMAND_OK)
        self._held.add(conn)

    def _run(self, conn: psycopg.Connection[Any], encoded: list[bytes]) -> list[int]:
        pgconn = conn.pgconn
        pgconn.send_query_prepared(self.name, encoded, self._formats, pq.Format.BINARY)
        return read_positions(self._check(conn, conn.wait(generators.execute(pgconn)),
                                          pq.ExecStatus.TUPLES_OK))

    @staticmethod
    def _check(conn: psycopg.Connection[Any], results: list[pq.abc.PGresult],
               expected: pq.ExecStatus) -> pq.abc.PGresult:
        (result,) = results
        if result.status != expected:
            if conn.pgconn.status == pq.ConnStatus.BAD:
                raise psycopg.OperationalError(
                    (result.error_message or b"the connection was lost").decode(
                        errors="replace").strip())
            raise errors.error_from_result(result, encoding=conn.info.encoding)
        return result


def read_positions(result: pq.abc.PGresult) -> list[int]:
    """The bigints of a result's one column, read in binary."""
    unpack = _INT8.unpack
    return [unpack(result.get_value(row, 0))[0]  # type: ignore[arg-type]
            for row in range(result.ntuples)]
