"""G3 without a table lock: a reader following the log's order (transaction, position)
below the horizon misses nothing and repeats nothing, whatever the writers do: many
processes, transactions held open for random times, some rolled back, some with many
events; and a long writing transaction elsewhere on the server only holds readers back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from aura_es import AuraApp
from aura_es.catalog import load_catalog
from aura_es.db import connect
from aura_es.ops.status import HELD_BACK_SECONDS
from aura_es.store import eventlog
from aura_es.testing import caught_up
from aura_es.testing.servers import PostgresServer
from tests.support.workers import CATALOG, ROOT, env_for, wait_for


def tail(conn: psycopg.Connection[Any], cursor: eventlog.Cursor, seen: list[int]) -> Any:
    events = eventlog.read_after(conn, cursor, 500)
    seen.extend(e.position for e in events)
    return eventlog.Cursor.of(events[-1]) if events else cursor


def in_log_order(conn: psycopg.Connection[Any]) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT notification_id FROM aura_events ORDER BY transaction_id, notification_id")]


@pytest.mark.slow
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(writers=st.integers(8, 32), seed=st.integers(0, 10_000))
def test_a_tailing_reader_sees_every_committed_event_once_and_no_rolled_back_one(
    pg_server: PostgresServer, aura_template: str, writers: int, seed: int,
) -> None:
    name = pg_server.create_database(template=aura_template)
    url = pg_server.url_for(name)
    try:
        procs = [subprocess.Popen(
            [sys.executable, "-m", "tests.support.open_writer", url, str(seed + i), "25"],
            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env_for(url))
            for i in range(writers)]
        seen: list[int] = []
        cursor = eventlog.ORIGIN
        with connect(url) as conn:
            deadline = time.monotonic() + 240
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                moved = tail(conn, cursor, seen)
                if moved == cursor:
                    time.sleep(0.001)
                cursor = moved
            outcomes = [json.loads(line) for p in procs
                        for line in p.communicate()[0].splitlines()]
            while (moved := tail(conn, cursor, seen)) != cursor:
                cursor = moved
            committed = {i for o in outcomes if o["committed"] for i in o["ids"]}
            rolled_back = {i for o in outcomes if not o["committed"] for i in o["ids"]}
            order = in_log_order(conn)
            again: list[int] = []
            replay = eventlog.ORIGIN
            while (moved := tail(conn, replay, again)) != replay:
                replay = moved
        assert [p.returncode for p in procs] == [0] * writers
        assert len(seen) == len(set(seen))  # nothing twice
        assert set(seen) == committed and not set(seen) & rolled_back
        assert seen == order == again  # the log's order, the same every time it is read
    finally:
        pg_server.drop_database(name)


@pytest.mark.slow
def test_a_long_writing_transaction_elsewhere_holds_readers_back_without_a_skip(
    app: AuraApp, empty_db_url: str,
) -> None:
    specs = load_catalog(CATALOG).projections
    app.start_debate("before", ["a"], idempotency_key="d0")
    caught_up(app.database_url, specs)
    with connect(empty_db_url) as other, connect(app.database_url) as conn:
        other.execute("BEGIN")
        other.execute("SELECT pg_current_xact_id()")  # a writing transaction, in another db
        for i in range(1, 6):
            app.start_debate(f"held {i}", ["a"], idempotency_key=f"d{i}")
        with pytest.raises(AssertionError, match="reached position"):
            caught_up(app.database_url, specs, timeout=1)
        age = ("SELECT now() - xact_start > make_interval(secs => %s) FROM pg_stat_activity"
               " WHERE pid = %s")
        wait_for("the writer to be a second old", lambda: conn.execute(
            age, (1.1, other.info.backend_pid)).fetchone() == (True,))
        holder = eventlog.held_back(conn, at_least_seconds=1)
        assert holder is not None and holder.database == other.info.dbname
        assert holder.pid == other.info.backend_pid and holder.seconds >= 1
        # status reports a holder from this age on
        wait_for("the writer to be old enough to report", lambda: conn.execute(
            age, (HELD_BACK_SECONDS + 0.1, other.info.backend_pid)).fetchone() == (True,))
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "aura_es.cli", "status", "--json", "--catalog",
             str(CATALOG)], capture_output=True, text=True, env=env_for(app.database_url),
            timeout=60).stdout)
        assert status["horizon"]["held_back"]["pid"] == other.info.backend_pid
        other.execute("COMMIT")
        done = caught_up(app.database_url, specs)
        assert done.applied["DebateStateProjection"] == 5
        assert conn.execute("SELECT count(*) FROM debate_state").fetchone() == (6,)
