"""Two ways to put a batch on the stream, both all-or-nothing in effect.

- Atomic batch (nats-server >= 2.12, stream ``allow_atomic``): the server stores the
  whole batch or none of it. nats-py has no helper, so the headers are set here.
- Pipelined ``publish_async`` (older servers): every message carries
  ``Nats-Expected-Last-Sequence``, so if one fails every later one is refused too and the
  stream never holds a gap or a reordering; the relay then re-reads the stream's tail.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Protocol

import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext

from aura_es.mirror.cloudevents import Message

MAX_ATOMIC_BATCH = 1000


class PublishFailed(Exception):
    """The server refused or did not confirm a batch; the stream's tail is the truth."""


class Publisher(Protocol):
    name: str

    async def publish(self, messages: list[Message], last_seq: int) -> int:
        """Stores ``messages`` after stream sequence ``last_seq``; returns the new last one."""
        ...


class AtomicBatchPublisher:
    name = "atomic-batch"

    def __init__(self, nc: Client, stream: str, timeout: float = 10.0) -> None:
        self.nc = nc
        self.stream = stream
        self.timeout = timeout

    async def publish(self, messages: list[Message], last_seq: int) -> int:
        assert 0 < len(messages) <= MAX_ATOMIC_BATCH
        batch_id = uuid.uuid4().hex
        for i, message in enumerate(messages, start=1):
            headers = message.headers()
            headers["Nats-Batch-Id"] = batch_id
            headers["Nats-Batch-Sequence"] = str(i)
            if i == 1:
                headers["Nats-Expected-Stream"] = self.stream
                headers["Nats-Expected-Last-Sequence"] = str(last_seq)
            if i < len(messages):
                await self.nc.publish(message.subject, message.body, headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            try:
                reply = await self.nc.request(
                    message.subject, message.body, timeout=self.timeout, headers=headers
                )
            except Exception as e:
                raise PublishFailed(f"atomic batch commit not confirmed: {e!r}") from e
            ack: dict[str, Any] = orjson.loads(reply.data or b"{}")
            if "error" in ack:
                raise PublishFailed(f"atomic batch refused: {ack['error']}")
            expected = last_seq + len(messages)
            if ack.get("seq") != expected:
                raise PublishFailed(f"atomic batch stored up to {ack.get('seq')}, not {expected}")
        return last_seq + len(messages)


class PipelinedPublisher:
    name = "publish-async"

    def __init__(self, js: JetStreamContext, stream: str, timeout: float = 10.0) -> None:
        self.js = js
        self.stream = stream
        self.timeout = timeout

    async def publish(self, messages: list[Message], last_seq: int) -> int:
        futures: list[asyncio.Future[Any]] = []
        try:
            for i, message in enumerate(messages):
                headers = message.headers()
                headers["Nats-Expected-Last-Sequence"] = str(last_seq + i)
                futures.append(await self.js.publish_async(
                    message.subject, message.body, headers=headers, stream=self.stream,
                    wait_stall=self.timeout,
                ))
            # publish_async futures have no timeout of their own.
            acks = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), self.timeout
            )
        except Exception as e:
            for future in futures:
                future.cancel()
            raise PublishFailed(f"publish not confirmed: {e!r}") from e
        for i, ack in enumerate(acks):
            if isinstance(ack, BaseException):
                raise PublishFailed(f"message {i + 1} of {len(messages)} refused: {ack!r}")
            if ack.seq != last_seq + i + 1:
                raise PublishFailed(f"message stored at {ack.seq}, expected {last_seq + i + 1}")
        return last_seq + len(messages)
