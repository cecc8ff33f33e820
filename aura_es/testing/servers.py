"""Real PostgreSQL and NATS for tests: the servers the environment names, private embedded
ones (the ``embedded`` extra), or containers (``testcontainers``, when Docker answers).

Never mocks: a test of an event store that does not talk to a real database proves
little. When no server can be had, the tests that need one are skipped, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from aura_es import embedded
from aura_es.errors import ConfigurationError


class Source(StrEnum):
    AUTO = "auto"  # the environment's servers when set, else embedded ones
    EMBEDDED = "embedded"
    TESTCONTAINERS = "testcontainers"


class Unavailable(Exception):
    """No server of that kind can be had here (the reason says why): skip, don't fail."""


@dataclass
class PostgresServer:
    """A server on which tests create and drop their own databases."""

    admin_url: str

    def url_for(self, dbname: str) -> str:
        params = conninfo_to_dict(self.admin_url)
        params["dbname"] = dbname
        host = str(params.pop("host", ""))
        if host.startswith("/"):
            # A socket directory: keep it as a query parameter so it survives as a URL.
            user = params.get("user", "postgres")
            return f"postgresql://{user}@/{dbname}?host={host}"
        port = params.get("port", 5432)
        user = params.get("user", "postgres")
        password = params.get("password")
        auth = f"{user}:{password}" if password else str(user)
        return f"postgresql://{auth}@{host}:{port}/{dbname}"

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(make_conninfo(self.admin_url), autocommit=True)

    def create_database(self, template: str | None = None) -> str:
        name = f"aura_test_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            if template:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)))
            else:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@contextlib.contextmanager
def postgres_server(workdir: Path, source: Source = Source.AUTO) -> Iterator[PostgresServer]:
    url = os.environ.get("AURA_ES_DATABASE_URL")
    if url and source is Source.AUTO:
        yield PostgresServer(url)
        return
    if source is Source.TESTCONTAINERS:
        with _postgres_container() as url:
            yield PostgresServer(url)
        return
    pgdata = workdir / "pg"
    try:
        uri = embedded.start_postgres(pgdata)
    except ConfigurationError as e:
        raise Unavailable(str(e)) from None
    try:
        yield PostgresServer(uri)
    finally:
        embedded.stop_postgres(pgdata)


@contextlib.contextmanager
def nats_server(workdir: Path, source: Source = Source.AUTO) -> Iterator[str]:
    url = os.environ.get("AURA_ES_NATS_URL")
    if url and source is Source.AUTO:
        yield url
        return
    if source is Source.TESTCONTAINERS:
        with _nats_container() as url:
            yield url
        return
    nats_dir = workdir / "nats"
    try:
        nats_url = embedded.start_nats(nats_dir)
    except ConfigurationError as e:
        raise Unavailable(str(e)) from None
    try:
        yield nats_url
    finally:
        embedded.stop_nats(nats_dir)


def _docker() -> Any:
    try:
        import docker  # testcontainers depends on it
        from testcontainers.core.container import DockerContainer  # noqa: F401
    except ImportError:
        raise Unavailable("testcontainers is not installed: pip install 'aura-es[docker]'") \
            from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        raise Unavailable(f"Docker does not answer: {type(e).__name__}") from None
    return client


@contextlib.contextmanager
def _postgres_container() -> Iterator[str]:
    _docker()
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16") as container:
        url = container.get_connection_url()
        yield "postgresql://" + url.split("://", 1)[1]  # no SQLAlchemy driver suffix


@contextlib.contextmanager
def _nats_container() -> Iterator[str]:
    _docker()
    from testcontainers.core.container import DockerContainer

    container = DockerContainer("nats:2.10").with_command("-js").with_exposed_ports(4222)
    with container:
        host = container.get_container_host_ip()
        yield f"nats://{host}:{container.get_exposed_port(4222)}"
