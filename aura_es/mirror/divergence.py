"""A stream ahead of its store: events on the stream that the store does not hold.

It happens when the store loses commits the relay had already published (an
asynchronous failover, or a backup restored under a running stream). Publishing on
would either skip the new primary's events (its positions fall below the stream's
cursor) or interleave two histories; so the relay stops, names the first event the
store lacks, and says how to repair it. Nothing is ever skipped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from aura_es import broker
from aura_es.db import connect_async
from aura_es.errors import ConfigurationError
from aura_es.mirror.cloudevents import POSITION_HEADER, STORE_HEADER, message_id
from aura_es.mirror.stream import Resume, resume_point
from aura_es.store import eventlog, identity

#: How far back from the tail the first missing event is looked for.
SCAN_LIMIT = 100_000


class StreamAheadOfStore(ConfigurationError):
    """The stream holds events of this store that the store does not have."""


@dataclass(frozen=True)
class Phantom:
    position: int
    stream_seq: int


async def matches(conn: psycopg.AsyncConnection[Any], position: int, msg_id: str) -> bool:
    """Does the store hold the event a message of it carries (same position, same id)?"""
    event = await eventlog.read_one(conn, position)
    return event is not None and message_id(event) == msg_id


async def first_phantom(js: JetStreamContext, stream: str, store_id: str,
                        conn: psycopg.AsyncConnection[Any], tail_seq: int) -> Phantom:
    """Walks back from ``tail_seq`` (a message the store lacks) to the last message it
    holds; the one after is the first phantom."""
    first = Phantom(0, tail_seq)
    seq = tail_seq
    while seq > 0 and tail_seq - seq < SCAN_LIMIT:
        try:
            message = await js.get_msg(stream, seq)
        except NotFoundError:
            seq -= 1
            continue
        headers = message.headers or {}
        position = headers.get(POSITION_HEADER)
        if headers.get(STORE_HEADER) == store_id and position and position.isdigit():
            if await matches(conn, int(position), headers.get("Nats-Msg-Id", "")):
                break
            first = Phantom(int(position), seq)
        seq -= 1
    return first


def refuse(stream: str, phantom: Phantom) -> StreamAheadOfStore:
    return StreamAheadOfStore(
        f"stream {stream!r} holds events this store does not have, from position"
        f" {phantom.position} (stream sequence {phantom.stream_seq}) on: the store lost"
        " commits the stream kept (an asynchronous failover, or a restored backup)."
        f" Nothing was published. `aura-es mirror verify --stream {stream}` lists them;"
        " to mirror this store again, delete the stream (`nats stream rm"
        f" {stream}`) and run `aura-es mirror run`; services that consumed those events"
        " hold them too and must be rebuilt (docs/operations.md)")


async def checked_resume(js: JetStreamContext, stream: str, store_id: UUID,
                         conn: psycopg.AsyncConnection[Any],
                         on_foreign: Callable[[int], None] | None = None) -> Resume:
    """Where a relay goes on (``stream.resume_point``), or ``StreamAheadOfStore`` when the
    stream's last event of this store is not in the store."""
    resume = await resume_point(js, stream, store_id,
                                lambda position, msg_id: matches(conn, position, msg_id),
                                on_foreign=on_foreign)
    if resume.msg_id and not await matches(conn, resume.cursor.position, resume.msg_id):
        raise refuse(stream, await first_phantom(js, stream, str(store_id), conn, resume.seq))
    return resume


async def check(database_url: str, nats_url: str, stream: str) -> None:
    """Before a relay starts: ``StreamAheadOfStore`` when the stream's last event of this
    store is not in the store (a stream that does not exist yet is fine)."""
    async with await connect_async(database_url) as conn:
        store_id = await identity.store_id_async(conn)
        nc = await broker.connect(nats_url, forever=False)
        try:
            js = nc.jetstream()
            try:
                await js.stream_info(stream)
            except NotFoundError:
                return
            await checked_resume(js, stream, store_id, conn)
        finally:
            await nc.close()
