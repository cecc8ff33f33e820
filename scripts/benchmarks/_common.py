"""What every benchmark shares: a real PostgreSQL, fresh databases, percentiles, output."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.table import Table

from aura_es import embedded, tables
from aura_es.app import AuraApp

console = Console(stderr=True)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """The admin URL of the server named by AURA_ES_DATABASE_URL, or a private embedded one."""
    url = os.environ.get("AURA_ES_DATABASE_URL")
    if url:
        yield url
        return
    workdir = Path(tempfile.mkdtemp(prefix="aura-b-", dir="/tmp"))
    with console.status("starting a private embedded PostgreSQL…"):
        uri = embedded.start_postgres(workdir / "pg")
    try:
        yield uri
    finally:
        embedded.stop_postgres(workdir / "pg")
        shutil.rmtree(workdir, ignore_errors=True)  # ~70 MB a run, left in /tmp before


def url_for(admin_url: str, dbname: str) -> str:
    params = conninfo_to_dict(admin_url)
    host = str(params.get("host", ""))
    user = params.get("user", "postgres")
    if host.startswith("/"):
        return f"postgresql://{user}@/{dbname}?host={host}"
    password = params.get("password")
    auth = f"{user}:{password}" if password else str(user)
    return f"postgresql://{auth}@{host}:{params.get('port', 5432)}/{dbname}"


@contextlib.contextmanager
def fresh_database(admin_url: str, *, init: bool = True) -> Iterator[str]:
    """A new database (with the aura-es schema when ``init``), dropped afterwards."""
    name = f"aura_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = url_for(admin_url, name)
    try:
        if init:
            tables.create_all(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def percentile(samples: list[float], q: float) -> float:
    if len(samples) < 2:
        return samples[0] if samples else 0.0
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def report(title: str, rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(orjson.dumps({"benchmark": title, "rows": rows}, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=title)
    columns = list(dict.fromkeys(column for row in rows for column in row))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(column, "")) for column in columns))
    Console().print(table)


def paced_appends(
    app: AuraApp, rate: float, seconds: float, key_prefix: str, committed: dict[int, float]
) -> None:
    """Starts one debate every 1/rate s, recording position -> commit time as it goes
    (a watcher thread reads ``committed`` meanwhile)."""
    interval, next_at = 1.0 / rate, time.perf_counter()
    for i in range(int(rate * seconds)):
        result = app.execute(app.start_debate_command(
            f"{key_prefix} {i}", ["a"], idempotency_key=f"{key_prefix}-{i}"))
        committed[result.positions[0]] = time.perf_counter()
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    """The first column of the query's one row."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]
