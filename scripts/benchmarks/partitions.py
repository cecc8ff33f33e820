"""`scripts/bench partitions`: one projection across 1, 2, 4 and 8 worker processes.

An I/O-bound handler (it waits 1 ms per event, as a call to another service would) and
the CPU-bound DebateStateProjection, each split into 16 partitions, catch up on the same
log with K worker processes, side by side in one run; then how long the partitions take
to find new owners after a worker is killed and after one joins.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

from aura_es.dsn import parse_database_url
from scripts.benchmarks._common import console, fresh_database, postgres, report, scalar

ROOT = Path(__file__).resolve().parents[2]
#: The catalog's count (--partitions N to change it).
PARTITIONS = 16
IO_BOUND = "ExactlyOnce"
CPU_BOUND = "DebateStateProjection"
DEBATE_TOPICS = ["aura.debate.started.v1", "aura.debate.argument_added.v1",
                 "aura.debate.consensus_reached.v1", "aura.debate.failed.v1"]
LEASE_SECONDS = 2.0
#: Every wait here stops by itself.
PATIENCE_SECONDS = 600.0


def _catalog(directory: Path, partitions: int) -> Path:
    shipped = yaml.safe_load((ROOT / "catalog/projection-catalog.yaml").read_text())
    debates = next(p for p in shipped["projections"] if p["name"] == CPU_BOUND)
    path = directory / "partitioned.yaml"
    path.write_text(yaml.safe_dump({"event_modules": ["aura_es.domain.debate"], "projections": [
        {"name": IO_BOUND, "source_events": DEBATE_TOPICS[:2], "output_model": "Applied",
         "storage": "exactly_once", "handler": "tests.support.partitioned:WaitsPerEvent",
         "batch_size": 100, "partitions": partitions},
        debates | {"partitions": partitions},
    ]}))
    return path


def _write(url: str, events: int) -> None:
    """``events`` events of debates (40 each) from four writer processes at once."""
    debates = max(4, events // 40)
    writers = [subprocess.Popen(
        [sys.executable, "-m", "tests.support.partition_writer", url, f"bench{w}",
         str(debates // 4), "40"], env=_env(url), cwd=ROOT, stdout=subprocess.DEVNULL)
        for w in range(4)]
    with console.status(f"writing {debates // 4 * 4 * 40:,} events from 4 writers…"):
        if any(w.wait(timeout=PATIENCE_SECONDS) for w in writers):
            raise SystemExit("a writer failed")


def _env(url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "AURA_ES_DATABASE_URL": url, "PYTHONPATH": str(ROOT),
            "AURA_ES_LEASE_SECONDS": str(LEASE_SECONDS), **extra}


def _workers(url: str, catalog: Path, name: str, k: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(
        [sys.executable, "-m", "aura_es.worker.worker", "--projection", name, "--catalog",
         str(catalog), "--poll-seconds", "0.5"], env=_env(url), cwd=ROOT,
        stderr=subprocess.DEVNULL) for _ in range(k)]


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(timeout=60)


def _reset(conn: psycopg.Connection[Any], name: str, storage: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {storage}, {storage}__applied CASCADE")
    conn.execute("DELETE FROM aura_projection_checkpoints WHERE projection = %s", (name,))
    conn.execute("DELETE FROM aura_projection_workers WHERE projection = %s", (name,))
    conn.execute("DELETE FROM aura_read_model_tables WHERE projection = %s", (name,))


def _applied(conn: psycopg.Connection[Any], name: str) -> int:
    return int(scalar(conn, "SELECT coalesce(sum(events_applied), 0)"
                            " FROM aura_projection_checkpoints WHERE projection = %s", (name,)))


def _catch_up(url: str, conn: psycopg.Connection[Any], catalog: Path, name: str,
              storage: str, k: int, total: int) -> tuple[float, float]:
    """Events a second for ``k`` workers to apply all ``total`` events: from their start,
    and from their first applied event (without the processes' start-up)."""
    _reset(conn, name, storage)
    started = time.perf_counter()
    first: float | None = None
    workers = _workers(url, catalog, name, k)
    try:
        deadline = started + PATIENCE_SECONDS
        while (done := _applied(conn, name)) < total:
            if first is None and done:
                first, at_first = time.perf_counter(), done
            if time.perf_counter() > deadline:
                raise SystemExit(f"{name} with {k} workers did not catch up")
            time.sleep(0.02)
        ended = time.perf_counter()
        after_start = (total - at_first) / (ended - first) if first else total / (ended - started)
        return total / (ended - started), after_start
    finally:
        _stop(workers)


def _owned_by_live(conn: psycopg.Connection[Any], name: str,
                   workers: list[subprocess.Popen[bytes]]) -> bool:
    alive = {w.pid for w in workers if w.poll() is None}
    rows = conn.execute(
        "SELECT w.pid FROM aura_projection_checkpoints c LEFT JOIN aura_projection_workers w"
        " ON w.worker_id = c.owner WHERE c.projection = %s", (name,)).fetchall()
    return bool(rows) and all(r[0] in alive for r in rows)


def _until(what: str, condition: Any) -> float:
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > PATIENCE_SECONDS:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.perf_counter() - started


def _rebalance(url: str, conn: psycopg.Connection[Any], catalog: Path,
               partitions: int) -> dict[str, float]:
    """Seconds until every partition has a live owner: after a SIGKILL, after a join."""
    workers = _workers(url, catalog, IO_BOUND, 4)
    try:
        _until("the partitions dealt", lambda: _owned_by_live(conn, IO_BOUND, workers) and len({
            r[0] for r in conn.execute(
                "SELECT owner FROM aura_projection_checkpoints WHERE projection = %s",
                (IO_BOUND,))}) == min(4, partitions))
        workers[0].kill()
        workers[0].wait()
        after_kill = _until("the takeover", lambda: _owned_by_live(conn, IO_BOUND, workers))
        joined = _workers(url, catalog, IO_BOUND, 1)[0]
        workers.append(joined)
        after_join = _until("the newcomer's share", lambda: (_owned_by_live(
            conn, IO_BOUND, workers) and scalar(
            conn, "SELECT count(*) FROM aura_projection_checkpoints c JOIN"
                  " aura_projection_workers w ON w.worker_id = c.owner WHERE w.pid = %s",
            (joined.pid,)) > 0) or partitions < 4)  # fewer than 4: the newcomer stands by
        return {"after_kill": after_kill, "after_join": after_join}
    finally:
        _stop(workers)


def _row(measure: str, workers: int, rates: tuple[float, float],
         one: tuple[float, float]) -> dict[str, Any]:
    return {"measure": measure, "workers": workers,
            "events/s with process start": round(rates[0]),
            "vs 1 worker": round(rates[0] / one[0], 2),
            "events/s after the first event": round(rates[1]),
            "vs 1 worker after the first event": round(rates[1] / one[1], 2)}


def main(*, quick: bool, as_json: bool, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench partitions")
    parser.add_argument("--partitions", type=int, default=PARTITIONS, choices=range(1, 1025),
                        metavar="N", help=f"partitions of each projection (default {PARTITIONS})")
    partitions = parser.parse_args(argv).partitions
    events = 4_000 if quick else 20_000
    processes = (1, 2, 4) if quick else (1, 2, 4, 8)
    directory = Path(tempfile.mkdtemp(prefix="aura-bench-partitions-"))
    catalog = _catalog(directory, partitions)
    with postgres() as admin, fresh_database(admin) as url:
        _write(url, events)
        with psycopg.connect(parse_database_url(url).conninfo(), autocommit=True) as conn:
            io_total = int(scalar(conn, "SELECT count(*) FROM aura_events WHERE topic = ANY(%s)",
                                  (DEBATE_TOPICS[:2],)))
            cpu_total = int(scalar(conn, "SELECT count(*) FROM aura_events"
                                         " WHERE topic = ANY(%s)", (DEBATE_TOPICS,)))
            io: dict[int, tuple[float, float]] = {}
            for k in processes:
                with console.status(f"I/O-bound handler (1 ms an event), {k} workers…"):
                    io[k] = _catch_up(url, conn, catalog, IO_BOUND, "exactly_once", k,
                                      io_total)
            cpu: dict[int, tuple[float, float]] = {}
            for k in (1, 2):
                with console.status(f"{CPU_BOUND}, {k} workers…"):
                    cpu[k] = _catch_up(url, conn, catalog, CPU_BOUND, "debate_state", k,
                                       cpu_total)
            with console.status("rebalancing after a kill and a join…"):
                moved = _rebalance(url, conn, catalog, partitions)
    rows = [_row(f"catch-up of {io_total:,} events, handler waits 1 ms an event,"
                 f" {partitions} partitions", k, rates, io[1]) for k, rates in io.items()]
    rows += [_row(f"catch-up of {cpu_total:,} events, {CPU_BOUND} (CPU-bound),"
                  f" {partitions} partitions, 2 cores", k, rates, cpu[1])
             for k, rates in cpu.items()]
    rows += [{"measure": f"every partition owned again after a worker is SIGKILLed"
                         f" (lease {LEASE_SECONDS:g} s)", "workers": "4 -> 3",
              "seconds": round(moved["after_kill"], 2)},
             {"measure": "every partition owned, the newcomer with its share, after a join",
              "workers": "3 -> 4", "seconds": round(moved["after_join"], 2)}]
    report("partitions: one projection across worker processes (same run, same server)",
           rows, as_json=as_json)
