"""Fixtures: a real PostgreSQL (a fresh database per test, cloned from a template that
already has the schema) and a real nats-server with JetStream."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aura_es import embedded, tables
from aura_es.app import AuraApp
from aura_es.testing.servers import PostgresServer

# The servers, the template and a fresh database per test come from the aura_es.testing
# plugin that users get (aura_postgres, aura_template, aura_database_url, aura_nats_url):
# the project's own suite is its first user.


@pytest.fixture(scope="session")
def workdir(aura_workdir: Path) -> Path:
    return aura_workdir


@pytest.fixture(scope="session")
def pg_server(aura_postgres: PostgresServer) -> PostgresServer:
    return aura_postgres


@pytest.fixture
def db_url(aura_database_url: str) -> str:
    """A fresh database with every aura-es table, dropped after the test."""
    return aura_database_url


@pytest.fixture
def empty_db_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database with no tables at all."""
    name = pg_server.create_database()
    yield pg_server.url_for(name)
    pg_server.drop_database(name)


@pytest.fixture
def app(db_url: str) -> Iterator[AuraApp]:
    application = AuraApp(db_url, pool_size=10)
    yield application
    application.close()


@pytest.fixture
def small_app(db_url: str) -> Iterator[AuraApp]:
    """An application whose pool holds one connection: the one its recorder keeps."""
    application = AuraApp(db_url, pool_size=1)
    yield application
    application.close()


@pytest.fixture(scope="session")
def nats_url(aura_nats_url: str) -> str:
    return aura_nats_url


@pytest.fixture
def private_nats() -> Iterator[tuple[str, Path]]:
    """A nats-server of this test's own (with its generated credentials): URL and dir."""
    workdir = Path(tempfile.mkdtemp(prefix="aura-n-", dir="/tmp"))
    url = embedded.start_nats(workdir / "nats")
    yield url, workdir / "nats"
    embedded.stop_nats(workdir / "nats")
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def cli_env(db_url: str) -> dict[str, str]:
    """Environment for running `aura-es` in a subprocess against the test database."""
    env = dict(os.environ)
    env["AURA_ES_DATABASE_URL"] = db_url
    return env


BIG_LOG_DB = "aura_test_big_log"
BIG_LOG_COMMANDS = 50_000


@pytest.fixture(scope="session")
def big_log_template(pg_server: PostgresServer, aura_template: str) -> Iterator[str]:
    """A template database holding a 50,000-event AURA log (made once per session)."""
    from aura_es.load import run_load

    pg_server.drop_database(BIG_LOG_DB)
    with pg_server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{BIG_LOG_DB}" TEMPLATE "{aura_template}"')
    app = AuraApp(pg_server.url_for(BIG_LOG_DB), pool_size=4)
    run_load(app, seed=11, commands=BIG_LOG_COMMANDS, concurrency=2, batch_size=250)
    app.close()
    yield BIG_LOG_DB
    pg_server.drop_database(BIG_LOG_DB)


@pytest.fixture
def big_log_url(pg_server: PostgresServer, big_log_template: str) -> Iterator[str]:
    """A fresh copy of the 50,000-event log."""
    name = pg_server.create_database(template=big_log_template)
    yield pg_server.url_for(name)
    pg_server.drop_database(name)


# -- a private PostgreSQL for chaos: tests that stop or restart it never touch the shared one


@pytest.fixture(scope="module")
def private_pg() -> Iterator[tuple[PostgresServer, Path]]:
    workdir = Path(tempfile.mkdtemp(prefix="aura-c-", dir="/tmp"))
    uri = embedded.start_postgres(workdir / "pg")
    try:
        yield PostgresServer(uri), workdir / "pg"
    finally:
        embedded.stop_postgres(workdir / "pg")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def chaos_db(private_pg: tuple[PostgresServer, Path]) -> Iterator[str]:
    server, _ = private_pg
    name = server.create_database()
    url = server.url_for(name)
    tables.create_all(url)
    yield url
    server.drop_database(name)
