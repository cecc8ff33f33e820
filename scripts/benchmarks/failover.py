"""`scripts/bench failover`: availability under load across a PostgreSQL failover and the
loss of the stream's leader node, and what the relay's standby guard costs, in one run.

On the failover harness (a primary with a synchronous streaming standby and a 3-node
JetStream cluster, all on 127.0.0.1): the AURA workers and the relay (R3 stream) run on
the multi-host URL while 4 writer processes send keyed commands at a steady rate (open
loop). A third of the way in the primary is killed (`pg_ctl stop -m immediate`) and the
standby promoted a second later; two thirds in, the stream's leader node is killed and
restarted 5 s later. Nothing is restarted. Then, on the same servers, append-to-stream
latency with the standby guard and without it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from aura_es import tables
from aura_es.mirror.stream import StreamSettings
from aura_es.testing.cluster import NatsCluster, PostgresPair
from scripts.benchmarks import mirror
from scripts.benchmarks._common import console, percentile, report, scalar

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 4


def _env(url: str, nats_url: str) -> dict[str, str]:
    return dict(os.environ, AURA_ES_DATABASE_URL=url, AURA_ES_NATS_URL=nats_url,
                PYTHONPATH=str(ROOT))


def _cli(*args: str, env: dict[str, str], **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "aura_es.cli", *args], env=env, cwd=ROOT,
                            text=True, **popen)


class Watcher:
    """Polls the new primary (whichever it is) for the workers' and the relay's progress:
    the first moment each moved after ``since``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.since = float("inf")
        self.first: dict[str, float] = {}
        self._stop = threading.Event()
        self._last: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(psycopg.Error), psycopg.connect(
                    self.url, autocommit=True, connect_timeout=1) as conn:
                while not self._stop.wait(0.02):
                    self._look(conn)

    def _look(self, conn: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        rows = {
            "projection commit": conn.execute("SELECT coalesce(sum(events_applied), 0) FROM"
                                              " aura_projection_checkpoints").fetchone(),
            "relay publish": conn.execute("SELECT coalesce(max(stream_seq), 0) FROM"
                                          " aura_mirror_progress").fetchone(),
        }
        for name, row in rows.items():
            value = int(row[0]) if row else 0
            moved = value > self._last.get(name, value)
            self._last[name] = value
            if moved and now > self.since and name not in self.first:
                self.first[name] = now

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def availability(pair: PostgresPair, cluster: NatsCluster, rate: float, seconds: float,
                 workdir: Path) -> dict[str, Any]:
    url, nats_url = pair.url(), cluster.url
    env = _env(url, nats_url)
    logs = [(workdir / name).open("w") for name in ("workers.log", "relay.log")]
    supervisor = _cli("workers", "run", "--catalog", str(ROOT / "catalog" /
                                                         "projection-catalog.yaml"),
                      env=env, stderr=logs[0])
    relay = _cli("mirror", "run", "--stream", "BENCH_FAILOVER", "--subject-prefix",
                 "bench_failover", "--replicas", "3", env=env, stderr=logs[1])
    watcher = Watcher(url)
    samples = [workdir / f"writer{i}.csv" for i in range(WRITERS)]
    writers = [_cli("load", "--seed", str(100 + i), "--rate", str(rate / WRITERS),
                    "--duration", str(seconds), "--samples", str(samples[i]), "--json",
                    env=env, stdout=subprocess.PIPE) for i in range(WRITERS)]
    started = time.monotonic()
    try:
        time.sleep(seconds / 3)
        pair.kill_primary()
        killed = watcher.since = time.monotonic()
        time.sleep(1.0)
        pair.promote_standby()
        promoted = time.monotonic()
        time.sleep(max(0.0, started + 2 * seconds / 3 - time.monotonic()))
        leader = cluster.stream_leader("BENCH_FAILOVER")
        cluster.kill_node(leader)
        time.sleep(5.0)
        cluster.start_node(leader)
        reports = [json.loads(w.communicate(timeout=seconds + 120)[0]) for w in writers]
    finally:
        watcher.close()
        for process in (supervisor, relay, *writers):
            if process.poll() is None:
                process.terminate()
        for process in (supervisor, relay, *writers):
            process.wait(timeout=60)
        for log in logs:
            log.close()
    rows = [(float(r[0]), float(r[1]), r[2]) for path in samples
            for r in list(csv.reader(path.open()))[1:]]
    ok = [(due, done) for due, done, error in rows if not error]
    first_success = min((done for _, done in ok if done > killed), default=float("nan"))
    # Outside the failover window: due before the kill, or after the first success
    # following it (the commands in between waited for the new primary).
    outside = [(done - due) * 1000 for due, done in ok
               if due < killed or due > first_success]
    return {
        "commands": len(rows), "succeeded": len(ok),
        "success_ratio": len(ok) / len(rows) if rows else 0.0,
        "longest_unavailability": max(r["longest_unavailability_seconds"] for r in reports),
        "p95_outside_ms": percentile(outside, 95), "p50_outside_ms": percentile(outside, 50),
        "to_first_command": first_success - killed,
        "to_first_projection_commit": watcher.first.get("projection commit", float("nan"))
        - killed,
        "to_first_relay_publish": watcher.first.get("relay publish", float("nan")) - killed,
        "promoted_after": promoted - killed,
    }


def relay_latency(pair: PostgresPair, cluster: NatsCluster, guard: bool, rate: int,
                  seconds: float) -> dict[str, Any]:
    """Append-to-stream latency at ``rate``/s, with or without the standby guard."""
    name = "BENCH_GUARD" if guard else "BENCH_NOGUARD"
    with psycopg.connect(mirror.connect_info(pair.url()), autocommit=True) as conn:
        head = int(scalar(conn, "SELECT coalesce(max(notification_id), 0) FROM aura_events"))
    return mirror.latency(pair.url(), cluster.url, rate, seconds, head,
                          settings=StreamSettings(name=name, subject_prefix=name.lower(),
                                                  replicas=3),
                          standby_guard=guard)


def main(*, quick: bool, as_json: bool, argv: list[str]) -> None:
    rate, seconds = 80.0, (21.0 if quick else 60.0)
    workdir = Path(tempfile.mkdtemp(prefix="aura-bf-", dir="/tmp"))
    with console.status("starting a primary with a standby and a 3-node NATS cluster…"):
        pair = PostgresPair(workdir / "pg", synchronous=True).start()
        cluster = NatsCluster(workdir / "nats").start()
    try:
        tables.create_all(pair.url())
        with console.status(f"{seconds:g} s at {rate:g} commands/s with a failover…"):
            run = availability(pair, cluster, rate, seconds, workdir)
        with console.status("relay latency with and without the standby guard…"):
            rebuilt = PostgresPair(workdir / "pg2", synchronous=False).start()
            tables.create_all(rebuilt.url())
            guarded = relay_latency(rebuilt, cluster, True, 100, 5 if quick else 15)
            unguarded = relay_latency(rebuilt, cluster, False, 100, 5 if quick else 15)
            rebuilt.stop()
    finally:
        cluster.stop()
        pair.stop()
    rows = [
        {"measure": f"keyed commands over {seconds:g} s at {rate:g}/s from {WRITERS} processes,"
                    " one primary failover and one NATS leader kill",
         "figure": f"{run['succeeded']}/{run['commands']} succeeded"
                   f" ({run['success_ratio']:.4%})"},
        {"measure": "longest unavailability a writer saw", "figure":
         f"{run['longest_unavailability']:.2f} s (promotion {run['promoted_after']:.1f} s"
         " after the kill)"},
        {"measure": "latency outside the failover window, p50 / p95",
         "figure": f"{run['p50_outside_ms']:.1f} / {run['p95_outside_ms']:.1f} ms"},
        {"measure": "from the primary's kill to the first successful command / projection"
                    " commit / relay publish",
         "figure": f"{run['to_first_command']:.2f} / {run['to_first_projection_commit']:.2f}"
                   f" / {run['to_first_relay_publish']:.2f} s"},
        {"measure": "append-to-stream at 100/s with an asynchronous standby, p50 / p95:"
                    " standby guard on vs off",
         "figure": f"{guarded['p50']:.1f} / {guarded['p95']:.1f} ms vs"
                   f" {unguarded['p50']:.1f} / {unguarded['p95']:.1f} ms"
                   f" ({guarded['seen']}/{guarded['events']},"
                   f" {unguarded['seen']}/{unguarded['events']} seen)"},
    ]
    report("failover: availability under load, and the standby guard's cost (one run)",
           rows, as_json=as_json)
