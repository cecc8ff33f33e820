"""`aura-es erase --verify SUBJECT`: search every table and the stream for a copy of an
erased subject's personal values (by the erasure's proof), and name each place.

Every column of every row of every table of the database (outside the system schemas)
is read whole (TOAST-ed values included), text as text and bytea as its bytes; every
message of the stream, headers and body. A value shorter than ``proof.MIN_BYTES`` bytes
is not searched (docs/erasure.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from nats.js.errors import NotFoundError
from psycopg import sql

from aura_es.erasure.proof import Proof
from aura_es.errors import DomainError
from aura_es.masterkey import KeyProvider
from aura_es.mirror.stream import StreamSettings
from aura_es.mirror.verify import each_message
from aura_es.personal import check_subject
from aura_es.store import keystore

Progress = Callable[[str], None]


class NotErased(DomainError):
    """Verify was asked about a subject that has not been erased."""


@dataclass
class Remnant:
    where: str
    rows: int

    def __str__(self) -> str:
        return f"{self.where}: {self.rows} {'copy' if self.rows == 1 else 'copies'}"


@dataclass
class Verification:
    subject: str
    erased_at: datetime
    #: How many value prefixes the proof looks for (0: the subject's values were all
    #: shorter than the searched minimum).
    fingerprints: int
    tables: int = 0
    rows: int = 0
    #: Messages read from the stream (None: no stream was searched).
    messages: int | None = None
    remnants: list[Remnant] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.remnants

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["erased_at"] = self.erased_at.isoformat()
        out["remnants"] = [asdict(r) for r in self.remnants]
        out["ok"] = self.ok
        return out


def verify(conn: psycopg.Connection[Any], provider: KeyProvider, subject: str, *,
           nats_url: str | None = None, stream: StreamSettings | None = None,
           progress: Progress | None = None) -> Verification:
    check_subject(subject)
    with conn.cursor() as cur:
        erased_at, stored = keystore.proof_of(cur, subject)
    if erased_at is None or stored is None:
        raise NotErased(f"subject {subject} has not been erased: run `aura-es erase"
                        f" {subject} --reason ...` first")
    proof = Proof.opened(stored, provider, subject)
    report = Verification(subject, erased_at, proof.values)
    for table, rows in _tables(conn):
        if progress:
            progress(f"table {table}")
        report.tables += 1
        found = 0
        for cells in rows:
            report.rows += 1
            if any(proof.found_in(cell) for cell in cells):
                found += 1
        if found:
            report.remnants.append(Remnant(f"table {table}", found))
    if nats_url is not None and stream is not None:
        if progress:
            progress(f"stream {stream.name}")
        try:
            report.messages, found = asyncio.run(_search_stream(proof, nats_url, stream))
        except NotFoundError:  # no stream (nothing mirrored): nothing there to find
            found = 0
        if found:
            report.remnants.append(Remnant(f"stream {stream.name}", found))
    return report


def _tables(conn: psycopg.Connection[Any]) -> Iterator[tuple[str, Iterator[list[bytes]]]]:
    columns: dict[tuple[str, str], list[tuple[str, bool]]] = {}
    for schema, table, column, is_bytea in conn.execute(
            "SELECT c.table_schema, c.table_name, c.column_name, c.data_type = 'bytea'"
            " FROM information_schema.columns c JOIN information_schema.tables t"
            " USING (table_schema, table_name) WHERE t.table_type = 'BASE TABLE'"
            " AND c.table_schema NOT IN ('pg_catalog', 'information_schema')"
            " AND c.table_schema NOT LIKE 'pg_toast%%'"
            " ORDER BY 1, 2, c.ordinal_position"):
        columns.setdefault((schema, table), []).append((column, is_bytea))
    for (schema, table), cols in columns.items():
        name = table if schema == "public" else f"{schema}.{table}"
        yield name, _rows(conn, schema, table, cols)


def _rows(conn: psycopg.Connection[Any], schema: str, table: str,
          cols: list[tuple[str, bool]]) -> Iterator[list[bytes]]:
    # Bytea as its bytes, every other type as its text form (detoasted on the way).
    selected = sql.SQL(", ").join(
        sql.Identifier(c) if is_bytea else sql.SQL("{}::text").format(sql.Identifier(c))
        for c, is_bytea in cols)
    query = sql.SQL("SELECT {c} FROM {s}.{t}").format(
        c=selected, s=sql.Identifier(schema), t=sql.Identifier(table))
    with conn.transaction(), conn.cursor(name="aura_erase_verify") as cur:  # any size
        cur.itersize = 500
        for row in cur.execute(query):
            yield [bytes(v) if isinstance(v, (bytes, memoryview)) else v.encode()
                   for v in row if v is not None]


async def _search_stream(proof: Proof, nats_url: str, stream: StreamSettings
                         ) -> tuple[int, int]:
    messages = found = 0
    async for headers, data in each_message(nats_url, stream):
        messages += 1
        blob = data + b"".join(f"{k}:{v}".encode() for k, v in headers.items())
        if proof.found_in(blob):
            found += 1
    return messages, found
