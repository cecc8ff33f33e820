"""Output readable anywhere: through a pipe at 80 columns nothing is cut short, a table
too wide becomes records, and JSON and CSV say the same."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import psycopg
import pytest

from aura_es import AuraApp
from aura_es.catalog import load_catalog
from aura_es.db import connect
from aura_es.mirror import progress
from aura_es.projection.engine.engine import Engine
from aura_es.projection.state import outbox
from aura_es.store.eventlog import Cursor
from aura_es.testing import caught_up
from tests.support.cli import aura
from tests.support.poison import POISONED_SPEC
from tests.support.workers import CATALOG, ROOT


def test_query_and_status_fit_80_columns_and_cut_nothing(app: AuraApp) -> None:
    long_topic = "A debate whose topic is far longer than any column could hold" * 2
    debate = app.start_debate(long_topic, ["agent-with-a-long-name", "b"],
                              idempotency_key="d1")
    app.start_debate("short", ["a"], idempotency_key="d2")
    caught_up(app.database_url, load_catalog(CATALOG).projections)
    env = {"COLUMNS": "80", "AURA_ES_DATABASE_URL": app.database_url}
    args = ["--catalog", str(CATALOG)]
    shown = aura("query", "DebateStateProjection", *args, env=env | _path()).stdout
    assert "-[ record 1 ]" in shown and str(debate) in shown
    assert long_topic in shown.replace("\n", "") or long_topic in " ".join(shown.split())
    status = aura("status", *args, env=env | _path()).stdout
    assert all(len(line) <= 80 for line in status.splitlines()), status
    wide = aura("status", "--wide", *args, env={**env, "COLUMNS": "200"} | _path()).stdout
    assert "checkpoint/head" in wide and "last error" in wide
    as_json = json.loads(aura("query", "DebateStateProjection", "--format", "json", *args,
                              env=env | _path()).stdout)
    as_csv = list(csv.DictReader(io.StringIO(aura(
        "query", "DebateStateProjection", "--format", "csv", *args, env=env | _path()).stdout)))
    assert [r["topic"] for r in as_csv] == [r["topic"] for r in as_json]
    assert {r["topic"] for r in as_json} == {long_topic, "short"}
    table = aura("query", "DebateStateProjection", "--format", "table", "--limit", "1",
                 *args, env={**env, "COLUMNS": "400"} | _path()).stdout
    assert "┃" in table or "|" in table


def _path() -> dict[str, str]:
    import os
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH")}


@pytest.mark.parametrize("columns", [80, 200])
def test_every_table_keeps_its_headers_whole_at_80_and_200_columns(
    app: AuraApp, columns: int,
) -> None:
    """Each table the command line prints: no header folded mid-word, nothing wider than
    the terminal unless a table was asked for (then printed whole and wide, as psql
    does), and the status table and the mirror's line on lines of their own."""
    debate = app.start_debate("topic " * 12, ["agent-with-a-long-name"], idempotency_key="t1")
    app.add_argument(debate, "agent-with-a-long-name", "for", "POISON", round=1,
                     idempotency_key="t2")
    with connect(app.database_url) as conn:
        engine = Engine(conn, POISONED_SPEC)
        while engine.runner.position < app.head_position():
            engine.advance()
        with conn.cursor() as cur:
            outbox.record(cur, "DebateStateProjection", 1, "k1", "test.argument-webhook", {})
        (effect,) = outbox.due(conn, "DebateStateProjection", 1)
        outbox.failed(conn, effect.id, "ConnectionError: the receiver does not answer", None)
    asyncio.run(_mirrored(app.database_url))
    caught_up(app.database_url, load_catalog(CATALOG).projections)
    env = {"COLUMNS": str(columns), "AURA_ES_DATABASE_URL": app.database_url} | _path()
    catalog = ["--catalog", str(CATALOG)]
    tables = {
        ("status", *catalog): ["projection", "state", "lag", "DLQ", "attention"],
        ("status", "--wide", *catalog): ["checkpoint/head", "worker", "breaker", "drift",
                                         "last error"],
        ("query", "DebateStateProjection", *catalog): ["debate_id", "topic", "participants"],
        ("dlq", "list"): ["projection", "position", "aggregate", "attempts", "parked"],
        ("dlq", "side-effects"): ["projection", "action", "attempts", "error"],
        ("schema", "list", "--dir", str(ROOT / "schemas"), *catalog): [
            "event type", "versions", "writes", "published"],
    }
    for args, headers in tables.items():
        result = aura(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        lines = result.stdout.splitlines()
        for header in headers:
            assert header in result.stdout, (args, header, result.stdout)
        if "--wide" in args:  # asked for in full: one header line, the terminal wraps
            assert any(all(h in line for h in headers) for line in lines), result.stdout
        else:
            assert all(len(line) <= columns for line in lines), (args, result.stdout)
    for watch in ([], ["--watch", "--until-caught-up", "--timeout", "60"]):
        status = aura("status", *catalog, *watch, env=env).stdout.splitlines()
        assert any(line.startswith("mirror BENCH: position") for line in status), status
    forced = aura("query", "DebateStateProjection", "--format", "table", *catalog,
                  env=env).stdout
    header_line = next(line for line in forced.splitlines() if "debate_id" in line)
    assert all(h in header_line for h in ("debate_id", "topic", "participants", "status"))
    assert "topic " * 11 in forced  # a long cell whole, on one line


async def _mirrored(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await progress.record(conn, "BENCH", Cursor(0, 1), 1)
