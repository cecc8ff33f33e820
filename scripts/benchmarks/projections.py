"""`scripts/bench projections`: catch-up and live latency of a projection worker, next to
the `eventsourcing` library's ProjectionRunner on the same events, in the same run."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection as LibraryProjection
from eventsourcing.projection import ProjectionRunner
from psycopg.sql import SQL

from aura_es.app import AuraApp
from aura_es.application import EventSourcedApp
from aura_es.dsn import parse_database_url
from aura_es.load import run_load
from scripts.benchmarks._common import (
    console,
    fresh_database,
    paced_appends,
    percentile,
    postgres,
    report,
    scalar,
)

ROOT = Path(__file__).resolve().parents[2]
DEBATE_TOPICS = (
    "aura.debate.started.v1", "aura.debate.argument_added.v1",
    "aura.debate.consensus_reached.v1", "aura.debate.failed.v1",
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_log(url: str, events: int) -> None:
    app = AuraApp(url, pool_size=4)
    with console.status(f"writing {events:,} events…"):
        run_load(app, seed=7, commands=events, concurrency=2, batch_size=250)
    app.close()


def log_size(conn: psycopg.Connection[Any]) -> tuple[tuple[int, int], int]:
    """The head of the log as a reader's cursor (transaction, position), and how many of
    the events are debate events."""
    row = conn.execute("SELECT transaction_id, notification_id FROM aura_events"
                       " ORDER BY transaction_id DESC, notification_id DESC LIMIT 1").fetchone()
    assert row is not None, "an empty log"
    debate_events = int(scalar(conn, "SELECT count(*) FROM aura_events WHERE topic = ANY(%s)",
                               (list(DEBATE_TOPICS),)))
    return (int(row[0]), int(row[1])), debate_events


def watch_checkpoint(url: str, committed: dict[int, float], visible: dict[int, float],
                     stop: threading.Event) -> None:
    """Records when the live checkpoint's cursor first covers each committed position.

    Appends commit out of position order, so "covered" is the log's order, not the
    position: (transaction, position) at or before the checkpoint's cursor."""
    cursors: dict[int, tuple[int, int]] = {}
    with psycopg.connect(parse_database_url(url).conninfo(), autocommit=True) as watcher:
        while not stop.is_set():
            now_at = checkpoint(watcher)
            stamp = time.perf_counter()
            # Positions are registered after their commit returns, so a position may
            # be covered before it is known here: check every unseen one each poll.
            unseen = [p for p in list(committed) if p not in visible]
            unknown = [p for p in unseen if p not in cursors]
            if unknown:
                cursors.update((int(pos), (int(txn), int(pos))) for txn, pos in watcher.execute(
                    "SELECT transaction_id, notification_id FROM aura_events"
                    " WHERE notification_id = ANY(%s)", (unknown,)))
            for position in unseen:
                if cursors[position] <= now_at:
                    visible[position] = stamp
            time.sleep(0.0005)


def checkpoint(conn: psycopg.Connection[Any],
               name: str = "DebateStateProjection") -> tuple[int, int]:
    """The projection's cursor (transaction, position); (-1, -1) before it exists."""
    row = conn.execute(
        "SELECT cursor_transaction, cursor_position FROM aura_projection_checkpoints"
        " WHERE projection = %s", (name,)
    ).fetchone()
    return (int(row[0] or 0), int(row[1] or 0)) if row else (-1, -1)


def start_worker(url: str, env: dict[str, str | None] | None = None) -> subprocess.Popen[bytes]:
    """A worker process; ``env`` values of None remove the variable."""
    merged = {**os.environ, "AURA_ES_DATABASE_URL": url, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "aura_es.worker.worker", "--projection", "DebateStateProjection",
         "--catalog", str(ROOT / "catalog/projection-catalog.yaml"), "--poll-seconds", "1"],
        env={k: v for k, v in merged.items() if v is not None}, stderr=subprocess.DEVNULL,
    )


def catch_up(url: str, conn: psycopg.Connection[Any], head: tuple[int, int], debate_events: int,
             env: dict[str, str | None] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    worker = start_worker(url, env)
    memory: list[float] = []
    first = started
    while (cursor := checkpoint(conn)) < head:
        if first == started and cursor[1] > 0:
            first = time.perf_counter()
        memory.append(rss_mb(worker.pid))
        time.sleep(0.05)
    done = time.perf_counter()
    worker.terminate()
    worker.wait()
    quarter = memory[len(memory) // 4] if memory else 0.0
    return {
        "seconds": done - started,
        "events_per_second": debate_events / (done - started),
        "events_per_second_after_start": debate_events / (done - first),
        "rss_mb_at_25pct": round(quarter, 1),
        "rss_mb_at_end": round(memory[-1], 1) if memory else 0.0,
    }


class DebateView(PostgresTrackingRecorder):
    """The library's way: one transaction per event (row write + tracking record)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sql_create_statements.append(SQL(  # type: ignore[arg-type]
            "CREATE TABLE IF NOT EXISTS baseline_debates (debate_id uuid PRIMARY KEY,"
            " status text NOT NULL, arguments int NOT NULL, rounds int NOT NULL)"
        ))

    def apply(self, debate_id: UUID, topic: str, event: Any, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            if topic == DEBATE_TOPICS[0]:
                curs.execute("INSERT INTO baseline_debates VALUES (%s, 'open', 0, 0)",
                             (debate_id,))
            elif topic == DEBATE_TOPICS[1]:
                curs.execute("UPDATE baseline_debates SET arguments = arguments + 1,"
                             " rounds = greatest(rounds, %s) WHERE debate_id = %s",
                             (event.round, debate_id))
            else:
                curs.execute("UPDATE baseline_debates SET status = %s WHERE debate_id = %s",
                             ("consensus" if topic == DEBATE_TOPICS[2] else "failed", debate_id))
            self._insert_tracking(curs, tracking)


class BaselineDebates(LibraryProjection[DebateView]):
    name = "baseline_debates"
    topics = DEBATE_TOPICS

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.apply(domain_event.originator_id, type(domain_event).TOPIC, domain_event,
                        tracking)


def baseline(url: str, conn: psycopg.Connection[Any], up_to_debate_events: int) -> dict[str, Any]:
    class App(EventSourcedApp):
        def __init__(self, env: Any = None) -> None:
            super().__init__(url, pool_size=2)

    pg = parse_database_url(url)
    env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": pg.dbname,
           "POSTGRES_HOST": pg.host, "POSTGRES_PORT": pg.port, "POSTGRES_USER": pg.user,
           "POSTGRES_PASSWORD": pg.password, "CREATE_TABLE": "y"}
    started = time.perf_counter()
    with ProjectionRunner(application_class=App, projection_class=BaselineDebates,
                          view_class=DebateView, env=env) as runner:
        target = conn.execute(
            "SELECT notification_id FROM aura_events WHERE topic = ANY(%s)"
            " ORDER BY notification_id OFFSET %s LIMIT 1",
            (list(DEBATE_TOPICS), up_to_debate_events - 1),
        ).fetchone()
        assert target is not None
        runner.wait(target[0], timeout=600)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "events_per_second": up_to_debate_events / seconds}


def live_latency(url: str, conn: psycopg.Connection[Any], rate: int, seconds: float,
                 writers: int = 1) -> dict[str, Any]:
    """Append at ``rate`` events/s in all, from ``writers`` threads (each its own
    connection, at rate/writers); time from commit to the checkpoint covering the event."""
    worker = start_worker(url)
    while not conn.execute(
        "SELECT 1 FROM aura_projection_workers WHERE pid = %s AND role = 'active'", (worker.pid,)
    ).fetchone():
        time.sleep(0.05)
    app = AuraApp(url, pool_size=writers + 1)
    committed: dict[int, float] = {}
    visible: dict[int, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_checkpoint, args=(url, committed, visible, stop))
    watcher.start()
    appenders = [threading.Thread(target=paced_appends,
                                  args=(app, rate / writers, seconds, f"live{writers}-{n}",
                                        committed))
                 for n in range(writers)]
    for appender in appenders:
        appender.start()
    for appender in appenders:
        appender.join()
    time.sleep(1.0)
    stop.set()
    watcher.join()
    worker.terminate()
    worker.wait()
    app.close()
    latencies = [(visible[p] - t) * 1000 for p, t in committed.items() if p in visible]
    return {"events": len(committed), "seen": len(latencies),
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95)}


def reset(conn: psycopg.Connection[Any]) -> None:
    """Back to an empty read model, so the next catch-up starts from position 0."""
    conn.execute("DROP TABLE IF EXISTS debate_state")
    conn.execute("DELETE FROM aura_projection_checkpoints")
    conn.execute("DELETE FROM aura_projection_workers")


def compare_observability(*, quick: bool, as_json: bool) -> None:
    """Catch-up with metrics recorded and INFO logs, next to the same catch-up with
    neither, alternating on one log so drift in the machine hits both alike."""
    events = 20_000 if quick else 200_000
    rounds = 2 if quick else 3
    with postgres() as admin, fresh_database(admin) as url:
        write_log(url, events)
        rates: dict[str, list[float]] = {"on": [], "off": []}
        with psycopg.connect(parse_database_url(url).conninfo(), autocommit=True) as conn, \
                tempfile.TemporaryDirectory(prefix="aura-metrics-") as metrics_dir:
            head, debate_events = log_size(conn)
            modes: dict[str, dict[str, str | None]] = {
                "on": {"PROMETHEUS_MULTIPROC_DIR": metrics_dir, "AURA_ES_LOG_LEVEL": "INFO"},
                "off": {"PROMETHEUS_MULTIPROC_DIR": None, "AURA_ES_LOG_LEVEL": "WARNING"},
            }
            for round_ in range(rounds):
                for mode in (("on", "off") if round_ % 2 == 0 else ("off", "on")):
                    reset(conn)
                    with console.status(f"catch-up {round_ + 1}/{rounds}, observability {mode}…"):
                        result = catch_up(url, conn, head, debate_events, modes[mode])
                    rates[mode].append(result["events_per_second_after_start"])
            if not list(Path(metrics_dir).glob("*.db")):
                raise SystemExit("the 'on' runs recorded no metrics: the comparison is void")
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    report("projections: catch-up with metrics and INFO logs on, next to off (same run)", [
        {"measure": f"catch-up, DebateStateProjection ({debate_events:,} events), median of"
                    f" {rounds}",
         "off (no metrics, WARNING logs)": f"{off:,.0f} events/s",
         "on (metrics + INFO logs)": f"{on:,.0f} events/s",
         "on / off": round(on / off, 3)},
    ], as_json=as_json)


def main(*, quick: bool, as_json: bool, argv: list[str]) -> None:
    if "--compare-observability" in argv:
        compare_observability(quick=quick, as_json=as_json)
        return
    events = 20_000 if quick else 200_000
    baseline_events = 2_000 if quick else 10_000
    with postgres() as admin, fresh_database(admin) as url:
        write_log(url, events)
        with psycopg.connect(parse_database_url(url).conninfo(), autocommit=True) as conn:
            head, debate_events = log_size(conn)
            with console.status("aura-es worker catching up…"):
                ours = catch_up(url, conn, head, debate_events)
            with console.status("eventsourcing ProjectionRunner catching up…"):
                lib = baseline(url, conn, baseline_events)
            live: dict[int, dict[str, Any]] = {}
            for writers in (1, 8):
                with console.status(f"live latency at 200 events/s from {writers} writers…"):
                    live[writers] = live_latency(url, conn, rate=200,
                                                 seconds=5 if quick else 15, writers=writers)
    rows = [
        {"measure": f"catch-up, DebateStateProjection ({debate_events:,} of {events:,} events)",
         "eventsourcing ProjectionRunner": f"{lib['events_per_second']:,.0f} events/s "
                                          f"(first {baseline_events:,})",
         "aura-es worker": f"{ours['events_per_second']:,.0f} events/s with process start,"
                           f" {ours['events_per_second_after_start']:,.0f} after",
         "ratio": round(ours["events_per_second"] / lib["events_per_second"], 1)},
        {"measure": "worker RSS at 25% / at the end of the catch-up",
         "eventsourcing ProjectionRunner": "",
         "aura-es worker": f"{ours['rss_mb_at_25pct']} MB / {ours['rss_mb_at_end']} MB",
         "ratio": ""},
    ]
    rows += [
        {"measure": f"append-to-visible at 200 events/s from {writers} writer"
                    f"{'s' if writers > 1 else ''} ({run['seen']}/{run['events']} seen)",
         "eventsourcing ProjectionRunner": "",
         "aura-es worker": f"p50 {run['p50_ms']:.1f} ms / p95 {run['p95_ms']:.1f} ms",
         "ratio": ""}
        for writers, run in live.items()
    ]
    report("projections: aura-es next to its baseline (same run, same server)", rows,
           as_json=as_json)
