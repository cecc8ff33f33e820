"""`aura-es mirror verify`: the stream against the store, event by event.

Reads the whole stream with an ordered consumer and the store in position order, and
names every event that is missing, duplicated, out of order or different (id or payload
hash). Events stored after the stream's last position are reported as not yet mirrored
(lag), not as missing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

import orjson

from aura_es import broker
from aura_es.db import connect
from aura_es.mirror.cloudevents import (
    POSITION_HEADER,
    STORE_HEADER,
    TRANSACTION_HEADER,
    body_hash,
    to_message,
)
from aura_es.mirror.stream import StreamSettings, require_subjects
from aura_es.store import eventlog, identity
from aura_es.store.eventlog import ORIGIN, Cursor


@dataclass
class Report:
    stream: str
    store: str = ""
    stored_events: int = 0
    stream_messages: int = 0
    mirrored_up_to: int = 0
    not_yet_mirrored: int = 0
    missing: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    out_of_order: list[int] = field(default_factory=list)
    different: list[int] = field(default_factory=list)
    #: Events on the stream that the store does not hold (its position is empty in the
    #: store, or holds another event): left by a failover that lost commits.
    phantoms: list[int] = field(default_factory=list)
    #: Messages this store did not publish (no Aura headers): reported, not compared.
    foreign_messages: int = 0
    #: Messages another store published (another Aura-Store id).
    other_store_messages: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.out_of_order or self.different
                    or self.phantoms)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class Mirrored:
    """One message of the stream, as far as verify cares."""

    position: int | None
    msg_id: str
    digest: str
    store: str | None
    transaction: int = 0
    #: Published with a ``dataschema`` (messages from before schemas have none).
    dataschema: bool = False

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.transaction, self.position or 0)


def _has_dataschema(body: bytes) -> bool:
    try:
        cloud_event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False  # a foreign message: compared as different anyway
    return isinstance(cloud_event, dict) and "dataschema" in cloud_event


async def each_message(nats_url: str, settings: StreamSettings
                       ) -> AsyncIterator[tuple[dict[str, str], bytes]]:
    """Every message of the stream, in stream order: (headers, body)."""
    nc = await broker.connect(nats_url, forever=False)
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.name)
        require_subjects(info.config, settings)
        total = info.state.messages
        if not total:
            return
        sub = await js.subscribe(f"{settings.subject_prefix}.>", stream=settings.name,
                                 ordered_consumer=True, pending_msgs_limit=total + 1)
        try:
            for _ in range(total):
                msg = await sub.next_msg(timeout=10)
                yield dict(msg.headers or {}), msg.data
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


async def read_stream(nats_url: str, settings: StreamSettings) -> list[Mirrored]:
    """Every message, in stream order."""
    return [
        Mirrored(_int(headers.get(POSITION_HEADER)), headers.get("Nats-Msg-Id", ""),
                 body_hash(data), headers.get(STORE_HEADER),
                 _int(headers.get(TRANSACTION_HEADER)) or 0, _has_dataschema(data))
        async for headers, data in each_message(nats_url, settings)
    ]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def compare(settings: StreamSettings, database_url: str, messages: list[Mirrored]) -> Report:
    with connect(database_url) as conn:
        store = str(identity.store_id(conn))
        report = Report(stream=settings.name, store=store, stream_messages=len(messages))
        own: list[Mirrored] = []
        for m in messages:
            if m.position is None:
                report.foreign_messages += 1
            elif m.store is not None and m.store != store:
                report.other_store_messages += 1
            else:
                own.append(m)
        positions = [m.position for m in own if m.position is not None]
        counts = Counter(positions)
        report.duplicated = sorted(p for p, n in counts.items() if n > 1)
        # The stream's order is the log's order: (transaction, position).
        report.out_of_order = [b.position or 0 for a, b in itertools.pairwise(own)
                               if b.cursor < a.cursor]
        last = max((m.cursor for m in own), default=ORIGIN)
        report.mirrored_up_to = last.position
        first: dict[int, Mirrored] = {}
        for m in own:
            assert m.position is not None
            first.setdefault(m.position, m)
        for event in eventlog.read_everything(conn):
            report.stored_events += 1
            if Cursor.of(event) > last:
                report.not_yet_mirrored += 1
                continue
            found = first.pop(event.position, None)
            if found is None:
                report.missing.append(event.position)
                continue
            # Messages from before stores had ids are compared in their own form.
            expected = to_message(event, settings.subject_prefix,
                                  UUID(store) if found.store else None,
                                  dataschema=found.dataschema)
            if found.msg_id != expected.msg_id:
                report.phantoms.append(event.position)  # another event at that position
            elif found.digest != body_hash(expected.body):
                report.different.append(event.position)
    # Messages whose position no stored event has: the store never kept them.
    report.phantoms = sorted([*report.phantoms, *first])
    return report


def verify(database_url: str, nats_url: str, settings: StreamSettings) -> Report:
    with connect(database_url):
        pass  # an unreachable database is one clear error before the stream is read
    return compare(settings, database_url, asyncio.run(read_stream(nats_url, settings)))
