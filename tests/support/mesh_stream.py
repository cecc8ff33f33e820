"""A stream for mesh consumer tests, filled as a store's relay fills it (the same
CloudEvents and headers, from ``aura_es.mirror.cloudevents``), plus what a foreign or
hostile publisher can add."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import nats

from aura_es.mirror.cloudevents import Message, to_message
from aura_es.store.envelope import EventEnvelope
from aura_es.store.eventlog import Cursor
from tests.support.mesh_consumer import COUNTED


@dataclass(frozen=True)
class Published:
    event_id: str
    aggregate_id: UUID
    cursor: Cursor
    data: dict[str, Any]
    message: Message


@dataclass
class StreamOfStore:
    nats_url: str
    stream: str
    store_id: UUID = field(default_factory=uuid4)
    transaction: int = 1000
    position: int = 0
    versions: dict[UUID, int] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return self.stream.lower()

    def create(self) -> None:
        async def create() -> None:
            nc = await nats.connect(self.nats_url)
            try:
                await nc.jetstream().add_stream(name=self.stream, subjects=[f"{self.prefix}.>"])
            finally:
                await nc.close()
        asyncio.run(create())

    def delete(self) -> None:
        async def delete() -> None:
            nc = await nats.connect(self.nats_url)
            try:
                await nc.jetstream().delete_stream(self.stream)
            finally:
                await nc.close()
        asyncio.run(delete())

    def event(self, aggregate_id: UUID, data: dict[str, Any], *, new_transaction: bool = True
              ) -> Published:
        """The next event of the store's log (not yet published)."""
        if new_transaction:
            self.transaction += 1
        self.position += 1
        version = self.versions[aggregate_id] = self.versions.get(aggregate_id, 0) + 1
        event_id = str(uuid4())
        envelope = EventEnvelope(
            position=self.position, topic=COUNTED, aggregate_id=aggregate_id, version=version,
            payload=data, meta={"event_id": event_id, "tenant_id": "default"},
            occurred_at=datetime.now(UTC), transaction=self.transaction)
        return Published(event_id, aggregate_id, Cursor(self.transaction, self.position), data,
                         to_message(envelope, self.prefix, self.store_id))

    def publish(self, events: Iterable[Published], *, again: bool = False) -> None:
        """``again``: under a new ``Nats-Msg-Id``, as after the dedup window (a relay
        re-publishing what the stream lost)."""
        self.publish_raw([(e.message.body, {**e.message.headers(), **(
            {"Nats-Msg-Id": f"{e.message.msg_id}:again:{uuid4()}"} if again else {})})
            for e in events])

    def publish_raw(self, messages: list[tuple[bytes, dict[str, str]]],
                    subject: str | None = None) -> None:
        async def send() -> None:
            nc = await nats.connect(self.nats_url)
            try:
                js = nc.jetstream()
                for body, headers in messages:
                    await js.publish(subject or f"{self.prefix}.mesh.counted", body,
                                     headers=headers or None)
            finally:
                await nc.close()
        asyncio.run(send())

    def foreign(self) -> None:
        """A CloudEvent of the subscribed type that fits, with no store's headers."""
        body = json.dumps({"specversion": "1.0", "id": str(uuid4()), "type": COUNTED,
                           "source": "/somebody/else", "subject": str(uuid4()),
                           "data": {"n": 0}}).encode()
        self.publish_raw([(body, {})])

    def last_seq(self) -> int:
        async def last() -> int:
            nc = await nats.connect(self.nats_url)
            try:
                return int((await nc.jetstream().stream_info(self.stream)).state.last_seq)
            finally:
                await nc.close()
        return asyncio.run(last())
