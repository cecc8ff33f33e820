"""`scripts/bench cpu`: client CPU per command, aura-es next to its anchors, in one run.

Measured with ``time.process_time`` (this process's CPU, user and system) over many
commands from one thread, so the server's work and the round trips' waiting are left
out: what a writer process spends of a core. The anchors: one bare autocommit psycopg
``INSERT`` of a row like an event's, and the `eventsourcing` library's own
``app.save`` without keys. ``--profile`` adds where a keyed command's CPU goes, by
stage, from cProfile. When the server runs on this machine (the embedded default), the
server's side is reported too: the CPU time of the backend process that ran the
commands (``/proc/PID/stat``), per command. ``--instructions`` counts the client's
instructions per command instead, under valgrind (``instructions.py``): a figure the
machine's changing speed does not move.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
import psycopg

from aura_es.app import AuraApp
from aura_es.commands import Create
from scripts.benchmarks import instructions
from scripts.benchmarks._common import console, fresh_database, postgres, report
from scripts.benchmarks.append import PlainDebate, UsageBatch, plain_app

#: A stored event as the bare INSERT writes it: the same columns, a similar payload.
_ROW = orjson.dumps({"topic": "AI ethics", "participants": ["a", "b"],
                     "timestamp": "2026-12-06T00:00:00+00:00",
                     "meta": {"event_id": str(uuid4()), "tenant_id": "default"}})
#: The anchor of the issue's floors: one bare psycopg INSERT of such a row (autocommit).
BARE_INSERT = ("INSERT INTO aura_events (originator_id, originator_version, topic, state)"
               " VALUES (%s, 1, 'bench.raw.v1', %s)")


def bare_row() -> tuple[UUID, bytes]:
    return uuid4(), _ROW


def cpu_per_call(calls: int, one: Callable[[int], object], start: int = 0) -> float:
    """Microseconds of this process's CPU per call (``one(start)``, ``one(start + 1)``, …)."""
    started = time.process_time()
    for i in range(start, start + calls):
        one(i)
    return (time.process_time() - started) / calls * 1e6


def side_by_side(calls: int, cases: dict[str, tuple[int, Callable[[int], object]]],
                 rounds: int = 10) -> dict[str, float]:
    """Each case's CPU per call, the cases taking turns in ``rounds`` rounds (a case is
    given as (calls per unit, the call)): the median of its rounds. A machine whose
    speed drifts during the run (another process, a CPU's clock) shifts every case
    alike instead of whichever ran then."""
    for i, (per, one) in enumerate(cases.values()):
        for j in range(max(1, min(50, calls // per) // 5)):
            one(-1 - j - 1000 * i)  # warm-up: the connections, prepared statements
    spent: dict[str, list[float]] = {case: [] for case in cases}
    for r in range(rounds):
        for case, (per, one) in cases.items():
            n = max(1, calls // per // rounds)
            spent[case].append(cpu_per_call(n, one, start=r * n) / per)
    return {case: statistics.median(values) for case, values in spent.items()}


def measure(url: str, n: int) -> dict[str, float]:
    app = AuraApp(url, pool_size=2)
    library = plain_app(url, 2, create_table=True)
    raw = psycopg.connect(url, autocommit=True)
    # An update needs an aggregate of its own: calls requested beforehand, each completed
    # once (the warm-up takes some too).
    requested = iter([app.request_llm_call("acme", "openai", "gpt-4o", 10,
                                           idempotency_key=f"r{i}-{uuid4()}")
                      for i in range(n + 100)])
    try:
        figures = side_by_side(n, {
            "bare psycopg INSERT": (1, lambda i: raw.execute(BARE_INSERT, bare_row())),
            "library app.save, no key": (
                1, lambda i: library.save(PlainDebate("AI ethics", ["a", "b"]))),
            "keyed single-event command": (
                1, lambda i: app.start_debate("AI ethics", ["a", "b"],
                                              idempotency_key=f"k{i}-{uuid4()}")),
            "keyed update command (load, decide, append)": (
                1, lambda i: app.complete_llm_call(next(requested), 5, Decimal("0.01"), 12.0,
                                                   idempotency_key=f"u{i}-{uuid4()}")),
            "a retried keyed command (absorbed)": (
                1, lambda i: app.start_debate("AI ethics", ["a", "b"],
                                              idempotency_key="the-same-key")),
            "100-event command, per event": (100, lambda i: app.execute(Create(
                "import", f"b{i}-{uuid4()}", {"n": i},
                lambda batch_id: UsageBatch.imported(batch_id, "bench", 100)))),
            "100 keyed commands in one transaction, per command": (
                100, lambda i: app.execute_many([app.start_debate_command(
                    "AI ethics", ["a", "b"], idempotency_key=f"m{i}-{j}-{uuid4()}")
                    for j in range(100)])),
        })
    finally:
        raw.close()
        library.close()
        app.close()
    return figures


def _backend_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a local server process so far, or None (not on this machine)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(url: str, n: int) -> dict[str, float]:
    """The server's CPU per command: the CPU time of every backend of the database
    (the commands' connection, and the waker's that sends their NOTIFYs), read before
    and after. Empty when the server is on another machine."""
    app = AuraApp(url, pool_size=1)
    raw = psycopg.connect(url, autocommit=True)
    cases: dict[str, Callable[[int], object]] = {
        "bare psycopg INSERT": lambda i: raw.execute(BARE_INSERT, bare_row()),
        "keyed single-event command": lambda i: app.start_debate(
            "AI ethics", ["a", "b"], idempotency_key=f"s{i}-{uuid4()}"),
    }
    spent: dict[str, float] = dict.fromkeys(cases, 0.0)
    try:
        for i in range(50):
            for one in cases.values():
                one(-1 - i)
        # Twice each, taking turns: a server's background work lands on both alike.
        for _ in range(2):
            for case, one in cases.items():
                before = _backends_cpu(raw)
                if before is None:
                    return {}
                for i in range(n):
                    one(i)
                after = _backends_cpu(raw) or {}
                # A backend that started meanwhile (the waker's) counts from nothing.
                spent[case] += sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    finally:
        raw.close()
        app.close()
    return {case: seconds / (2 * n) * 1e6 for case, seconds in spent.items()}


def _backends_cpu(conn: psycopg.Connection[Any]) -> dict[int, float] | None:
    """CPU seconds so far of each backend of this database, or None (not this machine)."""
    pids = [row[0] for row in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    seconds = {pid: _backend_cpu_seconds(pid) for pid in pids}
    if any(v is None for v in seconds.values()):
        return None
    return {pid: v for pid, v in seconds.items() if v is not None}


def profile(url: str, n: int) -> list[dict[str, Any]]:
    """Where a keyed single-event command's CPU goes: cumulative time of the stages."""
    app = AuraApp(url, pool_size=2)
    stages = {
        "aggregate and event creation (the command's decide)": "commands.py:_decide",
        "key hashing and argument checks": "commands.py:_prepare",
        "mapping, JSON and payload checks": "mapper.py:to_stored_event",
        "schema validation": "validate.py:check_payload",
        "the append: statement, driver, round trip": "recorder.py:insert_events",
        "the statement by libpq: parameters, send, wait, result (in the append)":
            "prepared.py:positions",
        "taking and returning the held connection (in the append)": "recorder.py:connection",
    }
    try:
        for i in range(50):
            app.start_debate("warm", ["a"], idempotency_key=f"w{i}-{uuid4()}")
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for i in range(n):
            app.start_debate("AI ethics", ["a", "b"], idempotency_key=f"p{i}-{uuid4()}")
        profiler.disable()
    finally:
        app.close()
    stats = pstats.Stats(profiler)
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = [{"stage": "the whole command", "µs per command":
                                   round(total / n * 1e6, 1), "share": "100%"}]
    for stage, where in stages.items():
        file, _, name = where.partition(":")
        cumulative = sum(v[3] for (path, _, fn), v in stats.stats.items()  # type: ignore[attr-defined]
                         if path.endswith(file) and fn == name)
        rows.append({"stage": stage, "µs per command": round(cumulative / n * 1e6, 1),
                     "share": f"{cumulative / total:.0%}" if total else ""})
    return rows


def main(*, quick: bool, as_json: bool, argv: list[str]) -> None:
    if "--instructions" in argv:
        counted_instructions(as_json=as_json)
        return
    n = 500 if quick else 3000
    with postgres() as admin, fresh_database(admin) as url:
        figures = measure(url, n)
        server = server_cpu(url, n)
        stages = profile(url, n) if "--profile" in argv else []
    bare = figures["bare psycopg INSERT"]
    rows = [{"case": case, "client CPU, µs": round(us, 1), "x bare INSERT": round(us / bare, 2)}
            for case, us in figures.items()]
    report("cpu: client CPU per command, one process (time.process_time, same run)", rows,
           as_json=as_json)
    if server:
        bare_server = server["bare psycopg INSERT"]
        report("server CPU per command (its backends' CPU time, same run)",
               [{"case": case, "server CPU, µs": round(us, 1),
                 "x bare INSERT": round(us / bare_server, 2)} for case, us in server.items()],
               as_json=as_json)
    if stages:
        report("where a keyed command's client CPU goes (cProfile, cumulative)", stages,
               as_json=as_json)


def counted_instructions(*, as_json: bool) -> None:
    """``--instructions``: each case's client instructions per command (valgrind)."""
    try:
        instructions.require_valgrind()  # before a server is started for nothing
        with postgres() as admin, fresh_database(admin) as url, console.status(
                "counting instructions under valgrind (each case twice; a few minutes)…"):
            counted = instructions.per_command(url)
    except instructions.ValgrindMissing as e:
        console.print(f"scripts/bench cpu: {e}", soft_wrap=True, markup=False)
        raise SystemExit(2) from None
    bare = counted["bare psycopg INSERT"]
    report("cpu: client instructions per command (callgrind, user space, same run)",
           [{"case": case, "instructions": round(count), "x bare INSERT": round(count / bare, 2)}
            for case, count in counted.items()], as_json=as_json)
