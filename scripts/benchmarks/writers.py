"""Appends from many writer processes at once: the `eventsourcing` library's ``app.save``
(no keys) next to aura-es commands with idempotency keys, a bare psycopg INSERT (the
driver alone), and pgbench running the recorder's lock-free INSERT at the same client
counts (this server's limit).

A writer process connects and warms up, says "ready", waits for "go" on stdin, appends
its share and reports its count; the parent times from "go" to the last report.

    python -m scripts.benchmarks.writers plain|aura|bare URL COUNT   (one writer process)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

from scripts.benchmarks._common import console

ROOT = Path(__file__).resolve().parents[2]
WARM_UP = 5
#: The recorder's statement for one event without a key (store/recorder.py), for pgbench.
PGBENCH_APPEND = (
    "WITH first AS (SELECT aura_reserve_positions(1) AS f),"
    " ev AS (INSERT INTO aura_events (notification_id, originator_id, originator_version,"
    " topic, state) SELECT f, gen_random_uuid(), 1, 'bench.pgbench.v1', '\\x7b7d'::bytea"
    " FROM first RETURNING notification_id)"
    " SELECT notification_id FROM ev;\n"
)


def _writer(kind: str, url: str, count: int) -> None:
    from aura_es.app import AuraApp
    from scripts.benchmarks.append import PlainDebate, plain_app

    run = uuid4().hex
    if kind == "plain":
        plain = plain_app(url, 1, create_table=False)  # the parent made it

        def one(i: int) -> None:
            plain.save(PlainDebate(f"t{i}", ["a", "b"]))
    elif kind == "bare":
        import psycopg

        from scripts.benchmarks.cpu import BARE_INSERT, bare_row
        conn = psycopg.connect(url, autocommit=True)

        def one(i: int) -> None:
            conn.execute(BARE_INSERT, bare_row())
    else:
        ours = AuraApp(url, pool_size=1)

        def one(i: int) -> None:
            ours.start_debate(f"t{i}", ["a", "b"], idempotency_key=f"{run}:{i}")
    for i in range(WARM_UP):
        one(-1 - i)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(count):
        one(i)
    print(f"done {count}", flush=True)


def processes(url: str, kind: str, writers: int, total: int) -> float:
    """Events per second of ``writers`` processes appending ``total`` events together."""
    share = max(1, total // writers)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "scripts.benchmarks.writers", kind, url, str(share)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for _ in range(writers)]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise SystemExit(f"a {kind} writer process failed to start")
        started = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None
            if not p.stdout.readline().startswith("done"):
                raise SystemExit(f"a {kind} writer process failed")
        seconds = time.perf_counter() - started
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return share * writers / seconds


def pgbench_binary() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    try:
        import pgserver  # type: ignore[import-untyped]
    except ImportError:
        return None
    candidate = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pgbench"
    return str(candidate) if candidate.exists() else None


def pgbench(url: str, clients: int, seconds: int) -> float | None:
    """Transactions per second of the lock-free append statement (None: no pgbench)."""
    binary = pgbench_binary()
    if binary is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(PGBENCH_APPEND)
        script.flush()
        done = subprocess.run(
            [binary, "-n", "-f", script.name, "-c", str(clients), "-j", str(min(clients, 8)),
             "-T", str(seconds), url], capture_output=True, text=True, check=False)
    found = re.search(r"tps = ([\d.]+)", done.stdout)
    if done.returncode != 0 or not found:
        console.print(f"pgbench failed: {done.stderr.strip()[:200]}")
        return None
    return float(found.group(1))


def rows(url: str, total: int, pgbench_seconds: int) -> list[dict[str, Any]]:
    """One row per writer count, and the ratios the issue asks for, all from one run;
    beside ours, the same number of processes each running a bare psycopg INSERT (the
    anchor of the client CPU floor): how far the driver alone scales on this machine."""
    out: list[dict[str, Any]] = []
    figures: dict[int, tuple[float, float, float]] = {}
    for writers in (1, 8, 32):
        with console.status(f"{writers} writer processes…"):
            plain = processes(url, "plain", writers, total)
            ours = processes(url, "aura", writers, total)
            bare = processes(url, "bare", writers, total)
            limit = pgbench(url, writers, pgbench_seconds)
        figures[writers] = (plain, ours, bare)
        out.append({
            "case": f"1 event per command, {writers} writer process"
                    + ("es" if writers > 1 else ""),
            "baseline": "eventsourcing app.save, no keys",
            "baseline events/s": round(plain),
            "aura-es events/s": round(ours),
            "ratio": round(ours / plain, 2),
            "bare psycopg INSERT": f"{bare:,.0f} rows/s",
            "pgbench, lock-free INSERT": "" if limit is None else f"{limit:,.0f} tx/s",
        })
    _, one, bare_one = figures[1]
    for writers, than in ((8, 1), (32, 8)):
        _, ours, bare = figures[writers]
        _, ours_than, bare_than = figures[than]
        out.append({
            "case": f"aura-es: {writers} writer processes next to its own {than}",
            "baseline": f"aura-es, {than} writer process" + ("es" if than > 1 else ""),
            "baseline events/s": round(ours_than),
            "aura-es events/s": round(ours),
            "ratio": round(ours / ours_than, 2),
            "bare psycopg INSERT": f"{bare / bare_than:.2f}x its own {than}",
            "pgbench, lock-free INSERT": "",
        })
    out.append({
        "case": "aura-es: 32 writer processes next to its own 1",
        "baseline": "aura-es, 1 writer process",
        "baseline events/s": round(one),
        "aura-es events/s": round(figures[32][1]),
        "ratio": round(figures[32][1] / one, 2),
        "bare psycopg INSERT": f"{figures[32][2] / bare_one:.2f}x its own 1",
        "pgbench, lock-free INSERT": "",
    })
    return out


if __name__ == "__main__":
    _writer(sys.argv[1], sys.argv[2], int(sys.argv[3]))
