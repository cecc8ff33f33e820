"""Responses stored with their ``Idempotency-Key``: the only module with SQL on that table.

A key is claimed (``in_flight``) before its request runs, with a lease: a request that
dies in flight does not block its key for ever; a retry after the lease runs it again
(safe: the command inside is idempotent by the same key). Each claim holds a token of its
own; the running request renews its lease with it, and only the holder of the current
token may store a response or release the key, so a request that outlived its lease (its
process stalled) cannot overwrite the response of the retry that took the key over.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from aura_es.store import owners

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
    ).format(t=_T),
        # Added after the table first shipped: the claim's fencing token.
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS lease text").format(t=_T)]


OWNER = owners.Owner("stored HTTP responses", ddl, (TABLE,), columns=(f"{TABLE}.lease",))


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


@dataclass(frozen=True)
class Lease:
    """What a running request holds: its key and the token of its claim."""

    key: str
    token: str


@dataclass(frozen=True)
class Claimed:
    outcome: Claim
    stored: Stored | None = None
    #: Set when ``outcome`` is ``RUN``.
    lease: Lease | None = None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def claim(
    conn: psycopg.AsyncConnection[Any], key: str, fingerprint: str, lease_seconds: float,
) -> Claimed:
    digest, token = key_hash(key), secrets.token_hex(16)
    cur = await conn.execute(
        sql.SQL("INSERT INTO {t} (key_hash, fingerprint, state, locked_until, lease)"
                " VALUES (%s, %s, 'in_flight', now() + make_interval(secs => %s), %s)"
                " ON CONFLICT (key_hash) DO NOTHING RETURNING key_hash").format(t=_T),
        (digest, fingerprint, lease_seconds, token),
    )
    if await cur.fetchone():
        return Claimed(Claim.RUN, lease=Lease(key, token))
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
        return Claimed(Claim.MISMATCH)
    if state == "done":
        return Claimed(Claim.REPLAY, Stored(int(status), [(k, v) for k, v in headers or []],
                                            bytes(body)))
    if expired:  # its request died or stalled in flight: this one takes the key over
        cur = await conn.execute(
            sql.SQL("UPDATE {t} SET locked_until = now() + make_interval(secs => %s),"
                    " lease = %s"
                    " WHERE key_hash = %s AND state = 'in_flight' AND locked_until < now()"
                    " RETURNING key_hash").format(t=_T),
            (lease_seconds, token, digest),
        )
        if await cur.fetchone():
            return Claimed(Claim.RUN, lease=Lease(key, token))
    return Claimed(Claim.IN_FLIGHT)


_HELD = sql.SQL("key_hash = %s AND state = 'in_flight' AND lease IS NOT DISTINCT FROM %s")


async def renew(conn: psycopg.AsyncConnection[Any], lease: Lease, lease_seconds: float) -> bool:
    """Extends a running request's lease; False when another request holds the key now."""
    cur = await conn.execute(
        sql.SQL("UPDATE {t} SET locked_until = now() + make_interval(secs => %s)"
                " WHERE {held} RETURNING key_hash").format(t=_T, held=_HELD),
        (lease_seconds, key_hash(lease.key), lease.token),
    )
    return await cur.fetchone() is not None


async def complete(conn: psycopg.AsyncConnection[Any], lease: Lease, response: Stored) -> bool:
    """Stores the response; False (nothing stored) when the lease was lost to a retry."""
    cur = await conn.execute(
        sql.SQL("UPDATE {t} SET state = 'done', status = %s, headers = %s, body = %s,"
                " completed_at = now() WHERE {held} RETURNING key_hash").format(
                    t=_T, held=_HELD),
        (response.status, Jsonb(response.headers), response.body, key_hash(lease.key),
         lease.token),
    )
    return await cur.fetchone() is not None


async def release(conn: psycopg.AsyncConnection[Any], lease: Lease) -> None:
    """The request failed on the server's side: a retry may run it again."""
    await conn.execute(sql.SQL("DELETE FROM {t} WHERE {held}").format(t=_T, held=_HELD),
                       (key_hash(lease.key), lease.token))
