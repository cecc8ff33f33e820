"""Plain connections to the store's database, with one clear error when it does not answer."""

from __future__ import annotations

from typing import Any

import psycopg

from aura_es.dsn import parse_database_url, redact
from aura_es.errors import ServiceUnavailable


def connect(database_url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A new connection (callers close it); ``ServiceUnavailable`` naming the server,
    never its password, when it cannot be made."""
    params = parse_database_url(database_url)
    try:
        timeout = params.params.get("connect_timeout") or "5"
        return psycopg.connect(params.conninfo(), autocommit=autocommit,
                               connect_timeout=int(timeout))
    except psycopg.OperationalError as e:
        raise ServiceUnavailable(
            f"cannot connect to PostgreSQL at {redact(database_url)}: {redact(first_line(e))}"
        ) from None


async def connect_async(database_url: str) -> psycopg.AsyncConnection[Any]:
    """The same, for asyncio code (the mirror), in autocommit mode."""
    params = parse_database_url(database_url)
    try:
        timeout = params.params.get("connect_timeout") or "5"
        return await psycopg.AsyncConnection.connect(
            params.conninfo(), autocommit=True, connect_timeout=int(timeout))
    except psycopg.OperationalError as e:
        raise ServiceUnavailable(
            f"cannot connect to PostgreSQL at {redact(database_url)}: {redact(first_line(e))}"
        ) from None


def first_line(error: BaseException) -> str:
    """An error's first line, or its type's name when it says nothing."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
