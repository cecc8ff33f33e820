"""The pytest plugin (``pip install 'aura-es[testing]'``): real servers, a fresh database
per test, an application for your aggregates, and your projections caught up on demand.

    def test_an_order_is_shipped(aura_app, aura_caught_up):
        aura_app.execute(...)
        aura_caught_up(["OrdersProjection"])
        ...

Servers: the ones ``AURA_ES_DATABASE_URL`` / ``AURA_ES_NATS_URL`` name, else embedded ones
started for the session (the ``embedded`` extra); ``--aura-servers=testcontainers`` (or
``aura_servers = testcontainers`` in the ini file) starts containers instead, when Docker
answers. A test that needs a server none of these can give is skipped, with the reason.
Your application class: override the ``aura_app_class`` fixture. Your catalog:
``--aura-catalog PATH`` or ``aura_catalog`` in the ini file (default: the project's
``catalog/projection-catalog.yaml``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from aura_es import tables
from aura_es.application import EventSourcedApp
from aura_es.catalog import DEFAULT_CATALOG, load_catalog
from aura_es.catalog.model import Catalog
from aura_es.errors import ConfigurationError, ServiceUnavailable
from aura_es.masterkey import MASTER_KEY
from aura_es.projection.engine.loading import check_imports, select
from aura_es.testing.catchup import CatchUp, CaughtUp, caught_up
from aura_es.testing.cluster import NatsCluster, PostgresPair
from aura_es.testing.servers import (
    PostgresServer,
    Source,
    Unavailable,
    nats_server,
    postgres_server,
)

#: The master key tests seal personal fields with when the environment gives none: fixed
#: (not a secret: tests only), so workers and processes a test starts share it.
TEST_MASTER_KEY = "YXVyYS1lcyB0ZXN0IG1hc3RlciBrZXksIG5vdCByZWE="


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "aura_async_replication: aura_pg_pair replicates asynchronously")
    os.environ.setdefault(MASTER_KEY, TEST_MASTER_KEY)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aura-es")
    group.addoption("--aura-servers", choices=[s.value for s in Source], default=None,
                    help="where PostgreSQL and NATS come from (default: auto)")
    group.addoption("--aura-catalog", default=None, help="the projection catalog to run")
    parser.addini("aura_servers", "auto, embedded or testcontainers", default="auto")
    parser.addini("aura_catalog", "the projection catalog", default=str(DEFAULT_CATALOG))


def _source(config: pytest.Config) -> Source:
    return Source(config.getoption("--aura-servers") or config.getini("aura_servers"))


@pytest.fixture(scope="session")
def aura_workdir() -> Iterator[Path]:
    # Short: Unix socket paths are limited to about 100 characters.
    path = Path(tempfile.mkdtemp(prefix="aura-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def aura_postgres(request: pytest.FixtureRequest, aura_workdir: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL server on which each test gets its own database."""
    try:
        with postgres_server(aura_workdir, _source(request.config)) as server:
            yield server
    except Unavailable as e:
        pytest.skip(f"no PostgreSQL for aura-es tests: {e}")


@pytest.fixture(scope="session")
def aura_template(aura_postgres: PostgresServer) -> Iterator[str]:
    """A database with every aura-es table, cloned for each test."""
    name = aura_postgres.create_database()
    tables.create_all(aura_postgres.url_for(name))
    yield name
    aura_postgres.drop_database(name)


@pytest.fixture
def aura_database_url(aura_postgres: PostgresServer, aura_template: str) -> Iterator[str]:
    """A fresh database of this test's own, with every table; dropped afterwards."""
    name = aura_postgres.create_database(template=aura_template)
    yield aura_postgres.url_for(name)
    aura_postgres.drop_database(name)


@pytest.fixture(scope="session")
def aura_nats_url(request: pytest.FixtureRequest, aura_workdir: Path) -> Iterator[str]:
    try:
        with nats_server(aura_workdir, _source(request.config)) as url:
            yield url
    except Unavailable as e:
        pytest.skip(f"no nats-server for aura-es tests: {e}")


@pytest.fixture
def aura_app_class() -> type[EventSourcedApp]:
    """Override this fixture to return your application class."""
    return EventSourcedApp


@pytest.fixture
def aura_app(
    aura_app_class: type[EventSourcedApp], aura_database_url: str,
) -> Iterator[EventSourcedApp]:
    app = aura_app_class(aura_database_url, pool_size=4)
    yield app
    app.close()


@pytest.fixture(scope="session")
def aura_catalog(request: pytest.FixtureRequest) -> Catalog:
    path = request.config.getoption("--aura-catalog") or request.config.getini("aura_catalog")
    catalog = load_catalog(path)
    check_imports(catalog.projections)
    return catalog


@pytest.fixture
def aura_caught_up(aura_database_url: str, aura_catalog: Catalog) -> CatchUp:
    """``aura_caught_up(names=None, timeout=30)``: runs those projections of the catalog
    (all by default) in this process until they reach the head of the log, as a worker
    would, side effects included."""

    def run(names: Sequence[str] = (), timeout: float = 30.0) -> CaughtUp:
        return caught_up(aura_database_url, select(aura_catalog, names), timeout=timeout)

    return run


@pytest.fixture
def aura_pg_pair(request: pytest.FixtureRequest) -> Iterator[PostgresPair]:
    """A private PostgreSQL primary with a streaming hot standby on 127.0.0.1 (synchronous
    replication; mark a test ``@pytest.mark.aura_async_replication`` for asynchronous),
    with every aura-es table: ``pair.url()`` names both hosts. Killed and removed after
    the test."""
    synchronous = request.node.get_closest_marker("aura_async_replication") is None
    workdir = Path(tempfile.mkdtemp(prefix="aura-pair-", dir="/tmp"))
    try:
        pair = PostgresPair(workdir, synchronous=synchronous).start()
    except (ConfigurationError, ServiceUnavailable) as e:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"no PostgreSQL pair for the failover tests: {e}")
    try:
        tables.create_all(pair.url())
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def aura_nats_cluster() -> Iterator[NatsCluster]:
    """A private 3-node JetStream cluster on 127.0.0.1; ``cluster.url`` lists every node."""
    workdir = Path(tempfile.mkdtemp(prefix="aura-nc-", dir="/tmp"))
    try:
        cluster = NatsCluster(workdir).start()
    except (ConfigurationError, ServiceUnavailable) as e:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"no NATS cluster for the failover tests: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
