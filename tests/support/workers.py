"""Starting real worker and supervisor processes, and waiting on what they report."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from tests.support import folds

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "catalog" / "projection-catalog.yaml"
ALL = ("DebateStateProjection", "AgentPerformanceProjection", "LLMSpendProjection")


def env_for(db_url: str) -> dict[str, str]:
    return dict(os.environ, AURA_ES_DATABASE_URL=db_url, PYTHONPATH=str(ROOT))


def start_worker(db_url: str, projection: str, catalog: Path = CATALOG) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aura_es.worker.worker", "--projection", projection,
         "--catalog", str(catalog), "--poll-seconds", "0.5"],
        env=env_for(db_url), cwd=ROOT, text=True,
    )


def start_supervisor(
    db_url: str, *projections: str, catalog: Path = CATALOG, log: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    args = [arg for p in projections for arg in ("--projection", p)]
    return subprocess.Popen(
        [sys.executable, "-m", "aura_es.cli", "workers", "run", *args,
         "--catalog", str(catalog), "--poll-seconds", "0.5"],
        env={**env_for(db_url), **(env or {})}, cwd=ROOT, text=True,
        stderr=log.open("w") if log else None, start_new_session=True,
    )


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def positions(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return dict(conn.execute("SELECT projection, position FROM aura_projection_checkpoints"))


def cursors(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
    """Each projection's cursor in the log's order (transaction, position)."""
    return {name: (transaction, position) for name, transaction, position in conn.execute(
        "SELECT projection, cursor_transaction, cursor_position"
        " FROM aura_projection_checkpoints")}


def head(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM aura_events").fetchone()
    assert row is not None
    return int(row[0])


def caught_up(conn: psycopg.Connection[Any], names: Sequence[str] = ALL) -> bool:
    done = positions(conn)
    top = head(conn)
    return all(done.get(name, -1) >= top for name in names)


def active_workers(conn: psycopg.Connection[Any], projection: str) -> list[int]:
    return [row[0] for row in conn.execute(
        "SELECT pid FROM aura_projection_workers WHERE projection = %s AND role = 'active'"
        " AND heartbeat_at > now() - interval '3 seconds'", (projection,),
    )]


def assert_read_models_equal_fold(
    conn: psycopg.Connection[Any], names: Sequence[str] = ALL
) -> None:
    # One snapshot for checkpoints and tables: a killed worker's COMMIT may still land
    # while we read, and G4 is about what any single snapshot shows.
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        _compare(conn, names)
    finally:
        conn.execute("ROLLBACK")


def _compare(conn: psycopg.Connection[Any], names: Sequence[str]) -> None:
    # What a projection applied is the log in its readers' order up to its cursor.
    at = cursors(conn)
    # A worker killed before its first commit left no checkpoint: then it left nothing.
    for name, table in (("DebateStateProjection", "debate_state"),
                        ("AgentPerformanceProjection", "agent_performance"),
                        ("LLMSpendProjection", "llm_spend")):
        if name in names and name not in at:
            row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            empty = row == (None,) or conn.execute(
                f'SELECT count(*) FROM "{table}"').fetchone() == (0,)
            assert empty, f"{table} has rows but no checkpoint"
    names = [n for n in names if n in at]
    if "DebateStateProjection" in names:
        assert folds.stored_debate_state(conn) == folds.debate_state(
            conn, at["DebateStateProjection"])
    if "AgentPerformanceProjection" in names:
        up_to = at["AgentPerformanceProjection"]
        assert folds.stored_agent_performance(conn) == folds.agent_performance(conn, up_to=up_to)
        assert folds.stored_agent_performance(conn, windows=True) == folds.agent_performance(
            conn, bucket_seconds=60, up_to=up_to)
    if "LLMSpendProjection" in names:
        assert folds.stored_llm_spend(conn) == folds.llm_spend(conn, at["LLMSpendProjection"])
