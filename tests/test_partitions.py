"""G12: one projection across many worker processes, partitioned by aggregate, fenced by
leases (real processes, real PostgreSQL)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aura_es.db import connect
from tests.support import partitions as parts
from tests.support.workers import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def procs() -> Iterator[parts.Processes]:
    started = parts.Processes()
    yield started
    started.kill_all()


def _stop(*procs: subprocess.Popen[str]) -> list[int]:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    return [p.wait(timeout=30) for p in procs]


def _met_the_fence(log: Path, since: datetime, held: set[int]) -> list[str]:
    """What the resumed worker logged about the partitions taken while it was paused:
    its batch fenced off ("taken over"), its session ended by the server (a pause inside
    a transaction), or, paused between batches, the partitions given up at its first
    look (it was no longer a live member). Any is the fence at work; none is a worker
    carrying on as if nothing happened."""
    seen = []
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue  # a traceback's lines, from stderr
        entry = json.loads(line)
        if datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")) < since:
            continue
        event = entry["event"]
        if (event == "partition taken over"
                or (event == "transient failure" and "connection" in entry["error"].lower())
                or (event == "partition given up" and entry["partition"] in held)):
            seen.append(event)
    return seen


def test_two_workers_share_four_partitions_and_apply_every_event_once(
    db_url: str, tmp_path: Path, procs: parts.Processes,
) -> None:
    catalog = parts.catalog(tmp_path, 4)
    writers = [procs.add(parts.writer(db_url, f"w{i}", 10, 5)) for i in range(2)]
    workers = [procs.add(parts.start_worker(db_url, catalog)) for _ in range(2)]
    try:
        assert [w.wait(timeout=120) for w in writers] == [0, 0]
        with connect(db_url) as conn:
            total = parts.topic_events(conn)
            assert total == 100
            wait_for("every event applied", lambda: parts.applied(conn) == total, timeout=60)
            pids = wait_for("both workers holding two partitions each", lambda: (
                owned if sorted(list((owned := parts.owner_pids(conn)).values()).count(p)
                                for p in {w.pid for w in workers}) == [2, 2] else None),
                timeout=30)
            assert set(pids) == {0, 1, 2, 3}
            assert parts.dead_letters(conn) == []
    finally:
        assert _stop(*workers) == [0, 0]


LEASE = 2.0
POLL = 0.5


def test_kill_pause_join_and_stop_under_writers_keep_every_event_once_and_in_order(
    db_url: str, tmp_path: Path, procs: parts.Processes,
) -> None:
    """16 partitions, 4 workers, 300 aggregates x 40 events written meanwhile; a worker
    SIGKILLed mid-batch, one SIGSTOPped past its lease then resumed, a fifth joining, two
    stopped. Every event applied once, each aggregate in version order, every partition
    owned by one live worker, takeover within the lease and a poll interval."""
    catalog = parts.catalog(tmp_path, 16)
    logs = [tmp_path / f"worker{i}.log" for i in range(5)]
    workers = [procs.add(parts.start_worker(db_url, catalog, lease=LEASE, delay_ms=0.2,
                                            log=logs[i])) for i in range(4)]
    writers = [procs.add(parts.writer(db_url, f"w{i}", 100, 40)) for i in range(3)]
    with connect(db_url) as conn:
        def live_owned() -> bool:
            owned = parts.owner_pids(conn)
            alive = {w.pid for w in workers if w.poll() is None}
            return len(owned) == 16 and set(owned.values()) <= alive

        wait_for("all 16 partitions owned", lambda: live_owned() and parts.applied(conn) > 200,
                 timeout=60)
        # SIGKILL one mid-batch: its partitions go to the others within lease + poll.
        victim = workers[0]
        victim.kill()
        victim.wait()
        killed = time.monotonic()
        wait_for("the killed worker's partitions taken over", live_owned, timeout=30)
        took = time.monotonic() - killed
        assert took < LEASE + POLL + 1.0, f"takeover took {took:.1f} s"

        # SIGSTOP one past its lease: its partitions are taken; resumed, it commits nothing.
        paused = workers[1]
        held = wait_for("the worker to pause holding partitions", lambda: {
            p for p, pid in parts.owner_pids(conn).items() if pid == paused.pid}, timeout=30)
        paused.send_signal(signal.SIGSTOP)
        wait_for("the paused worker's partitions taken over", lambda: not (
            held & {p for p, pid in parts.owner_pids(conn).items() if pid == paused.pid}),
            timeout=30)
        resumed = datetime.now(UTC)
        paused.send_signal(signal.SIGCONT)

        # A fifth worker joins mid-run and gets a share.
        workers.append(procs.add(parts.start_worker(db_url, catalog, lease=LEASE,
                                                    delay_ms=0.2, log=logs[4])))
        wait_for("the fifth worker holding partitions", lambda: workers[4].pid in set(
            parts.owner_pids(conn).values()), timeout=30)

        # Two stop gracefully (SIGTERM): they finish their batch and release at once.
        assert _stop(workers[2], workers[3]) == [0, 0]
        wait_for("the stopped workers' partitions taken over", live_owned, timeout=30)

        assert [w.wait(timeout=180) for w in writers] == [0, 0, 0]
        total = parts.topic_events(conn)
        assert total == 300 * 40
        wait_for("every event applied", lambda: parts.applied(conn) == total, timeout=120)
        assert parts.dead_letters(conn) == []
        versions = conn.execute(
            f"SELECT count(*), min(version), max(version) FROM {parts.STORAGE}").fetchone()
        assert versions == (300, 40, 40)
        wait_for("every partition owned by a live worker", live_owned, timeout=30)
        # The resumed worker met the fence (the counts above: its batch committed nothing).
        assert _met_the_fence(logs[1], resumed, held), logs[1].read_text()[-2000:]
    assert _stop(*[w for w in workers if w.poll() is None]) == [0, 0]
