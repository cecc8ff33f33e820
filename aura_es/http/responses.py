"""Responses stored with their ``Idempotency-Key``: the only module with SQL on that table.

A key is claimed (``in_flight``) before its request runs, with a lease: a request that
dies in flight does not block its key for ever; a retry after the lease runs it again
(safe: the command inside is idempotent by the same key).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from aura_es.store import schema

TABLE = "aura_http_idempotency"
_T = sql.Identifier(TABLE)


def ddl() -> list[sql.Composed | sql.SQL]:
    return [sql.SQL(
        "CREATE TABLE IF NOT EXISTS {t} ("
        " key_hash text PRIMARY KEY,"
        " fingerprint text NOT NULL,"
        " state text NOT NULL,"
        " status integer,"
        " headers jsonb,"
        " body bytea,"
        " locked_until timestamptz NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " completed_at timestamptz)"
    ).format(t=_T)]


OWNER = schema.Owner("stored HTTP responses", ddl, (TABLE,))


class Claim(StrEnum):
    RUN = "run"  # this request runs; store its response when done
    REPLAY = "replay"  # the original response is stored: send it again
    IN_FLIGHT = "in_flight"  # the original is still running: 409
    MISMATCH = "mismatch"  # the key was used for another request: 422


@dataclass(frozen=True)
class Stored:
    status: int
    #: The response's headers, but those of the transport (length, date, server).
    headers: list[tuple[str, str]]
    body: bytes


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def claim(
    conn: psycopg.AsyncConnection[Any], key: str, fingerprint: str, lease_seconds: float,
) -> tuple[Claim, Stored | None]:
    digest = key_hash(key)
    cur = await conn.execute(
        sql.SQL("INSERT INTO {t} (key_hash, fingerprint, state, locked_until)"
                " VALUES (%s, %s, 'in_flight', now() + make_interval(secs => %s))"
                " ON CONFLICT (key_hash) DO NOTHING RETURNING key_hash").format(t=_T),
        (digest, fingerprint, lease_seconds),
    )
    if await cur.fetchone():
        return Claim.RUN, None
    cur = await conn.execute(
        sql.SQL("SELECT fingerprint, state, status, headers, body,"
                " locked_until < now() FROM {t} WHERE key_hash = %s").format(t=_T),
        (digest,),
    )
    row = await cur.fetchone()
    if row is None:  # released between the two statements: try once more
        return await claim(conn, key, fingerprint, lease_seconds)
    stored_fingerprint, state, status, headers, body, expired = row
    if stored_fingerprint != fingerprint:
        return Claim.MISMATCH, None
    if state == "done":
        return Claim.REPLAY, Stored(int(status), [(k, v) for k, v in headers or []],
                                    bytes(body))
    if expired:  # its request died in flight: this one takes the key over
        cur = await conn.execute(
            sql.SQL("UPDATE {t} SET locked_until = now() + make_interval(secs => %s)"
                    " WHERE key_hash = %s AND state = 'in_flight' AND locked_until < now()"
                    " RETURNING key_hash").format(t=_T),
            (lease_seconds, digest),
        )
        if await cur.fetchone():
            return Claim.RUN, None
    return Claim.IN_FLIGHT, None


async def complete(conn: psycopg.AsyncConnection[Any], key: str, response: Stored) -> None:
    await conn.execute(
        sql.SQL("UPDATE {t} SET state = 'done', status = %s, headers = %s, body = %s,"
                " completed_at = now() WHERE key_hash = %s").format(t=_T),
        (response.status, Jsonb(response.headers), response.body, key_hash(key)),
    )


async def release(conn: psycopg.AsyncConnection[Any], key: str) -> None:
    """The request failed on the server's side: a retry may run it again."""
    await conn.execute(sql.SQL("DELETE FROM {t} WHERE key_hash = %s AND state = 'in_flight'")
                       .format(t=_T), (key_hash(key),))
