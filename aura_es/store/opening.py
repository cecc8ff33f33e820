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
    subjects = {e.subject for e in events
                if e.seal is not None and e.undecodable is None and not e.opened}
    subjects.discard(None)
    if not subjects:
        return list(events)
    keys = keyring.held(cur, [s for s in subjects if s is not None])
    return [_opened(e, keys) for e in events]


def _opened(event: EventEnvelope, keys: dict[str, bytes | None]) -> EventEnvelope:
    if event.seal is None or event.undecodable is not None or event.opened:
        return event
    subject = event.seal.get("subject")
    key = keys.get(subject) if isinstance(subject, str) else None
    try:
        if key is None:
            fields = sealing.erased(event.seal, event.payload)
        else:
            fields = sealing.open_seal(event.seal, key, event.topic, event.aggregate_id,
                                       event.version)
    except EventUndecodable as e:
        return dataclasses.replace(event, undecodable=str(e))
    return event.opened_with(fields)
