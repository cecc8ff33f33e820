"""Database and NATS URLs: parsing, validation, and display without secrets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict

from aura_es.errors import ConfigurationError


@dataclass(frozen=True)
class PostgresParams:
    dbname: str
    host: str
    port: str
    user: str
    password: str

    def conninfo(self) -> str:
        parts = {
            "dbname": self.dbname,
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
        }
        return " ".join(f"{k}='{_escape(v)}'" for k, v in parts.items() if v)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]+@", r"\1***@", url)


def parse_database_url(url: str) -> PostgresParams:
    if not url or not url.strip():
        raise ConfigurationError("database URL is empty (set AURA_ES_DATABASE_URL)")
    scheme = urlsplit(url).scheme
    if scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"database URL {redact(url)!r} must start with postgresql://"
            f" (got {scheme or 'no'} scheme)"
        )
    try:
        parts = conninfo_to_dict(url)
    except Exception as e:
        raise ConfigurationError(f"database URL {redact(url)!r} is malformed: {e}") from None
    port = str(parts.get("port") or "5432")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"database URL {redact(url)!r} has an invalid port {port!r}")
    return PostgresParams(
        dbname=str(parts.get("dbname") or "postgres"),
        host=str(parts.get("host") or "localhost"),
        port=port,
        user=str(parts.get("user") or "postgres"),
        password=str(parts.get("password") or ""),
    )


def check_nats_url(url: str) -> str:
    for one in url.split(","):
        parsed = urlsplit(one.strip())
        if parsed.scheme not in ("nats", "tls", "ws", "wss") or not parsed.hostname:
            raise ConfigurationError(
                f"NATS URL {redact(one)!r} must look like nats://host:port"
            )
        try:
            parsed.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigurationError(f"NATS URL {redact(one)!r} has an invalid port") from None
    return url
