"""Plain connections to the store's database, with one clear error when it does not answer."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from aura_es.dsn import parse_database_url, redact
from aura_es.errors import ServiceUnavailable


def conninfo(database_url: str, host: str | None = None,
             port: str | None = None) -> tuple[str, int]:
    """The URL as libpq conninfo, and its connect timeout. Of the hosts it names, only
    one that takes writes is used (``target_session_attrs=read-write``, unless the URL
    says otherwise): after a failover, the new primary; never a standby. ``host`` and
    ``port``: that one host of the URL, whatever it is (a standby, to look at it)."""
    params = parse_database_url(database_url)
    kwargs = params.connect_kwargs()
    if host is not None:
        kwargs.update(host=host, port=port or "5432", target_session_attrs="any")
    kwargs.setdefault("target_session_attrs", "read-write")
    return make_conninfo(**kwargs), int(params.params.get("connect_timeout") or "5")


def hosts_of(database_url: str) -> list[tuple[str, str]]:
    """The (host, port) pairs of a URL that names several hosts; [] for one."""
    params = parse_database_url(database_url)
    hosts, ports = params.host.split(","), params.port.split(",")
    if len(hosts) < 2:
        return []
    return list(zip(hosts, ports if len(ports) == len(hosts) else ports[:1] * len(hosts),
                    strict=True))


def connect(database_url: str, *, autocommit: bool = True, host: str | None = None,
            port: str | None = None) -> psycopg.Connection[Any]:
    """A new connection (callers close it); ``ServiceUnavailable`` naming the server,
    never its password, when it cannot be made."""
    info, timeout = conninfo(database_url, host, port)
    try:
        return psycopg.connect(info, autocommit=autocommit, connect_timeout=timeout)
    except psycopg.OperationalError as e:
        raise ServiceUnavailable(
            f"cannot connect to PostgreSQL at {redact(database_url)}: {redact(first_line(e))}"
        ) from None


async def connect_async(database_url: str) -> psycopg.AsyncConnection[Any]:
    """The same, for asyncio code (the mirror), in autocommit mode."""
    info, timeout = conninfo(database_url)
    try:
        return await psycopg.AsyncConnection.connect(info, autocommit=True,
                                                     connect_timeout=timeout)
    except psycopg.OperationalError as e:
        raise ServiceUnavailable(
            f"cannot connect to PostgreSQL at {redact(database_url)}: {redact(first_line(e))}"
        ) from None


def first_line(error: BaseException) -> str:
    """An error's first line, or its type's name when it says nothing."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
