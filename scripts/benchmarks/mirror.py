"""`scripts/bench mirror`: relay throughput next to raw nats-py publishing of the same
payloads, and append-to-stream latency at 200 events/s, in one run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg

from aura_es import embedded
from aura_es.app import AuraApp
from aura_es.db import conninfo
from aura_es.dsn import parse_database_url
from aura_es.load import run_load
from aura_es.mirror.cloudevents import POSITION_HEADER, to_message
from aura_es.mirror.relay import Relay
from aura_es.mirror.stream import StreamSettings
from aura_es.store.envelope import EventEnvelope
from scripts.benchmarks._common import (
    console,
    fresh_database,
    paced_appends,
    percentile,
    postgres,
    report,
    scalar,
)


@contextlib.contextmanager
def nats_server() -> Iterator[str]:
    url = os.environ.get("AURA_ES_NATS_URL")
    if url:
        yield url
        return
    workdir = Path(tempfile.mkdtemp(prefix="aura-bn-", dir="/tmp"))
    yield embedded.start_nats(workdir / "nats")
    embedded.stop_nats(workdir / "nats")


def connect_info(url: str) -> str:
    """The URL as conninfo, on the host that takes writes (a multi-host URL's primary)."""
    return str(conninfo(url)[0])


def mirror_position(url: str) -> int:
    with psycopg.connect(connect_info(url), autocommit=True) as conn:
        row = conn.execute("SELECT max(position) FROM aura_mirror_progress").fetchone()
        return int(row[0]) if row and row[0] is not None else 0


def run_relay(url: str, nats_url: str, settings: StreamSettings, pipelined: bool,
              **options: Any) -> Relay:
    relay = Relay(url, nats_url, settings, force_pipelined=pipelined, **options)
    thread = threading.Thread(target=lambda: asyncio.run(relay.run()), daemon=True)
    thread.start()
    relay.thread = thread  # type: ignore[attr-defined]
    return relay


def relay_throughput(url: str, nats_url: str, head: int, count: int, pipelined: bool) -> float:
    name = "BENCH_PIPELINED" if pipelined else "BENCH_ATOMIC"
    settings = StreamSettings(name=name, subject_prefix=name.lower())
    with psycopg.connect(parse_database_url(url).conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM aura_mirror_progress")
    started = time.perf_counter()
    relay = run_relay(url, nats_url, settings, pipelined)
    while mirror_position(url) < head:
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    relay.stop.set()  # type: ignore[attr-defined]
    relay.thread.join()  # type: ignore[attr-defined]
    return count / seconds


def raw_throughput(url: str, nats_url: str) -> float:
    """nats-py publish_async of the same CloudEvent bodies, no store, no checks."""
    with psycopg.connect(parse_database_url(url).conninfo(), autocommit=True) as conn:
        rows = conn.execute("SELECT notification_id, originator_id, originator_version, topic,"
                            " state FROM aura_events ORDER BY notification_id").fetchall()
    messages = [to_message(EventEnvelope.from_row(r), "bench_raw") for r in rows]

    async def publish() -> float:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(name="BENCH_RAW", subjects=["bench_raw.>"])
        started = time.perf_counter()
        for i in range(0, len(messages), 1000):
            futures = [await js.publish_async(m.subject, m.body, headers=m.headers())
                       for m in messages[i:i + 1000]]
            await asyncio.gather(*futures)
        seconds = time.perf_counter() - started
        await nc.close()
        return len(messages) / seconds

    return asyncio.run(publish())


def latency(url: str, nats_url: str, rate: int, seconds: float, head: int, *,
            settings: StreamSettings | None = None, **options: Any) -> dict[str, Any]:
    """Append-to-stream latency at ``rate``/s through a relay of ``settings`` (after the
    backlog up to ``head`` is mirrored); ``options`` go to the relay."""
    settings = settings or StreamSettings(name="BENCH_LIVE", subject_prefix="bench_live")
    with psycopg.connect(connect_info(url), autocommit=True) as conn:
        conn.execute("DELETE FROM aura_mirror_progress")
    relay = run_relay(url, nats_url, settings, False, **options)
    while mirror_position(url) < head:  # the backlog first: measure live events only
        time.sleep(0.05)
    committed: dict[int, float] = {}
    received: dict[int, float] = {}
    ready = threading.Event()
    stop = threading.Event()

    async def listen() -> None:
        nc = await nats.connect(nats_url.split(","))
        while True:
            try:
                await nc.jetstream().stream_info(settings.name)
                break
            except Exception:
                await asyncio.sleep(0.05)

        async def on_message(msg: Any) -> None:
            received[int((msg.headers or {})[POSITION_HEADER])] = time.perf_counter()

        await nc.jetstream().subscribe(f"{settings.subject_prefix}.>", cb=on_message,
                                       deliver_policy=nats.js.api.DeliverPolicy.NEW)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await nc.close()

    listener = threading.Thread(target=lambda: asyncio.run(listen()), daemon=True)
    listener.start()
    ready.wait(30)
    time.sleep(1.0)
    app = AuraApp(url, pool_size=2)
    paced_appends(app, rate, seconds, settings.name.lower(), committed)
    time.sleep(1.5)
    stop.set()
    listener.join()
    relay.stop.set()  # type: ignore[attr-defined]
    relay.thread.join()  # type: ignore[attr-defined]
    app.close()
    ms = [(received[p] - t) * 1000 for p, t in committed.items() if p in received]
    return {"events": len(committed), "seen": len(ms), "p50": percentile(ms, 50),
            "p95": percentile(ms, 95)}


def main(*, quick: bool, as_json: bool, argv: list[str]) -> None:
    events = 20_000 if quick else 200_000
    with postgres() as admin, fresh_database(admin) as url, nats_server() as nats_url:
        app = AuraApp(url, pool_size=4)
        with console.status(f"writing {events:,} events…"):
            run_load(app, seed=9, commands=events, concurrency=2, batch_size=250)
        app.close()
        with psycopg.connect(parse_database_url(url).conninfo(), autocommit=True) as conn:
            head = int(scalar(conn, "SELECT max(notification_id) FROM aura_events"))
            count = int(scalar(conn, "SELECT count(*) FROM aura_events"))
        with console.status("raw nats-py publish_async…"):
            raw = raw_throughput(url, nats_url)
        with console.status("relay, atomic batches…"):
            atomic = relay_throughput(url, nats_url, head, count, pipelined=False)
        with console.status("relay, pipelined publish_async…"):
            pipelined = relay_throughput(url, nats_url, head, count, pipelined=True)
        with console.status("append-to-stream latency at 200 events/s…"):
            live = latency(url, nats_url, 200, 5 if quick else 15, head)
    rows: list[dict[str, Any]] = [
        {"measure": f"mirror {count:,} stored events", "baseline (raw nats-py publish_async)":
         f"{raw:,.0f} msg/s", "aura-es relay": f"atomic batches {atomic:,.0f} events/s;"
         f" pipelined {pipelined:,.0f} events/s", "ratio": round(atomic / raw, 2)},
        {"measure": f"append-to-stream at 200 events/s ({live['seen']}/{live['events']} seen)",
         "baseline (raw nats-py publish_async)": "",
         "aura-es relay": f"p50 {live['p50']:.1f} ms / p95 {live['p95']:.1f} ms", "ratio": ""},
    ]
    report("mirror: aura-es relay next to raw nats-py (same run, same servers)", rows,
           as_json=as_json)
