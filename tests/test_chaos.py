"""Chaos, on a private embedded PostgreSQL (never the machine's shared one): a database
restart, a proxy that slows then cuts the workers' connections, poison events with
SIGKILLed workers under load. After recovery every read model equals the fold of the log,
minus exactly the dead-lettered events and their parked followers; nothing is applied
twice and no stored event is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aura_es.db import connect
from aura_es.testing.servers import PostgresServer
from tests.support import folds
from tests.support.chaos import poisoned_catalog, quick_catalog, stop, stored_count, writer
from tests.support.proxy import proxy_for
from tests.support.workers import (
    ALL,
    ROOT,
    active_workers,
    assert_read_models_equal_fold,
    caught_up,
    env_for,
    positions,
    start_supervisor,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_postgres_restart_under_writers_and_workers(
    chaos_db: str, private_pg: tuple[PostgresServer, Path], tmp_path: Path
) -> None:
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    log = tmp_path / "workers.log"
    supervisor = start_supervisor(chaos_db, *ALL, catalog=quick_catalog(tmp_path), log=log)
    with connect(chaos_db) as conn:
        # The restart must hit running workers: one that hits the supervisor's own start
        # is an unreachable server, which `workers run` refuses at once (exit 2).
        wait_for("every worker active", lambda: all(
            active_workers(conn, name) for name in ALL), timeout=60)
    writers = [writer(chaos_db, seed, 120) for seed in (1, 2)]
    wait_for("some events", lambda: stored_count(chaos_db) > 150, timeout=60)
    user = "pgserver" if os.geteuid() == 0 else None
    # Immediate mode: no clean shutdown, the server recovers from WAL like after a crash.
    pg_ctl(["-w", "-m", "immediate", "restart"], pgdata=private_pg[1], user=user)
    outputs = [w.communicate(timeout=180)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0]
    commands = sum(int(out.strip()) for out in outputs)
    with connect(chaos_db) as conn:
        try:
            wait_for("the catch-up", lambda: caught_up(conn), timeout=90)
        except AssertionError as e:
            raise AssertionError(f"{e}: {positions(conn)}\n{log.read_text()[-6000:]}") from e
        stop(supervisor)
        # Every command the writers retried through the restart is stored exactly once.
        assert stored_count(chaos_db) == commands
        assert_read_models_equal_fold(conn)
        assert conn.execute("SELECT count(*) FROM aura_dead_letters").fetchone() == (0,)
    assert "transient failure" in log.read_text()


def test_slow_then_cut_connections_open_the_breaker_and_recover(
    chaos_db: str, tmp_path: Path
) -> None:
    proxy, via_proxy = proxy_for(chaos_db)
    log = tmp_path / "workers.log"
    try:
        proxy.latency = 0.02
        supervisor = start_supervisor(via_proxy, *ALL, catalog=quick_catalog(tmp_path), log=log)
        load = writer(chaos_db, 3, 150)
        with connect(chaos_db) as conn:
            wait_for("progress through the slow proxy", lambda: len(
                [p for p in positions(conn).values() if p > 0]) == 3, timeout=60)
            proxy.cut()
            frozen = positions(conn)
            # Every worker has failed enough to open its breaker: and nothing moved.
            wait_for("three breakers to open", lambda: log.read_text().count(
                '"after": "open"') >= 3, timeout=60)
            assert positions(conn) == frozen
            proxy.latency = 0.0
            proxy.heal()
            assert load.wait(timeout=120) == 0
            wait_for("the catch-up", lambda: caught_up(conn), timeout=90)
            # The load may have been stored before the cut: then catching up is instant,
            # and what is left to see is every breaker closing again by itself.
            wait_for("the breakers to close", lambda: log.read_text().count(
                '"after": "closed"') >= 3, timeout=30)
            stop(supervisor)
            assert_read_models_equal_fold(conn)
            assert conn.execute("SELECT count(*) FROM aura_dead_letters").fetchone() == (0,)
    finally:
        proxy.close()
    text = log.read_text()
    assert '"after": "open"' in text and '"after": "closed"' in text, text[-2000:]


def test_poison_events_and_killed_workers_then_fix_and_retry(
    chaos_db: str, tmp_path: Path
) -> None:
    catalog = poisoned_catalog(tmp_path)
    marker = tmp_path / "fixed"
    env = {"AURA_TEST_POISON_FIXED": str(marker)}
    load = writer(chaos_db, 4, 200, poison_rate=0.05)
    with connect(chaos_db) as conn:
        for _ in range(4):  # SIGKILL the whole supervisor and its workers under load
            supervisor = start_supervisor(chaos_db, *ALL, catalog=catalog, env=env)
            time.sleep(1.5)
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
        supervisor = start_supervisor(chaos_db, *ALL, catalog=catalog, env=env)
        assert load.wait(timeout=120) == 0
        wait_for("the catch-up", lambda: caught_up(conn), timeout=90)
        letters = conn.execute(
            "SELECT id, position, aggregate_id FROM aura_dead_letters WHERE status = 'parked'"
        ).fetchall()
        parked = {r[0] for r in conn.execute("SELECT position FROM aura_dead_letter_parked")}
        poison = {e["position"] for e in folds.events(conn)
                  if "POISON" in e["data"].get("text", "")}
        assert letters and {p for _, p, _ in letters} <= poison
        assert poison <= {p for _, p, _ in letters} | parked
        excluded = frozenset({p for _, p, _ in letters} | parked)
        # Other aggregates flowed; the poisoned ones stopped exactly at their poison.
        assert folds.stored_debate_state(conn) == folds.debate_state(conn, exclude=excluded)
        marker.touch()  # the fix is deployed
        result = subprocess.run(
            [sys.executable, "-m", "aura_es.cli", "dlq", "retry", "--all", "--json",
             "--catalog", str(catalog)],
            env={**env_for(chaos_db), **env}, cwd=ROOT, capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["retried"] == len(letters)
        stop(supervisor)
        assert conn.execute(
            "SELECT count(*) FROM aura_dead_letters WHERE status = 'parked'").fetchone() == (0,)
        assert folds.stored_debate_state(conn) == folds.debate_state(conn)
        assert_read_models_equal_fold(conn, ["AgentPerformanceProjection", "LLMSpendProjection"])
