"""Opening the sealed personal fields of a batch of events, in the batch's transaction.

The subjects' key rows are read FOR SHARE in the transaction that will write the read
model (``keyring.Keyring.held``): an erasure waits for the batch to commit, and a batch
after the erasure opens nothing. A seal that does not open makes its event undecodable:
it is dead-lettered, never applied, and the message names no value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import psycopg

from aura_es.errors import EventUndecodable
from aura_es.store import sealing
from aura_es.store.envelope import EventEnvelope
from aura_es.store.keyring import Keyring


def open_events(cur: psycopg.Cursor[Any], keyring: Keyring,
                events: Sequence[EventEnvelope]) -> list[EventEnvelope]:
    """``events`` with their personal fields opened, or erased placeholders."""
    sealed = [e for e in events
              if e.seal is not None and e.undecodable is None and not e.opened
              and not e.pending]
    if not sealed:
        return list(events)
    subjects = {e.seal.get("subject") for e in sealed}  # type: ignore[union-attr]
    keys = keyring.held(cur, [s for s in subjects if isinstance(s, str)])
    opened = {id(e): _opened(e, keys) for e in sealed}
    return [opened.get(id(e), e) for e in events]


def _opened(event: EventEnvelope, keys: dict[str, bytes | None]) -> EventEnvelope:
    seal = event.seal
    assert seal is not None
    try:
        fields = sealing.read_as(seal, keys.get(seal.get("subject")),  # type: ignore[arg-type]
                                 event.topic, event.aggregate_id, event.version,
                                 event.payload)
    except EventUndecodable as e:
        return dataclasses.replace(event, undecodable=str(e))
    return event.opened_with(fields)
