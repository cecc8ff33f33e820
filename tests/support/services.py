"""Real PostgreSQL and NATS for the tests: the servers the environment names, or private
embedded ones started for this test session (never the machine's shared services unless
the environment names them)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from aura_es import embedded


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

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(make_conninfo(self.admin_url), autocommit=True)

    def create_database(self, template: str | None = None) -> str:
        name = f"aura_test_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            if template:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
            else:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def postgres_server(workdir: Path) -> Iterator[PostgresServer]:
    url = os.environ.get("AURA_ES_DATABASE_URL")
    if url:
        yield PostgresServer(url)
        return
    pgdata = workdir / "pg"
    uri = embedded.start_postgres(pgdata)
    try:
        yield PostgresServer(uri)
    finally:
        embedded.stop_postgres(pgdata)


@contextlib.contextmanager
def nats_server(workdir: Path) -> Iterator[str]:
    url = os.environ.get("AURA_ES_NATS_URL")
    if url:
        yield url
        return
    nats_dir = workdir / "nats"
    nats_url = embedded.start_nats(nats_dir)
    try:
        yield nats_url
    finally:
        embedded.stop_nats(nats_dir)
