"""A service on the mesh, as a process: applies the debate events of the stream to its
own table with aura_es.mesh, one row per delivery (no unique key, so a double shows).

    python -m tests.support.mesh_consumer SERVICE_DB NATS_URL STREAM NAME [DIE_AFTER]

DIE_AFTER: exit abruptly after that many commits, before their acknowledgements (a
consumer killed between its commit and its acks).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import psycopg

from aura_es.db import connect
from aura_es.mesh import Delivery, MeshConsumer, Subscription

TOPICS = ["aura.debate.started.v1", "aura.debate.argument_added.v1",
          "aura.debate.consensus_reached.v1", "aura.debate.failed.v1"]


def record(cur: psycopg.Cursor[Any], delivery: Delivery) -> None:
    cur.execute("INSERT INTO mesh_applied (event_id, topic, aggregate_id, position,"
                " stream_seq) VALUES (%s, %s, %s, %s, %s)",
                (delivery.event_id, delivery.topic, delivery.aggregate_id, delivery.position,
                 delivery.stream_seq))


def main() -> None:
    db_url, nats_url, stream, name = sys.argv[1:5]
    die_after = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    with connect(db_url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS mesh_applied (event_id text, topic text,"
                     " aggregate_id uuid, position bigint, stream_seq bigint)")
    commits = 0

    def committed(applied: int) -> None:
        nonlocal commits
        commits += 1
        if die_after and commits >= die_after:
            os._exit(9)  # after the commit, before any acknowledgement

    consumer = MeshConsumer(name, db_url, nats_url,
                            [Subscription(t, 1, record) for t in TOPICS], stream=stream,
                            subject_prefix=stream.lower(), batch_size=20,
                            ack_wait_seconds=2, on_committed=committed)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, consumer.stop.set)
        await consumer.run()

    asyncio.run(run())


if __name__ == "__main__":
    main()
