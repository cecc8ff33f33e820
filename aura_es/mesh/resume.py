"""Where a consumer's next pass over the stream starts.

Normally right after its checkpoint: the message at ``stream_seq`` is still the one it
read there (same fingerprint). If it is not, the stream was rewritten under the
consumer: a JetStream cluster that lost its unsynced tail in a crash and had it
re-published by the relay, a stream restored or re-created. Sequence numbers then mean
nothing, but the store's cursor still does (it increases along the stream), so the pass
starts at the first store message after the last one the consumer read: nothing is
skipped, and what comes again is absorbed by its cursor.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from aura_es.mesh.checkpoint import State
from aura_es.mesh.origin import Malformed, fingerprint, origin
from aura_es.store.eventlog import ORIGIN, Cursor


@dataclass(frozen=True)
class Start:
    seq: int
    state: State
    #: Why the pass does not start right after the checkpoint (logged), or None.
    note: str | None = None
    #: Stream sequences the consumer never read that the stream no longer holds.
    lost: tuple[int, int] | None = None


async def _own(js: JetStreamContext, stream: str, seq: int) -> Cursor | None:
    """The store cursor of the message at ``seq``; None if foreign, malformed or gone."""
    try:
        message = await js.get_msg(stream, seq)
    except NotFoundError:
        return None
    try:
        found = origin(message.headers)
    except Malformed:
        return None
    return found.cursor if found is not None else None


async def _own_at_or_after(js: JetStreamContext, stream: str, seq: int, last: int,
                           seen: dict[int, Cursor | None]) -> tuple[int, Cursor] | None:
    while seq <= last:
        if seq not in seen:
            seen[seq] = await _own(js, stream, seq)
        cursor = seen[seq]
        if cursor is not None:
            return seq, cursor
        seq += 1
    return None


async def first_after(js: JetStreamContext, stream: str, cursor: Cursor, first: int,
                      last: int) -> int:
    """The lowest sequence from which every store message has a cursor above
    ``cursor`` (binary search: store messages are in cursor order along the stream)."""
    low, high = first, last + 1
    # A run of foreign messages is walked once, however often the search lands in it.
    seen: dict[int, Cursor | None] = {}
    while low < high:
        middle = (low + high) // 2
        found = await _own_at_or_after(js, stream, middle, last, seen)
        if found is None or found[1] > cursor:
            high = middle
        else:
            low = found[0] + 1
    return low


async def _own_at_or_before(js: JetStreamContext, stream: str, seq: int, first: int
                            ) -> Cursor:
    while seq >= first:
        cursor = await _own(js, stream, seq)
        if cursor is not None:
            return cursor
        seq -= 1
    return ORIGIN


async def start(js: JetStreamContext, stream: str, state: State) -> Start:
    if state.stream_seq == 0:
        return Start(1, state)
    info = await js.stream_info(stream)
    first, last = info.state.first_seq or 1, info.state.last_seq or 0
    seq = state.stream_seq
    if state.cursor is None:
        # A checkpoint of the release before cursors were kept: everything up to its
        # sequence was read; the cursor is that of the last store message there.
        cursor = await _own_at_or_before(js, stream, min(seq, last), first)
        state = replace(state, cursor=cursor)
        if state.fingerprint is None and seq <= last:
            return Start(seq + 1, state)
    if first <= seq <= last:
        try:
            there = await js.get_msg(stream, seq)
        except NotFoundError:
            there = None
        if there is not None and fingerprint(there.headers, there.data or b"") == state.fingerprint:
            return Start(seq + 1, state)
        why = (f"the message at stream sequence {seq} is not the one this consumer read"
               " there" if there is not None else f"stream sequence {seq} was deleted")
    elif seq > last:
        why = f"the stream now ends at sequence {last}, before this consumer's {seq}"
    else:
        why = f"the stream now starts at sequence {first}, after this consumer's {seq}"
    assert state.cursor is not None
    resume = await first_after(js, stream, state.cursor, first, last)
    lost = (seq + 1, first - 1) if seq + 1 < first else None
    return Start(resume, state, note=f"{why}; resuming at sequence {resume}, the first"
                 " store message after the last one this consumer read"
                 f" (cursor {state.cursor.transaction}/{state.cursor.position})", lost=lost)
