"""`aura-es keys rotate`: everything the master key wraps, re-wrapped under the current
one (``AURA_ES_MASTER_KEY``), so the earlier keys in ``AURA_ES_PREVIOUS_MASTER_KEYS`` can
be dropped. Data keys and erasure proofs only: no event is touched."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from aura_es.db import first_line
from aura_es.erasure.proof import rewrapped
from aura_es.errors import ServiceUnavailable
from aura_es.masterkey import KeyProvider
from aura_es.store import keyring, keystore


@dataclass(frozen=True)
class Rotation:
    master_key_id: str
    data_keys: int
    proofs: int


def rotate(conn: psycopg.Connection[psycopg.rows.TupleRow], provider: KeyProvider) -> Rotation:
    try:
        return _rotate(conn, provider)
    except psycopg.Error as e:  # a read-only server, a lost connection: nothing committed
        raise ServiceUnavailable(f"the store did not take the rotation: {first_line(e)}"
                                 ) from None


def _rotate(conn: psycopg.Connection[psycopg.rows.TupleRow], provider: KeyProvider
            ) -> Rotation:
    data_keys = keyring.rotate(conn, provider)
    moved = 0
    with conn.transaction(), conn.cursor() as cur:
        for subject, stored in keystore.proofs(cur):
            again = rewrapped(stored, provider, subject)
            if again is not None:
                keystore.set_proof(cur, subject, again)
                moved += 1
    return Rotation(provider.key_id, data_keys, moved)
