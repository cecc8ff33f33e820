"""A read model that copies a personal field (argument text) and clears it on erasure:
what a projection keeping personal data must do (docs/erasure.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from aura_es.catalog.model import ProjectionSpec
from aura_es.personal import ERASED_TEXT
from aura_es.projection.engine.runner import BatchRunner
from aura_es.projection.handlers.api import Projection, Tx
from aura_es.store.envelope import EventEnvelope
from aura_es.store.keyring import Keyring

ARGUED = "aura.debate.argument_added.v1"


class ArgumentTexts(Projection):
    version = "1"

    def create(self, tx: Tx) -> None:
        tx.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} (position bigint PRIMARY KEY, subject text"
            " NOT NULL, text text NOT NULL)").format(t=self.table))

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        for event in batch:
            if event.topic == ARGUED:
                tx.execute(sql.SQL("INSERT INTO {t} VALUES (%s, %s, %s)").format(t=self.table),
                           (event.position, event.subject, event.payload["text"]))

    def erase_subject(self, tx: Tx, subject: str) -> None:
        tx.execute(sql.SQL("UPDATE {t} SET text = %s WHERE subject = %s").format(t=self.table),
                   (ERASED_TEXT, subject))


def spec(storage: str = "argument_texts") -> ProjectionSpec:
    return ProjectionSpec(name=storage, source_events=[ARGUED], output_model="ArgumentText",
                          batch_size=50,
                          storage=storage, handler="tests.support.arguments:ArgumentTexts")


def catch_up(db_url: str, storage: str = "argument_texts", keyring: Keyring | None = None
             ) -> int:
    projection_spec = spec(storage)
    with psycopg.connect(db_url, autocommit=True) as conn:
        return BatchRunner(conn, projection_spec, ArgumentTexts(projection_spec),
                           keyring=keyring).run_until_caught_up()


def rows(db_url: str, storage: str = "argument_texts") -> dict[int, tuple[str, str]]:
    with psycopg.connect(db_url) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            sql.SQL("SELECT position, subject, text FROM {t}").format(t=sql.Identifier(storage)))}


def every_byte(db_url: str) -> bytes:
    """Every value of every row of every table, whole (TOAST-ed ones too), as bytes."""
    out: list[bytes] = []
    with psycopg.connect(db_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')").fetchall()
        for schema, table in tables:
            for row in conn.execute(sql.SQL("SELECT * FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table))):
                out.extend(_bytes(value) for value in row)
    return b"\n".join(out)


def _bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, memoryview)):
        return bytes(value)
    return str(value).encode()
