"""The subjects' data keys: one row per subject, the key wrapped by the master key.

The only module that writes SQL against ``aura_subject_keys``. A key row is made on a
subject's first sealed event and never deleted: an erasure clears the wrapped key and
stamps ``erased_at``, and the row stays as the erasure ledger (a restored backup that
still holds the key is re-erased from the ledger: docs/erasure.md).

The race between an erasure and a reader is settled by a lock: a projection's batch
holds the erasures' gate shared until it commits (``ERASURES_WAIT``) and an erasure
takes it alone (``lock_for_erasure``), so no erasure commits while a batch that may have
opened its subject's fields is in flight, and a batch after it sees it (its keys are
checked against the latest erasure: ``keyring.Keyring.current``). Other readers of keys
in a transaction hold the rows FOR SHARE, and the erasure takes its row FOR UPDATE. An
append checks in its own statement that no subject of its events is erased
(``CHECK_FUNCTION`` raises ``AUR01``) without locking: a row lock per append cost a
third of its time (issue 25's benchmark). An append racing the erasure may commit just
after it, sealed with the key the erasure deleted: it is unreadable from the start, as
if written just before the erasure, and no reader can ever open it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from aura_es.store import owners

TABLE = "aura_subject_keys"
CHECK_FUNCTION = "aura_check_subjects"
#: SQLSTATE the check raises when one of the subjects is erased.
ERASED_SQLSTATE = "AUR01"
_T = sql.Identifier(TABLE)


def ddl() -> list[sql.Composed | sql.SQL]:
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " subject text PRIMARY KEY,"
            " master_key_id text,"
            " wrapped bytea,"
            " created_at timestamptz NOT NULL DEFAULT now(),"
            " erased_at timestamptz,"
            # The erasure's proof (keyed fingerprints, the key wrapped): what
            # `erase --verify` looks for. Never the plaintext.
            " proof bytea,"
            " CHECK ((wrapped IS NULL) = (erased_at IS NOT NULL)))"
        ).format(t=_T),
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {f}(subjects text[]) RETURNS integer"
            " LANGUAGE plpgsql STABLE AS $body$ DECLARE gone text; BEGIN"
            " SELECT subject INTO gone FROM {t}"
            "  WHERE subject = ANY(subjects) AND erased_at IS NOT NULL LIMIT 1;"
            " IF gone IS NOT NULL THEN"
            "  RAISE EXCEPTION 'subject erased' USING ERRCODE = {code}, DETAIL = gone;"
            " END IF;"
            " RETURN 1; END $body$"
        ).format(f=sql.Identifier(CHECK_FUNCTION), t=_T, code=sql.Literal(ERASED_SQLSTATE)),
    ]


OWNER = owners.Owner("the subjects' data keys", ddl, (TABLE,), (CHECK_FUNCTION,))


def _tuples(cur: psycopg.Cursor[Any]) -> psycopg.Cursor[Any]:
    """A cursor of ``cur``'s connection (its transaction) giving plain tuples, whatever
    row factory the caller's cursor has."""
    return cur.connection.cursor(row_factory=tuple_row)


@dataclass(frozen=True)
class KeyRow:
    subject: str
    master_key_id: str | None
    wrapped: bytes | None
    erased_at: datetime | None


def fetch(cur: psycopg.Cursor[Any], subjects: list[str]) -> dict[str, KeyRow]:
    """The key rows of ``subjects`` (missing ones left out)."""
    rows = _tuples(cur).execute(sql.SQL(
        "SELECT subject, master_key_id, wrapped, erased_at FROM {t}"
        " WHERE subject = ANY(%s)").format(t=_T), (subjects,), prepare=True).fetchall()
    return {r[0]: KeyRow(r[0], r[1], bytes(r[2]) if r[2] is not None else None, r[3])
            for r in rows}


#: The erasures' gate: a projection's batch that reads keys holds it shared until it
#: commits, an erasure holds it alone until it commits (``lock_for_erasure``).
_ERASURE_GATE = sql.Literal(0x61757261_657261)  # "auraera"
#: What a batch's statements run first: it waits while an erasure is in flight, and no
#: erasure commits after it until the batch's transaction ends. One lock a batch,
#: whatever its subjects (a row lock FOR SHARE on each subject's key cost ~1 µs an
#: event and WAL-logged a lock record for every row, every batch: issue 25).
ERASURES_WAIT = sql.SQL("pg_advisory_xact_lock_shared({})").format(_ERASURE_GATE)

_WRAPPED = {share: sql.SQL(
    "SELECT subject, master_key_id, wrapped FROM {t} WHERE subject = ANY(%s){lock}"
).format(t=_T, lock=sql.SQL(" FOR SHARE" if share else "")) for share in (False, True)}


def wrapped_keys(cur: psycopg.Cursor[Any], subjects: list[str], *, share: bool
                 ) -> list[tuple[str, str | None, bytes | None]]:
    """``(subject, master key id, wrapped key)`` of the rows of ``subjects`` (the key None
    once erased; unknown subjects left out). ``share`` holds them FOR SHARE until the
    transaction ends, so no erasure of theirs commits in between (a batch holding the
    gate, ``ERASURES_WAIT``, needs no row locks)."""
    # Share locks never wait for one another, and an erasure locks one row: no order is
    # needed to rule out a deadlock.
    return _tuples(cur).execute(_WRAPPED[share], (subjects,), prepare=True).fetchall()


def create(cur: psycopg.Cursor[Any], subject: str, master_key_id: str, wrapped: bytes
           ) -> KeyRow:
    """The subject's row: the one given, or the one a concurrent writer made first."""
    cur.execute(sql.SQL(
        "INSERT INTO {t} (subject, master_key_id, wrapped) VALUES (%s, %s, %s)"
        " ON CONFLICT (subject) DO NOTHING").format(t=_T), (subject, master_key_id, wrapped))
    return fetch(cur, [subject])[subject]


def lock_for_erasure(cur: psycopg.Cursor[Any], subject: str) -> KeyRow | None:
    """The subject's row, locked FOR UPDATE, once every batch reading keys has committed
    (the gate, held until this transaction ends: batches after it see the erasure). The
    gate comes first, before this transaction has an id: erasures commit one after the
    other in the order of their ids, so the latest erasure event is the one committed
    last (what a batch checks its keys against)."""
    cur.execute(sql.SQL("SELECT pg_advisory_xact_lock({})").format(_ERASURE_GATE))
    rows = _tuples(cur).execute(sql.SQL(
        "SELECT subject, master_key_id, wrapped, erased_at FROM {t} WHERE subject = %s"
        " FOR UPDATE").format(t=_T), (subject,)).fetchall()
    if not rows:
        return None
    r = rows[0]
    return KeyRow(r[0], r[1], bytes(r[2]) if r[2] is not None else None, r[3])


def mark_erased(cur: psycopg.Cursor[Any], subject: str, proof: bytes) -> datetime:
    row = _tuples(cur).execute(sql.SQL(
        "UPDATE {t} SET wrapped = NULL, master_key_id = NULL, erased_at = now(), proof = %s"
        " WHERE subject = %s RETURNING erased_at").format(t=_T), (proof, subject)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def proof_of(cur: psycopg.Cursor[Any], subject: str) -> tuple[datetime | None, bytes | None]:
    """(erased_at, proof) of a subject; (None, None) when it is not erased or unknown."""
    row = _tuples(cur).execute(sql.SQL("SELECT erased_at, proof FROM {t} WHERE subject = %s")
                      .format(t=_T), (subject,)).fetchone()
    if row is None:
        return None, None
    return row[0], bytes(row[1]) if row[1] is not None else None


def wrapped_by_other(cur: psycopg.Cursor[Any], master_key_id: str) -> list[KeyRow]:
    """Live keys wrapped by a master key other than ``master_key_id`` (to rotate)."""
    rows = _tuples(cur).execute(sql.SQL(
        "SELECT subject, master_key_id, wrapped, erased_at FROM {t}"
        " WHERE erased_at IS NULL AND master_key_id <> %s ORDER BY subject FOR UPDATE"
    ).format(t=_T), (master_key_id,)).fetchall()
    return [KeyRow(r[0], r[1], bytes(r[2]), r[3]) for r in rows]


def rewrap(cur: psycopg.Cursor[Any], subject: str, master_key_id: str, wrapped: bytes) -> None:
    cur.execute(sql.SQL("UPDATE {t} SET master_key_id = %s, wrapped = %s WHERE subject = %s")
                .format(t=_T), (master_key_id, wrapped, subject))


def proofs(cur: psycopg.Cursor[Any]) -> list[tuple[str, bytes]]:
    """Every erasure's proof (subject, proof), locked for re-wrapping."""
    return [(r[0], bytes(r[1])) for r in _tuples(cur).execute(sql.SQL(
        "SELECT subject, proof FROM {t} WHERE proof IS NOT NULL ORDER BY subject FOR UPDATE"
    ).format(t=_T))]


def set_proof(cur: psycopg.Cursor[Any], subject: str, proof: bytes) -> None:
    cur.execute(sql.SQL("UPDATE {t} SET proof = %s WHERE subject = %s").format(t=_T),
                (proof, subject))
