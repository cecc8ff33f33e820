"""`scripts/bench mesh`: the mesh consumer next to a plain JetStream pull consumer doing the
same inserts without exactly-once bookkeeping, in one run, on the same servers.

Both read the same stream (the relay's, with the schema registry filled) into a table of
their own, one row per event. The plain consumer fetches batches of the same size,
inserts them in one transaction and acknowledges after the commit: at least once, no
checkpoint, no schema check, no ordering guard. Measured: catch-up of a stored backlog,
and append-to-applied latency at a steady rate.

Runs from any checkout whose ``aura_es.mesh.MeshConsumer`` takes (name, database_url,
nats_url, subscriptions, stream=, subject_prefix=, batch_size=, on_committed=): copied
into an older tree, it measures that tree's consumer (docs/benchmarks.md, "before").
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import psycopg
from nats.js import api

import aura_es.domain  # noqa: F401  (the AURA event classes the stream carries)
from aura_es.app import AuraApp
from aura_es.load import run_load
from aura_es.mesh import Delivery, MeshConsumer, Subscription
from aura_es.mirror import schema_registry
from aura_es.mirror.cloudevents import POSITION_HEADER
from aura_es.mirror.relay import Relay
from aura_es.mirror.stream import StreamSettings
from aura_es.schemas.generate import event_classes, payload_version
from scripts.benchmarks._common import (
    console,
    fresh_database,
    paced_appends,
    percentile,
    postgres,
    report,
)
from scripts.benchmarks.mirror import mirror_position, nats_server

STREAM = StreamSettings(name="BENCH_MESH", subject_prefix="bench_mesh")
BATCH = 100
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def applied_table(url: str, table: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (position bigint NOT NULL, event_id text NOT NULL)")


def count(url: str, table: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0


class Clock:
    """Position -> the moment its row committed, as seen by the consumer's own process."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.applied: dict[int, float] = {}
        self.total = 0

    def committed(self, _: int = 0) -> None:
        now = time.perf_counter()
        for position in self.pending:
            self.applied.setdefault(position, now)
        self.total += len(self.pending)
        self.pending.clear()


# -- the two consumers, each in a thread of its own -----------------------------------------


def run_mesh(url: str, nats_url: str, clock: Clock) -> Callable[[], None]:
    def handle(cur: psycopg.Cursor[Any], event: Delivery) -> None:
        cur.execute("INSERT INTO mesh_applied VALUES (%s, %s)", (event.position, event.event_id))
        clock.pending.append(event.position)

    subscriptions = [Subscription(topic, payload_version(cls), handle)
                     for topic, cls in event_classes().items()]
    consumer = MeshConsumer("bench", url, nats_url, subscriptions, stream=STREAM.name,
                            subject_prefix=STREAM.subject_prefix, batch_size=BATCH,
                            on_committed=clock.committed)
    thread = threading.Thread(target=lambda: asyncio.run(consumer.run()), daemon=True)
    thread.start()

    def stop() -> None:
        consumer.stop.set()
        thread.join(timeout=30)

    return stop


def run_plain(url: str, nats_url: str, clock: Clock) -> Callable[[], None]:
    stopping = threading.Event()

    async def consume() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        sub = await js.pull_subscribe(f"{STREAM.subject_prefix}.>", durable="bench_plain",
                                      stream=STREAM.name,
                                      config=api.ConsumerConfig(max_ack_pending=BATCH * 10))
        with psycopg.connect(url) as conn:
            while not stopping.is_set():
                try:
                    msgs = await sub.fetch(BATCH, timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                with conn.transaction(), conn.cursor() as cur:
                    rows = [(int((m.headers or {})[POSITION_HEADER]),
                             (m.headers or {}).get("Nats-Msg-Id", "")) for m in msgs]
                    cur.executemany("INSERT INTO plain_applied VALUES (%s, %s)", rows)
                    clock.pending.extend(p for p, _ in rows)
                clock.committed()
                for m in msgs:
                    await m.ack()
        await nc.close()

    thread = threading.Thread(target=lambda: asyncio.run(consume()), daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join(timeout=30)

    return stop


Runner = Callable[[str, str, Clock], Callable[[], None]]


def catch_up(url: str, nats_url: str, run: Runner, table: str, events: int) -> float:
    clock = Clock()
    started = time.perf_counter()
    stop = run(url, nats_url, clock)
    while clock.total < events:
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    stop()
    assert count(url, table) == events, f"{table}: {count(url, table)} rows for {events} events"
    return events / seconds


def live(url: str, nats_url: str, run: Runner, table: str, rate: int, seconds: float,
         key: str) -> dict[str, Any]:
    clock = Clock()
    stop = run(url, nats_url, clock)
    while count(url, table) < count_events(url):  # the backlog first: only live events
        time.sleep(0.05)
    committed: dict[int, float] = {}
    app = AuraApp(url, pool_size=2)
    try:
        paced_appends(app, rate, seconds, key, committed)
        deadline = time.monotonic() + 30
        while not all(p in clock.applied for p in committed) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        app.close()
        stop()
    ms = [(clock.applied[p] - t) * 1000 for p, t in committed.items() if p in clock.applied]
    return {"events": len(committed), "seen": len(ms), "p50": percentile(ms, 50),
            "p95": percentile(ms, 95)}


def main(*, quick: bool, as_json: bool, argv: list[str]) -> None:
    events = 5_000 if quick else 50_000
    rate, seconds = 200, 5 if quick else 15
    with postgres() as admin, fresh_database(admin) as url, nats_server() as nats_url:
        app = AuraApp(url, pool_size=4)
        with console.status(f"writing {events:,} events…"):
            run_load(app, seed=9, commands=events, concurrency=2, batch_size=250)
            stored = app.head_position()
        app.close()
        for table in ("mesh_applied", "plain_applied"):
            applied_table(url, table)
        relay = Relay(url, nats_url, STREAM, schemas=schema_registry.local_schemas(SCHEMAS))
        relaying = threading.Thread(target=lambda: asyncio.run(relay.run()), daemon=True)
        relaying.start()
        with console.status("relaying the store to the stream…"):
            while mirror_position(url) < stored:
                time.sleep(0.05)
        backlog = count_events(url)
        with console.status("catch-up: plain pull consumer…"):
            plain = catch_up(url, nats_url, run_plain, "plain_applied", backlog)
        with console.status("catch-up: aura-es mesh consumer…"):
            mesh = catch_up(url, nats_url, run_mesh, "mesh_applied", backlog)
        with console.status(f"append-to-applied at {rate} events/s: plain…"):
            plain_live = live(url, nats_url, run_plain, "plain_applied", rate, seconds,
                              "plain")
        with console.status(f"append-to-applied at {rate} events/s: mesh…"):
            mesh_live = live(url, nats_url, run_mesh, "mesh_applied", rate, seconds, "mesh")
        relay.stop.set()
        relaying.join(timeout=30)
    rows = [
        {"measure": f"catch-up of {backlog:,} events",
         "baseline (plain pull consumer, at least once)": f"{plain:,.0f} events/s",
         "aura-es mesh consumer": f"{mesh:,.0f} events/s", "ratio": round(mesh / plain, 2)},
        {"measure": f"append-to-applied at {rate} events/s",
         "baseline (plain pull consumer, at least once)":
             f"p50 {plain_live['p50']:.1f} ms / p95 {plain_live['p95']:.1f} ms"
             f" ({plain_live['seen']}/{plain_live['events']})",
         "aura-es mesh consumer":
             f"p50 {mesh_live['p50']:.1f} ms / p95 {mesh_live['p95']:.1f} ms"
             f" ({mesh_live['seen']}/{mesh_live['events']})",
         "ratio": round(mesh_live["p95"] / plain_live["p95"], 2) if plain_live["p95"] else ""},
    ]
    report("mesh: aura-es consumer next to a plain JetStream pull consumer (same run)", rows,
           as_json=as_json)


def count_events(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM aura_events").fetchone()
        return int(row[0]) if row else 0
