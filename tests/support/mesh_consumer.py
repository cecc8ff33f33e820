"""A service on the mesh, as a process: applies the debate events of the stream (and the
tests' own ``test.mesh.counted.v1``) to its own table with aura_es.mesh, one row per
delivery (no unique key, so a double shows; ``n`` records the order they were applied).

    python -m tests.support.mesh_consumer SERVICE_DB NATS_URL STREAM NAME [DIE_AFTER]

DIE_AFTER: exit abruptly after that many commits (a consumer killed between its commit
and whatever it would have done next). ``run`` takes the other faults (``Faults``), for
tests that fork it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import psycopg

from aura_es.db import connect
from aura_es.mesh import Delivery, MeshConsumer, Subscription
from aura_es.retry import Backoff

COUNTED = "test.mesh.counted.v1"
#: The exit status of a process that died of its fault (``Faults``).
DIED_OF_FAULT = 9
TOPICS = ["aura.debate.started.v1", "aura.debate.argument_added.v1",
          "aura.debate.consensus_reached.v1", "aura.debate.failed.v1"]
TABLE_DDL = ("CREATE TABLE IF NOT EXISTS mesh_applied (n bigserial, consumer text,"
             " event_id text, topic text, aggregate_id uuid, position bigint,"
             " stream_seq bigint)")


@dataclass(frozen=True)
class Faults:
    #: Exit abruptly in the k-th handler call (before its batch commits); 0: never.
    die_in_handler: int = 0
    #: Exit abruptly right after the k-th commit; 0: never.
    die_after_commits: int = 0
    #: Retries before an event whose handler keeps failing is isolated as poison.
    max_retries: int | None = 2
    #: Handler failures wait this long (doubling) before the batch is tried again.
    retry_base: float = 0.01


def record(cur: psycopg.Cursor[Any], consumer: str, delivery: Delivery) -> None:
    cur.execute("INSERT INTO mesh_applied (consumer, event_id, topic, aggregate_id, position,"
                " stream_seq) VALUES (%s, %s, %s, %s, %s, %s)",
                (consumer, delivery.event_id, delivery.topic, delivery.aggregate_id,
                 delivery.position, delivery.stream_seq))


def block_sigterm() -> None:
    """In a new process, first thing: a SIGTERM is held until ``run`` can take it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def run(db_url: str, nats_url: str, stream: str, name: str, faults: Faults = Faults(),
        batch_size: int = 20) -> None:
    """Until SIGTERM (or a fault). Events of ``COUNTED`` whose data says ``poison``
    always fail; ``flaky: k`` fail their first k tries in this process."""
    with connect(db_url) as conn:
        conn.execute(TABLE_DDL)
    handled = commits = 0
    tries: dict[str, int] = {}

    def handle(cur: psycopg.Cursor[Any], delivery: Delivery) -> None:
        nonlocal handled
        handled += 1
        if faults.die_in_handler and handled >= faults.die_in_handler:
            os._exit(DIED_OF_FAULT)  # mid-batch: nothing of it committed
        tries[delivery.event_id] = tries.get(delivery.event_id, 0) + 1
        if delivery.data.get("poison"):
            raise RuntimeError(f"poison event {delivery.event_id}")
        if tries[delivery.event_id] <= int(delivery.data.get("flaky", 0)):
            raise RuntimeError(f"flaky event {delivery.event_id}, try {tries[delivery.event_id]}")
        record(cur, name, delivery)

    def committed(applied: int) -> None:
        nonlocal commits
        commits += 1
        if faults.die_after_commits and commits >= faults.die_after_commits:
            os._exit(DIED_OF_FAULT)  # after the commit, before anything else

    consumer = MeshConsumer(name, db_url, nats_url,
                            [Subscription(t, 1, handle) for t in [*TOPICS, COUNTED]],
                            stream=stream, subject_prefix=stream.lower(),
                            batch_size=batch_size, max_retries=faults.max_retries,
                            retry=Backoff(base=faults.retry_base, cap=faults.retry_base * 4),
                            on_committed=committed)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, consumer.stop.set)
        # A SIGTERM that came before the handler was there waited (``block_sigterm``).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        await consumer.run()

    asyncio.run(main())


if __name__ == "__main__":
    block_sigterm()
    db, nats_url, stream, name = sys.argv[1:5]
    run(db, nats_url, stream, name,
        Faults(die_after_commits=int(sys.argv[5]) if len(sys.argv) > 5 else 0,
               max_retries=None, retry_base=0.5))
