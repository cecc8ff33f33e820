"""Idempotency keys: their hashes, the record written with the events, and pruning."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple
from uuid import UUID, SafeUUID

import psycopg
from psycopg import pq, sql
from psycopg.adapt import Transformer

from aura_es import payload
from aura_es.errors import InvalidIdempotencyKey
from aura_es.store import owners
from aura_es.store.arrays import BigInts, Texts, Uuids
from aura_es.store.names import EVENTS_TABLE

TABLE = "aura_idempotency"
MAX_KEY_LENGTH = 255
# Fixed namespace: ids derived from keys must be the same on every host, forever.
_ID_NAMESPACE = UUID("6f3a0c52-5d0e-4d43-9a57-0b9a1f6c2e11")
_ID_NAMESPACE_BYTES = _ID_NAMESPACE.bytes
# RFC 9562 version 5: the version nibble 5, the variant bits 10.
_KEEP_V5 = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_5 = (0x5000 << 64) | (0x8000 << 48)
_SET_INT = UUID.__dict__["int"].__set__
_SET_IS_SAFE = UUID.__dict__["is_safe"].__set__


def is_blank(key: str) -> bool:
    """Empty or whitespace only: no key at all, whether it came by API or HTTP header."""
    return not key.strip()


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidIdempotencyKey("idempotency_key must be a non-empty string")
    if is_blank(key):
        raise InvalidIdempotencyKey("idempotency_key is only whitespace: give a real key")
    problem = payload.text_problem(key)
    if problem:
        raise InvalidIdempotencyKey(f"idempotency_key {problem}")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(
            f"idempotency_key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}"
        )
    return key


def key_hash(command_type: str, aggregate_id: UUID | None, key: str) -> str:
    """sha256 of ``type:aggregate_id:idempotency_key``, as hex (the hardening plan's formula)."""
    return hashlib.sha256(f"{command_type}:{aggregate_id}:{key}".encode()).hexdigest()


def derived_aggregate_id(command_type: str, tenant_id: str, key: str) -> UUID:
    """The id a creating command gives its new aggregate, so a retried create finds it:
    ``uuid.uuid5`` of the name in our namespace, built without ``UUID.__init__`` (its
    checks, in Python, cost a keyed create ~9 µs of client CPU after each round trip;
    issue 27). A hypothesis test holds it to ``uuid5`` for every name."""
    digest = hashlib.sha1(_ID_NAMESPACE_BYTES + f"{command_type}:{tenant_id}:{key}".encode())
    number = int.from_bytes(digest.digest()[:16], "big") & _KEEP_V5 | _VERSION_5
    derived = object.__new__(UUID)
    # UUID's slots set by their descriptors: what ``object.__setattr__`` does after
    # looking them up by name (0.82 -> 0.29 µs the pair, warm; issue 27).
    _SET_INT(derived, number)
    _SET_IS_SAFE(derived, SafeUUID.unknown)
    return derived


def request_hash(command_type: str, request: dict[str, Any]) -> str:
    """A fingerprint of the command's arguments: same key + other arguments = conflict."""
    encoded = payload.encode(
        {"type": command_type, "request": request}, f"command {command_type!r}"
    )
    return hashlib.sha256(encoded).hexdigest()


class IdempotencyRecord(NamedTuple):
    """What is stored for one keyed command, in the transaction of its events: its fields
    in the key table's column order (a tuple: made for every command, where a frozen
    dataclass cost ~1 µs of client CPU more; issue 27)."""

    key_hash: str
    command_type: str
    idempotency_key: str
    aggregate_id: UUID
    request_hash: str
    from_version: int
    to_version: int


def ddl() -> list[sql.Composed | sql.SQL]:
    return list(_DDL)


_DDL = [
    sql.SQL(
        "CREATE TABLE IF NOT EXISTS {t} ("
        " key_hash text PRIMARY KEY,"
        " command_type text NOT NULL,"
        " idempotency_key text NOT NULL,"
        " aggregate_id uuid NOT NULL,"
        " request_hash text NOT NULL,"
        " from_version bigint NOT NULL,"
        " to_version bigint NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now())"
    ).format(t=sql.Identifier(TABLE)),
    sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (created_at)").format(
        i=sql.Identifier(f"{TABLE}_created_at_idx"), t=sql.Identifier(TABLE)
    ),
]

OWNER = owners.Owner("idempotency keys", ddl, (TABLE,))

INSERT = sql.SQL(
    "INSERT INTO {t} (key_hash, command_type, idempotency_key, aggregate_id, request_hash,"
    " from_version, to_version)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::uuid[], %s::text[],"
    " %s::bigint[], %s::bigint[])"
).format(t=sql.Identifier(TABLE))

#: One key row, as plain parameters (the common case: one command per append): an
#: ``IdempotencyRecord``'s fields, in order.
INSERT_ONE = sql.SQL(
    "INSERT INTO {t} (key_hash, command_type, idempotency_key, aggregate_id, request_hash,"
    " from_version, to_version)"
    " VALUES (%s::text, %s::text, %s::text, %s::uuid, %s::text, %s::bigint, %s::bigint)"
).format(t=sql.Identifier(TABLE))


@dataclass(frozen=True)
class KeyRows:
    """The key rows of one save, as they travel through the library's ``save(**kwargs)``
    to the recorder: one typed value under one name, checked on arrival."""

    records: tuple[IdempotencyRecord, ...]

    def as_save_kwargs(self) -> dict[str, KeyRows]:
        return {SAVE_KWARG: self}

    @staticmethod
    def from_save_kwargs(kwargs: dict[str, Any]) -> KeyRows | None:
        value = kwargs.get(SAVE_KWARG)
        if value is not None and not isinstance(value, KeyRows):
            raise TypeError(f"{SAVE_KWARG} must be KeyRows, got {type(value).__name__}")
        return value


SAVE_KWARG = "aura_key_rows"


def insert_params(records: tuple[IdempotencyRecord, ...]) -> tuple[list[Any], ...]:
    """The key rows as the insert's seven arrays, one per column: the records turned
    into columns by ``zip`` (a generator per column cost a batch 0.4 µs a command;
    issue 27)."""
    if not records:
        return (Texts(), Texts(), Texts(), Uuids(), Texts(), BigInts(), BigInts())
    key_hashes, types, keys, ids, request_hashes, froms, tos = zip(*records, strict=True)
    return (Texts(key_hashes), Texts(types), Texts(keys), Uuids(ids), Texts(request_hashes),
            BigInts(froms), BigInts(tos))


def prune(conn: psycopg.Connection[Any], older_than: timedelta) -> int:
    """Deletes keys older than ``older_than``; returns how many. Retries after this re-run."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("DELETE FROM {t} WHERE created_at < now() - %s").format(
                t=sql.Identifier(TABLE)
            ),
            (older_than,),
        )
        return cur.rowcount


# Each key looked up by itself (LATERAL ... LIMIT 1, which the planner cannot fold into a
# join): an index lookup whatever the table's statistics say. As ``key_hash = ANY($1)``,
# prepared, the generic plan made on a new store's empty, never analyzed table was a
# sequential scan, kept as the table grew: a bulk load slowed from 17,000 to 2,600
# commands a second over its first 30,000 (issue 27); unprepared, the planner chose a
# scan for a batch's hundred keys until the table passed tens of thousands of rows.
LOOKUP = sql.SQL(
    "SELECT i.key_hash, i.command_type, i.idempotency_key, i.aggregate_id, i.request_hash,"
    " i.from_version, i.to_version,"
    " ARRAY(SELECT e.notification_id FROM {e} e WHERE e.originator_id = i.aggregate_id"
    "   AND e.originator_version BETWEEN i.from_version AND i.to_version"
    "   ORDER BY e.originator_version) AS positions"
    " FROM unnest(%s::text[]) AS wanted(key_hash)"
    " CROSS JOIN LATERAL (SELECT * FROM {k} k WHERE k.key_hash = wanted.key_hash LIMIT 1) i"
).format(e=sql.Identifier(EVENTS_TABLE), k=sql.Identifier(TABLE))


def stored_in(conn: psycopg.Connection[Any], result: pq.abc.PGresult) -> dict[str, Any]:
    """The stored keys that ``LOOKUP`` found, from its result (binary), by key hash: each
    a dict of the key row's columns and ``positions``, the positions its command stored.
    ``LOOKUP`` is run by the recorder (a retry's ``stored_keys``) and asked first by a
    batch saved at once (``at_once.py``)."""
    names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
    loader = Transformer(conn)
    loader.set_pgresult(result)
    rows = loader.load_rows(0, result.ntuples, lambda values: dict(zip(names, values, strict=True)))
    return {row["key_hash"]: row for row in rows}
