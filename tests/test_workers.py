"""G4 across processes: SIGKILL at random points, standby takeover, graceful stop, live load."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from aura_es.db import connect
from tests.support.workers import (
    ALL,
    ROOT,
    active_workers,
    assert_read_models_equal_fold,
    caught_up,
    env_for,
    head,
    positions,
    start_supervisor,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.slow



def test_sigkill_at_random_points_during_catch_up_applies_every_event_once(
    big_log_url: str,
) -> None:
    rng = random.Random(20261125)
    with connect(big_log_url) as conn:
        assert head(conn) == 50_000
        kills = 0
        while kills < 8 and not caught_up(conn):
            procs = [start_worker(big_log_url, name) for name in ALL]
            wait_for("a worker to become active", lambda: any(
                active_workers(conn, n) for n in ALL), timeout=30)
            time.sleep(rng.uniform(0.02, 0.3))
            for p in procs:
                p.kill()
                p.wait()
            kills += 1
            # After every kill the committed state is exactly a prefix of the log.
            assert_read_models_equal_fold(conn)
        assert kills >= 3, "the catch-up finished before the workers could be killed"
        procs = [start_worker(big_log_url, name) for name in ALL]
        wait_for("the catch-up", lambda: caught_up(conn), timeout=180)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=30) for p in procs] == [0, 0, 0]
        assert positions(conn) == dict.fromkeys(ALL, 50_000)
        assert_read_models_equal_fold(conn)


def test_a_standby_supervisor_takes_over_within_5_seconds(big_log_url: str) -> None:
    with connect(big_log_url) as conn:
        first = start_supervisor(big_log_url, "DebateStateProjection")
        active = wait_for("the first worker", lambda: active_workers(
            conn, "DebateStateProjection"), timeout=30)
        second = start_supervisor(big_log_url, "DebateStateProjection")
        wait_for("the standby", lambda: conn.execute(
            "SELECT 1 FROM aura_projection_workers WHERE role = 'standby'"
            " AND heartbeat_at > now() - interval '3 seconds'").fetchone(), timeout=30)
        os.killpg(first.pid, signal.SIGKILL)  # the whole host dies: supervisor and worker
        killed_at = time.monotonic()
        new = wait_for("the takeover", lambda: [
            pid for pid in active_workers(conn, "DebateStateProjection") if pid not in active
        ], timeout=10)
        took = time.monotonic() - killed_at
        assert took < 5, f"takeover took {took:.1f}s"
        assert new
        wait_for("the catch-up", lambda: caught_up(conn, ["DebateStateProjection"]), timeout=120)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
        first.wait()
        assert_read_models_equal_fold(conn, ["DebateStateProjection"])


def test_sigterm_commits_the_current_batch_and_exits_0(big_log_url: str) -> None:
    with connect(big_log_url) as conn:
        supervisor = start_supervisor(big_log_url, *ALL)
        wait_for("every projection to make progress", lambda: all(
            positions(conn).get(name, 0) > 1_000 for name in ALL), timeout=60)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=40) == 0
        assert conn.execute("SELECT count(*) FROM aura_projection_workers").fetchone() == (0,)
        assert_read_models_equal_fold(conn)


def test_live_writers_and_workers_converge(db_url: str) -> None:
    supervisor = start_supervisor(db_url, *ALL)
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "aura_es.cli", "load", "--seed", str(seed), "--commands",
             "1500", "--duplicate-rate", "0.2", "--concurrency", "2", "--batch-size", "4",
             "--json"],
            env=env_for(db_url), cwd=ROOT, stdout=subprocess.DEVNULL,
        )
        for seed in (1, 2)
    ]
    with connect(db_url) as conn:
        assert [w.wait(timeout=240) for w in writers] == [0, 0]
        # Positions have gaps (rolled-back racing duplicates used ids): count the rows.
        assert conn.execute("SELECT count(*) FROM aura_events").fetchone() == (3000,)
        wait_for("the catch-up", lambda: caught_up(conn), timeout=60)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
        assert_read_models_equal_fold(conn)
