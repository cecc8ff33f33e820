"""One ordered pass over the stream from a sequence: a pull consumer of this process's
own, created at the consumer's checkpoint and dropped when the pass ends.

It acknowledges nothing (``AckPolicy.NONE``): the checkpoint in the service's database
is the only record of progress, so nothing the broker redelivers, in whatever order,
can move it. Messages come in stream order; a message missing in transit (the
consumer's own sequence skips) or a server-side consumer that vanished (a broker
restart) ends the pass with ``ReadBroken``, and the next pass starts again from the
checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

#: A pass's server-side consumer is removed this long after its process stops asking.
INACTIVE_SECONDS = 120.0


class ReadBroken(Exception):
    """The pass cannot go on in order; start a new one from the checkpoint."""


class OrderedRead:
    def __init__(self, js: JetStreamContext, stream: str, subject: str, start_seq: int,
                 *, description: str, alive_check_seconds: float = 5.0) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject
        self.start_seq = max(start_seq, 1)
        self.description = description
        self.alive_check_seconds = alive_check_seconds
        #: The stream sequence of the last message handed out.
        self.last_seq = self.start_seq - 1
        self._delivered = 0
        self._sub: Any = None
        self._checked_at = time.monotonic()

    async def open(self) -> None:
        self._sub = await self.js.pull_subscribe(
            self.subject, stream=self.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.start_seq, inactive_threshold=INACTIVE_SECONDS,
                description=self.description, mem_storage=True,
            ))

    async def batch(self, size: int, timeout: float) -> list[Msg]:
        """Up to ``size`` messages in stream order; [] when none came within ``timeout``."""
        assert self._sub is not None, "open() first"
        try:
            msgs: list[Msg] = await self._sub.fetch(size, timeout=timeout)
        except TimeoutError:
            # Idle, not failed. nats-py 2.16 raises its own TimeoutError on an empty
            # fetch (FetchTimeoutError only after a heartbeat), and Python's own when the
            # deadline ran out between its two requests (a loaded machine, a short
            # timeout): both are TimeoutErrors. Taken as a failure, an idle poll backed
            # the consumer off (up to its retry's cap). Now and then make sure
            # the server-side consumer still exists (a restarted broker forgets it).
            if time.monotonic() - self._checked_at > self.alive_check_seconds:
                self._checked_at = time.monotonic()
                try:
                    await self._sub.consumer_info()
                except NotFoundError:
                    raise ReadBroken("the server no longer has this pass's consumer"
                                     " (a broker restart?)") from None
            return []
        for msg in msgs:
            sequence = msg.metadata.sequence
            if sequence.consumer != self._delivered + 1:
                raise ReadBroken(f"a message was lost in transit (delivery {sequence.consumer}"
                                 f" after {self._delivered})")
            if sequence.stream <= self.last_seq:
                raise ReadBroken(f"stream sequence {sequence.stream} came after"
                                 f" {self.last_seq}")
            self._delivered = sequence.consumer
            self.last_seq = sequence.stream
        self._checked_at = time.monotonic()
        return msgs

    async def close(self) -> None:
        if self._sub is None:
            return
        sub, self._sub = self._sub, None
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        # Best effort: a consumer left behind is removed by the server when inactive.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.js.delete_consumer(self.stream, sub._consumer), 2)
