"""A service consuming AURA's events from JetStream with a durable pull consumer.

Run: python docs/examples/mirror_consumer.py nats://127.0.0.1:4222
Each message is a CloudEvent (structured mode); ``auraposition`` is the global order.
Acknowledge after your own side effect commits: a crash before the ack redelivers the
message, and the CloudEvent ``id`` lets the consumer drop a redelivery it already did.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import nats


async def consume(url: str, *, stream: str = "AURA_EVENTS", durable: str = "billing",
                  subject: str = "aura.events.llm_call.>", limit: int | None = None
                  ) -> list[dict[str, Any]]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    # Durable: the server remembers what this service acknowledged, across restarts.
    subscription = await js.pull_subscribe(subject, durable=durable, stream=stream)
    seen: list[dict[str, Any]] = []
    try:
        while limit is None or len(seen) < limit:
            try:
                messages = await subscription.fetch(batch=100, timeout=2)
            except TimeoutError:  # nats-py's, or Python's when its deadline runs out
                if limit is not None:
                    break
                continue
            for message in messages:
                event = json.loads(message.data)
                seen.append(event)  # your handler here, idempotent on event["id"]
                await message.ack()
    finally:
        await nc.close()
    return seen


if __name__ == "__main__":
    for event in asyncio.run(consume(sys.argv[1], limit=10)):
        print(event["auraposition"], event["type"], event["subject"])
