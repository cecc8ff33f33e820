"""Output readable anywhere: through a pipe at 80 columns nothing is cut short, a table
too wide becomes records, and JSON and CSV say the same."""

from __future__ import annotations

import csv
import io
import json

from aura_es import AuraApp
from aura_es.catalog import load_catalog
from aura_es.testing import caught_up
from tests.support.cli import aura
from tests.support.workers import CATALOG


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
