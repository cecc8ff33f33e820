"""`scripts/bench replay`: a blue/green rebuild of DebateStateProjection over a large log,
with its live worker running beside it and events arriving, next to the downtime way
(a worker rebuilding from position 0 into an emptied table) in the same run.

The log is written through the application (200,000 events), then copied under fresh
aggregate ids up to the target size: same topics, payloads and per-aggregate order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg

from aura_es.app import AuraApp
from aura_es.dsn import parse_database_url
from scripts.benchmarks._common import (
    console,
    fresh_database,
    paced_appends,
    percentile,
    postgres,
    report,
    scalar,
)
from scripts.benchmarks.projections import (
    ROOT,
    checkpoint,
    log_size,
    start_worker,
    watch_checkpoint,
    write_log,
)


def multiply_log(conn: psycopg.Connection[Any], target: int) -> None:
    """Copies the log under new aggregate ids until it holds ``target`` events."""
    base = int(scalar(conn, "SELECT max(notification_id) FROM aura_events"))
    copy = 0
    while int(scalar(conn, "SELECT max(notification_id) FROM aura_events")) < target:
        copy += 1
        left = target - int(scalar(conn, "SELECT max(notification_id) FROM aura_events"))
        conn.execute(
            "INSERT INTO aura_events (originator_id, originator_version, topic, state)"
            " SELECT md5(originator_id::text || %s)::uuid, originator_version, topic, state"
            " FROM aura_events WHERE notification_id <= %s ORDER BY notification_id LIMIT %s",
            (f"copy{copy}", base, left),
        )
    conn.execute("VACUUM ANALYZE aura_events")


def live_phase(url: str, app: AuraApp, seconds: float, label: str,
               during: Any = None) -> tuple[dict[str, float], Any]:
    """Appends 50 debates/s while ``during`` runs (or for ``seconds``); the latency from
    commit to the live checkpoint covering it."""
    committed: dict[int, float] = {}
    visible: dict[int, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_checkpoint, args=(url, committed, visible, stop))
    watcher.start()
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(during() if during else None)
        except BaseException as e:  # re-raised below, in the main thread
            outcome.append(e)

    runner = threading.Thread(target=run)
    runner.start()
    started = time.perf_counter()
    while runner.is_alive() or time.perf_counter() - started < seconds:
        paced_appends(app, 50, 1.0, f"{label}-{time.perf_counter()}", committed)
    runner.join()
    time.sleep(1.0)
    stop.set()
    watcher.join()
    if outcome and isinstance(outcome[0], BaseException):
        raise outcome[0]
    latencies = [(visible[p] - t) * 1000 for p, t in committed.items() if p in visible]
    figures = {"events": len(committed), "seen": len(latencies),
               "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
               "max_ms": max(latencies, default=0.0)}
    return figures, outcome[0] if outcome else None


def rebuild_with_cli(url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "aura_es.cli", "replay", "DebateStateProjection", "--json"],
        env=dict(os.environ, AURA_ES_DATABASE_URL=url, PYTHONPATH=str(ROOT)),
        cwd=ROOT, capture_output=True, text=True,
    )
    if done.returncode:
        raise SystemExit(f"aura-es replay failed: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(*, quick: bool, as_json: bool, argv: list[str]) -> None:
    written = 20_000 if quick else 200_000
    target = 100_000 if quick else 1_000_000
    with postgres() as admin, fresh_database(admin) as url:
        write_log(url, written)
        app = AuraApp(url, pool_size=4)
        with psycopg.connect(parse_database_url(url).conninfo(), autocommit=True) as conn:
            with console.status(f"copying the log up to {target:,} events…"):
                multiply_log(conn, target)
            head, debate_events = log_size(conn)
            worker = start_worker(url)
            try:
                with console.status("downtime way: a worker builds the table from position 0…"):
                    started = time.perf_counter()
                    while checkpoint(conn) < head:
                        time.sleep(0.05)
                    offline_seconds = time.perf_counter() - started
                with console.status("live updates, no rebuild…"):
                    quiet, _ = live_phase(url, app, 10 if not quick else 4, "quiet")
                with console.status("blue/green rebuild beside the live worker, under appends…"):
                    busy, rebuilt = live_phase(url, app, 0, "busy", lambda: rebuild_with_cli(url))
            finally:
                worker.terminate()
                worker.wait()
        app.close()
    offline_rate = debate_events / offline_seconds
    rows = [
        {"measure": f"rebuild DebateStateProjection ({rebuilt['events']:,} of {target:,}+"
                    " events)",
         "downtime way (worker from 0, empty table)":
             f"{offline_rate:,.0f} events/s; read model partial for {offline_seconds:.0f} s",
         "aura-es replay (blue/green)":
             f"{rebuilt['events_per_second']:,.0f} events/s; never partial",
         "ratio": round(rebuilt["events_per_second"] / offline_rate, 2)},
        {"measure": "live append-to-visible at 50 events/s",
         "downtime way (worker from 0, empty table)":
             f"no rebuild: p50 {quiet['p50_ms']:.1f} ms / p95 {quiet['p95_ms']:.1f} ms",
         "aura-es replay (blue/green)":
             f"during the rebuild: p50 {busy['p50_ms']:.1f} ms / p95 {busy['p95_ms']:.1f} ms"
             f" / max {busy['max_ms']:.0f} ms ({busy['seen']}/{busy['events']} seen)",
         "ratio": ""},
    ]
    report("replay: blue/green rebuild next to a rebuild with downtime (same run)", rows,
           as_json=as_json)
