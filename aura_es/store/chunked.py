"""The statements of a many-event append, and a long one's chunks.

An append of many events is one statement: the key rows, the positions reserved, the
events inserted from arrays (``unnest``), with a check that no subject is erased when
some are sealed. A long append (``CHUNKED_FROM`` events or more) is the same statement
cut in chunks, sent in one pipelined transaction (``pipelined.py``): the first chunk
writes the key rows and reserves the positions of every event of the append, one block
as for a single statement (so one append's events never interleave with another's); the
next chunks insert at their offset in that block, read from a setting local to the
transaction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from psycopg import sql

from aura_es.store import idempotency, keystore
from aura_es.store.mapper import LAZY_FROM, SealedStoredEvent
from aura_es.store.names import RESERVE_FUNCTION
from aura_es.store.pipelined import Chunk
from aura_es.store.prepared import PreparedAppend

#: Appends of at least this many events go in chunks (measured, a 100-event command:
#: chunks of 25 and 50 alike, of 10 slower; a small first chunk starts the server). The
#: mapper hands such a run over unmapped, to be mapped chunk by chunk.
CHUNKED_FROM = LAZY_FROM
CHUNK_EVENTS = 32
FIRST_CHUNK_EVENTS = 8

#: Where the first position of the block sits: the statement's own reservation, the
#: first chunk's (kept for the transaction), or a later chunk's offset in it.
_RESERVED = "{reserve}(%s::integer)"
_RESERVED_AND_KEPT = (
    "set_config('aura.append_first', {reserve}(%s::integer)::text, true)::bigint")
_AT_OFFSET = "current_setting('aura.append_first')::bigint + %s::bigint"


def append_statement(table: str, *, sealed: bool, keys: bool, first: str = _RESERVED) -> str:
    """The statement of a many-event append, its parameters in order: the key rows'
    seven arrays (``keys``), the subjects to check (``sealed``), the block's count (or a
    later chunk's offset), the events' four arrays, their subjects (``sealed``)."""
    start = sql.SQL(first).format(reserve=sql.Identifier(RESERVE_FUNCTION))
    ctes = [sql.SQL("keys AS ({})").format(idempotency.INSERT)] if keys else []
    if sealed:  # the check's value is tested: a value nobody reads is never computed
        ctes += [sql.SQL("ok AS (SELECT {}(%s::text[]) AS ok)").format(
                     sql.Identifier(keystore.CHECK_FUNCTION)),
                 sql.SQL("first AS (SELECT {} AS first FROM ok WHERE ok.ok = 1)").format(start)]
    else:
        ctes.append(sql.SQL("first AS (SELECT {} AS first)").format(start))
    subject = sql.SQL(", subject" if sealed else "")
    return sql.SQL(
        "WITH {ctes}, ev AS (INSERT INTO {t}"
        " (notification_id, originator_id, originator_version, topic, state{subject})"
        " SELECT first.first + e.n - 1, e.id, e.v, e.t, e.s{e_subject} FROM first,"
        " unnest(%s::uuid[], %s::bigint[], %s::text[], %s::bytea[]{subjects})"
        " WITH ORDINALITY AS e(id, v, t, s{subject}, n) RETURNING notification_id)"
        " SELECT notification_id FROM ev ORDER BY notification_id"
    ).format(ctes=sql.SQL(", ").join(ctes), t=sql.Identifier(table), subject=subject,
             e_subject=sql.SQL(", e.subject" if sealed else ""),
             subjects=sql.SQL(", %s::text[]" if sealed else "")).as_string()


class ChunkStatements:
    """A long append's statements on one events table, prepared per connection."""

    def __init__(self, table: str) -> None:
        self._first = {
            (sealed, keys): PreparedAppend(append_statement(
                table, sealed=sealed, keys=keys, first=_RESERVED_AND_KEPT))
            for sealed in (False, True) for keys in (False, True)}
        self._next = {sealed: PreparedAppend(append_statement(
            table, sealed=sealed, keys=False, first=_AT_OFFSET)) for sealed in (False, True)}
        #: Every statement a chunk may use (each prepared on a connection when first used).
        self.statements = [*self._first.values(), *self._next.values()]

    def chunks(self, stored_events: Sequence[StoredEvent],
               records: tuple[idempotency.IdempotencyRecord, ...]) -> Iterator[Chunk]:
        """The append's chunks; each chunk's events are asked for (and so mapped, from
        ``mapper.MappedLazily``) only once the chunk before is on its way."""
        for start, end in chunk_bounds(len(stored_events)):
            chunk = stored_events[start:end]
            sealed = [e.subject if isinstance(e, SealedStoredEvent) else None for e in chunk]
            named = sorted({s for s in sealed if s})
            check: tuple[Any, ...] = (named,) if named else ()
            columns = ([e.originator_id for e in chunk], [e.originator_version for e in chunk],
                       [e.topic for e in chunk], [e.state for e in chunk])
            subjects: tuple[Any, ...] = (sealed,) if named else ()
            if start == 0:
                keys = idempotency.insert_params(records) if records else ()
                yield (self._first[bool(named), bool(records)],
                       (*keys, *check, len(stored_events), *columns, *subjects))
            else:
                yield self._next[bool(named)], (*check, start, *columns, *subjects)


def chunk_bounds(count: int) -> list[tuple[int, int]]:
    """Where a long append's chunks start and end: a small first one, so the server
    starts inserting while the rest is mapped, then even ones of at most CHUNK_EVENTS."""
    first = min(FIRST_CHUNK_EVENTS, count)
    rest = count - first
    size = math.ceil(rest / math.ceil(rest / CHUNK_EVENTS)) if rest else 1
    return [(0, first), *((start, min(start + size, count)) for start in range(first, count, size))]
