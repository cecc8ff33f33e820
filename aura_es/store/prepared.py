"""The single-event append statements, prepared once per connection and run by libpq.

psycopg's cursor prepares a statement after five runs too, but each run still goes
through its query conversion, its parameter dumpers, its prepared-statement cache and
its result machinery: about 10 µs of a keyed command's client CPU beyond the libpq
call (issue 27). The append's statements are few and fixed, and their parameters of
few kinds (``_ENCODINGS``), so they are prepared under a name of ours and run by
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

_INT8 = struct.Struct(">q")
_INT4 = struct.Struct(">i")

#: How a parameter of each kind is sent, as an expression of the parameter ``{v}``: all
#: in binary (a text's UTF-8 bytes with their length, so a NUL is refused by the server
#: instead of cutting the text short). A text[] may hold NULLs (the subjects of events
#: without personal fields); the other arrays never do (their dumpers refuse None).
_ENCODINGS: dict[str, str] = {
    "text": "{v}.encode()",
    "uuid": "({v} if type({v}) is UUID else as_uuid({v})).int.to_bytes(16, 'big')",
    "bigint": "pack_int8({v})",
    "bytea": "bytes({v})",
    "integer": "pack_int4({v})",
    "text[]": "dump_texts({v})",
    "uuid[]": "dump_uuids({v})",
    "bigint[]": "dump_bigints({v})",
    "bytea[]": "dump_blobs({v})",
}
_NAMES: dict[str, Any] = {
    "UUID": UUID, "as_uuid": as_uuid, "pack_int8": _INT8.pack, "pack_int4": _INT4.pack,
    "dump_texts": dump_texts, "dump_uuids": dump_uuids, "dump_bigints": dump_bigints,
    "dump_blobs": dump_blobs,
}


def _encoder(kinds: Sequence[str]) -> Callable[[Sequence[Any]], list[bytes]]:
    """One function encoding a statement's parameters, their expressions
    (``_ENCODINGS``) written out in order: a call per parameter cost a keyed command's
    eleven parameters ~1.2 µs of client CPU warm, several after each round trip
    (issue 27)."""
    items = ", ".join(_ENCODINGS[kind].format(v=f"p[{i}]") for i, kind in enumerate(kinds))
    source = (f"def encode(p):\n"
              f"    if len(p) != {len(kinds)}:\n"
              f"        raise ValueError(f'{len(kinds)} parameters expected, not {{len(p)}}')\n"
              f"    return [{items}]\n")
    names = dict(_NAMES)
    exec(compile(source, "<aura_es.store.prepared>", "exec"), names)
    encode: Callable[[Sequence[Any]], list[bytes]] = names["encode"]
    return encode


_PLACEHOLDER = re.compile(r"%s::(\w+(?:\[\])?)")
_names = itertools.count(1)


class PreparedAppend:
    """One statement whose every parameter is written ``%s::type`` (a type of
    ``_ENCODINGS``) and whose rows are one bigint each, the positions the append took
    (or, a pipeline's question, rows its asker reads itself)."""

    def __init__(self, statement: str) -> None:
        kinds = _PLACEHOLDER.findall(statement)
        if statement.count("%s") != len(kinds) or not kinds:
            raise ValueError("every parameter must be written %s::type")
        unknown = sorted(set(kinds) - set(_ENCODINGS))
        if unknown:
            raise ValueError(f"no encoding for parameters of type {', '.join(unknown)}")
        numbers = itertools.count(1)
        self.text = _PLACEHOLDER.sub(lambda m: f"${next(numbers)}::{m.group(1)}", statement)
        self.name = f"aura_append_{next(_names)}".encode()
        self.encode = _encoder(kinds)
        self._formats = [pq.Format.BINARY] * len(kinds)
        # Which connections hold it: weak, so a closed connection is forgotten with it.
        self._held: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()

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
        return read_positions(self.result(conn, params))

    def result(self, conn: psycopg.Connection[Any], params: Sequence[Any]) -> pq.abc.PGresult:
        """``positions``'s run, its result (binary) for the caller to read."""
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

    def _run(self, conn: psycopg.Connection[Any], encoded: list[bytes]) -> pq.abc.PGresult:
        pgconn = conn.pgconn
        pgconn.send_query_prepared(self.name, encoded, self._formats, pq.Format.BINARY)
        return self._check(conn, conn.wait(generators.execute(pgconn)), pq.ExecStatus.TUPLES_OK)

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
