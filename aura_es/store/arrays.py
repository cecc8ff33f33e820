"""Array parameters of the append statement, dumped straight to PostgreSQL's binary
array format.

psycopg dumps a plain list by inspecting every element to choose an element type, in
Python, on every execute: a third of an append's client CPU (profiled: ~80 µs of a
keyed single-event command). The append's arrays have one known element type each, so
they are wrapped in these typed lists and written with ``struct`` in one pass.
"""

from __future__ import annotations

import struct
from itertools import chain, repeat
from operator import is_
from typing import Any, ClassVar
from uuid import UUID

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

_HEADER = struct.Struct(">iiIii")  # ndim, has-null flag, element oid, length, lower bound
_EMPTY = struct.Struct(">iiI")
_LENGTH = struct.Struct(">i")
_INT8 = struct.Struct(">iq")  # its length (8), then the value
_UUID_LENGTH = b"\x00\x00\x00\x10"
_NULL = _LENGTH.pack(-1)  # a NULL element


class _Typed(list[Any]):
    """A list whose elements all have one PostgreSQL type."""


class Texts(_Typed):
    """``text[]``"""


class Uuids(_Typed):
    """``uuid[]``"""


class BigInts(_Typed):
    """``bigint[]``"""


class Blobs(_Typed):
    """``bytea[]``"""


class _ArrayDumper(Dumper):
    format = Format.BINARY
    element_oid: ClassVar[int]

    def elements(self, values: list[Any]) -> bytes:
        """The elements, each its length then its binary value."""
        raise NotImplementedError

    def dump(self, obj: Any) -> bytes:
        if not obj:  # an empty array has no dimension
            return _EMPTY.pack(0, 0, self.element_oid)
        if any(map(is_, obj, repeat(None))):  # by identity: UUID's == is Python
            raise TypeError(f"{type(obj).__name__} holds None: the append writes no NULL")
        return _HEADER.pack(1, 0, self.element_oid, len(obj), 1) + self.elements(obj)


def _with_lengths(data: list[bytes]) -> bytes:
    lengths = set(map(len, data))
    if len(lengths) == 1:
        # All of one length (the hashes of key rows, a batch's one command type or
        # topic): one length joins them, where interleaving took ~170 ns an element.
        length = _LENGTH.pack(lengths.pop())
        return length + length.join(data)
    # Interleaved in C (map, zip, chain), not by a Python loop: a 100-event append's four
    # arrays were 15% of its client CPU element by element (profiled, issue 27).
    return b"".join(chain.from_iterable(zip(map(_LENGTH.pack, map(len, data)), data,
                                                 strict=True)))


class _TextsDumper(_ArrayDumper):
    oid = 1009
    element_oid = 25

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        connection = self.connection
        self._encoding = connection.info.encoding if connection is not None else "utf-8"

    def elements(self, values: list[Any]) -> bytes:
        if self._encoding in _UTF8_NAMES and _all_texts_without_nul(values):
            # Encoded by C calls over the whole list, not one Python call an element
            # (a batch's key rows have four texts; docs/benchmarks.md, issue 27).
            return _with_lengths(list(map(str.encode, values)))
        return _with_lengths([_text(value).encode(self._encoding) for value in values])


class _UuidsDumper(_ArrayDumper):
    oid = 2951
    element_oid = 2950

    def elements(self, values: list[Any]) -> bytes:
        # A UUID's int written out directly: its ``bytes`` property, a Python call, cost
        # a batch two of them a command (issue 27).
        return _UUID_LENGTH + _UUID_LENGTH.join([
            (value if type(value) is UUID else as_uuid(value)).int.to_bytes(16, "big")
            for value in values])


class _BigIntsDumper(_ArrayDumper):
    oid = 1016
    element_oid = 20

    def elements(self, values: list[Any]) -> bytes:
        return b"".join(map(_INT8.pack, repeat(8, len(values)), values))


class _BlobsDumper(_ArrayDumper):
    oid = 1001
    element_oid = 17

    def elements(self, values: list[Any]) -> bytes:
        return _with_lengths([value if type(value) is bytes else bytes(value)
                              for value in values])


_UTF8_NAMES = frozenset({"utf-8", "utf8", "UTF8", "UTF-8"})


_STR_ONLY = {str}


def _all_texts_without_nul(values: list[Any]) -> bool:
    """Whether every value is a ``str`` itself (not a subclass, whose ``str()`` may say
    otherwise) holding no NUL; else each is converted and checked by ``_text``."""
    return set(map(type, values)) == _STR_ONLY and "\x00" not in "".join(values)


def _text(value: Any) -> str:
    text = str(value)
    if "\x00" in text:  # as psycopg's own text dumper: PostgreSQL text holds no NUL
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    return text


def dump_texts(values: list[str | None]) -> bytes:
    """A ``text[]`` in PostgreSQL's binary format (UTF-8), for statements run by libpq;
    its elements may be NULL (the subjects of events without personal fields)."""
    if not any(map(is_, values, repeat(None))):
        return _UTF8_TEXTS.dump(values)
    body = b"".join(
        _NULL if value is None else _LENGTH.pack(len(data := _text(value).encode())) + data
        for value in values)
    return _HEADER.pack(1, 1, _TextsDumper.element_oid, len(values), 1) + body


def dump_uuids(values: list[Any]) -> bytes:
    """A ``uuid[]`` in binary, for statements run by libpq."""
    return _UUIDS.dump(values)


def dump_bigints(values: list[int]) -> bytes:
    """A ``bigint[]`` in binary, for statements run by libpq."""
    return _BIGINTS.dump(values)


def dump_blobs(values: list[bytes]) -> bytes:
    """A ``bytea[]`` in binary, for statements run by libpq."""
    return _BLOBS.dump(values)


def as_uuid(value: Any) -> UUID:
    """A UUID, from a UUID or its text (the append writes only UUIDs)."""
    return value if isinstance(value, UUID) else UUID(str(value))


for _cls, _dumper in ((Texts, _TextsDumper), (Uuids, _UuidsDumper),
                      (BigInts, _BigIntsDumper), (Blobs, _BlobsDumper)):
    psycopg.adapters.register_dumper(_cls, _dumper)

_UTF8_TEXTS = _TextsDumper(Texts)
_UUIDS = _UuidsDumper(Uuids)
_BIGINTS = _BigIntsDumper(BigInts)
_BLOBS = _BlobsDumper(Blobs)
