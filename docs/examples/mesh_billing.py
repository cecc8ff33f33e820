"""A billing service on the mesh: LLM spend per tenant, in its own PostgreSQL table, from
the events aura-es mirrors to JetStream, each applied exactly once (aura_es.mesh).

Run: python docs/examples/mesh_billing.py SERVICE_DATABASE_URL NATS_URL
The service was built for version 2 of ``aura.llm_call.completed.v1`` (with
``latency_ms``): version 1 events are upcast on the way in, and a version 3 published
later would still reach it (FULL_TRANSITIVE compatibility, checked in aura-es's CI).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from decimal import Decimal
from typing import Any

import psycopg

from aura_es.db import connect
from aura_es.mesh import Delivery, MeshConsumer, Subscription

COMPLETED = "aura.llm_call.completed.v1"
REQUESTED = "aura.llm_call.requested.v1"


def ensure_tables(database_url: str) -> None:
    with connect(database_url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS billing_calls (call_id uuid PRIMARY KEY,"
                     " tenant text NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS billing_spend (tenant text PRIMARY KEY,"
                     " calls int NOT NULL, tokens bigint NOT NULL, cost_usd numeric NOT NULL,"
                     " latency_ms double precision NOT NULL)")


def requested(cur: psycopg.Cursor[Any], event: Delivery) -> None:
    tenant = event.cloud_event.get("auratenant") or "default"
    cur.execute("INSERT INTO billing_calls VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (event.aggregate_id, tenant))


def completed(cur: psycopg.Cursor[Any], event: Delivery) -> None:
    # The same transaction as the consumer's checkpoint: applied once, or not at all.
    cur.execute(
        "INSERT INTO billing_spend (tenant, calls, tokens, cost_usd, latency_ms)"
        " SELECT coalesce((SELECT tenant FROM billing_calls WHERE call_id = %s), 'default'),"
        " 1, %s, %s, %s ON CONFLICT (tenant) DO UPDATE SET calls = billing_spend.calls + 1,"
        " tokens = billing_spend.tokens + EXCLUDED.tokens,"
        " cost_usd = billing_spend.cost_usd + EXCLUDED.cost_usd,"
        " latency_ms = billing_spend.latency_ms + EXCLUDED.latency_ms",
        (event.aggregate_id, event.data["completion_tokens"], Decimal(event.data["cost_usd"]),
         event.data["latency_ms"]))


def consumer(database_url: str, nats_url: str, *, stream: str = "AURA_EVENTS",
             subject_prefix: str = "aura.events") -> MeshConsumer:
    return MeshConsumer("billing", database_url, nats_url, [
        Subscription(REQUESTED, 1, requested),
        Subscription(COMPLETED, 2, completed,
                     upcasters={1: lambda data: data.setdefault("latency_ms", 0.0)}),
    ], stream=stream, subject_prefix=subject_prefix)


async def main(database_url: str, nats_url: str) -> None:
    ensure_tables(database_url)
    service = consumer(database_url, nats_url)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop.set)
    await service.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
