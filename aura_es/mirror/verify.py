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
from dataclasses import asdict, dataclass, field
from typing import Any

import nats
import psycopg
from psycopg import sql

from aura_es.dsn import parse_database_url
from aura_es.mirror.cloudevents import POSITION_HEADER, body_hash, to_message
from aura_es.mirror.stream import StreamSettings
from aura_es.projection.envelope import EventEnvelope
from aura_es.store.recorder import EVENTS_TABLE


@dataclass
class Report:
    stream: str
    stored_events: int = 0
    stream_messages: int = 0
    mirrored_up_to: int = 0
    not_yet_mirrored: int = 0
    missing: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    out_of_order: list[int] = field(default_factory=list)
    different: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.out_of_order or self.different)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


async def read_stream(nats_url: str, settings: StreamSettings) -> list[tuple[int, str, str]]:
    """(position, message id, body hash) of every message, in stream order."""
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=1,
                            error_cb=_ignore)
    try:
        js = nc.jetstream()
        info = await js.stream_info(settings.name)
        total = info.state.messages
        out: list[tuple[int, str, str]] = []
        if not total:
            return out
        sub = await js.subscribe(f"{settings.subject_prefix}.>", stream=settings.name,
                                 ordered_consumer=True, pending_msgs_limit=total + 1)
        try:
            while len(out) < total:
                msg = await sub.next_msg(timeout=10)
                headers = msg.headers or {}
                out.append((int(headers.get(POSITION_HEADER, -1)),
                            headers.get("Nats-Msg-Id", ""), body_hash(msg.data)))
        finally:
            await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def _ignore(_: Exception) -> None:
    """nats-py prints a traceback for every connection error; the caller reports it."""


def compare(settings: StreamSettings, database_url: str,
            mirrored: list[tuple[int, str, str]]) -> Report:
    report = Report(stream=settings.name, stream_messages=len(mirrored))
    positions = [p for p, _, _ in mirrored]
    counts = Counter(positions)
    report.duplicated = sorted(p for p, n in counts.items() if n > 1)
    report.out_of_order = [b for a, b in itertools.pairwise(positions) if b < a]
    report.mirrored_up_to = max(positions, default=0)
    first: dict[int, tuple[str, str]] = {}
    for position, msg_id, digest in mirrored:
        first.setdefault(position, (msg_id, digest))
    query = sql.SQL(
        "SELECT notification_id, originator_id, originator_version, topic, state FROM {}"
        " ORDER BY notification_id"
    ).format(sql.Identifier(EVENTS_TABLE))
    with psycopg.connect(parse_database_url(database_url).conninfo()) as conn, \
            conn.cursor(name="aura_verify") as cur:
        cur.itersize = 5000
        cur.execute(query)
        for row in cur:
            report.stored_events += 1
            event = EventEnvelope.from_row(row)
            if event.position > report.mirrored_up_to:
                report.not_yet_mirrored += 1
                continue
            found = first.pop(event.position, None)
            if found is None:
                report.missing.append(event.position)
                continue
            expected = to_message(event, settings.subject_prefix)
            if found != (expected.msg_id, body_hash(expected.body)):
                report.different.append(event.position)
    # Messages whose position no stored event has are differences too.
    report.different.extend(sorted(first))
    return report


def verify(database_url: str, nats_url: str, settings: StreamSettings) -> Report:
    return compare(settings, database_url, asyncio.run(read_stream(nats_url, settings)))
