"""`aura-es erase SUBJECT --reason R`: forget a person, in one transaction.

Opens the subject's events one last time to make the proof, then takes the erasures'
gate and the subject's key row (``keystore.lock_for_erasure``: projection batches in
flight finish first, later ones see the erasure), adds to the proof any event committed
meanwhile, appends ``aura.subject.erased.v1``, deletes the key (the row stays as the
ledger) and scrubs the dead letters and side effects of their events. Run again, it
changes nothing and says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from aura_es import payload
from aura_es.application import EventSourcedApp
from aura_es.db import first_line
from aura_es.dsn import redact
from aura_es.erasure.proof import Proof
from aura_es.errors import DomainError, EventUndecodable, ServiceUnavailable
from aura_es.masterkey import KeyProvider
from aura_es.personal import check_subject
from aura_es.projection import dlq
from aura_es.projection.state import outbox
from aura_es.store import eventlog, keystore, sealing
from aura_es.store.subjects import ErasedSubject

MAX_REASON = 500


class UnknownSubject(DomainError):
    """No personal data was ever stored for this subject."""


@dataclass(frozen=True)
class Erasure:
    subject: str
    erased_at: datetime | None
    #: Events that held the subject's personal fields.
    events: int
    #: True when the subject had been erased before (nothing was changed now).
    already: bool
    #: The erasure event's position (None when ``already``).
    position: int | None = None
    dead_letters_scrubbed: int = 0
    side_effects_scrubbed: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["erased_at"] = self.erased_at.isoformat() if self.erased_at else None
        return out


def check_reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise DomainError("reason is empty: say why the subject is erased (e.g. the"
                          " request's reference); it is recorded with the erasure")
    if len(reason) > MAX_REASON:
        raise DomainError(f"reason is {len(reason)} characters long; the limit is"
                          f" {MAX_REASON}")
    payload.check_text("reason", reason)
    return reason


def erase(app: EventSourcedApp, subject: str, reason: str) -> Erasure:
    check_subject(subject)
    check_reason(reason)
    provider = app.keyring.provider  # no master key: one line before anything is read
    try:
        return _erase(app, provider, subject, reason)
    except psycopg.Error as e:  # a read-only server, a lost connection: nothing committed
        raise ServiceUnavailable(
            f"the store did not take the erasure of {subject}: {redact(first_line(e))}"
        ) from None


def _erase(app: EventSourcedApp, provider: KeyProvider, subject: str, reason: str) -> Erasure:
    with app.connect(autocommit=False) as conn, conn.transaction(), conn.cursor() as cur:
        # Reading and opening the subject's events for the proof is most of an erasure's
        # time, and the gate (``lock_for_erasure``) holds every personal projection's
        # batches while it is taken: the proof is made before it, and only the events
        # committed since are read under it. Nothing here gives the transaction an id
        # before the gate (reads only), which the gate's ordering needs.
        found = keystore.fetch(cur, [subject]).get(subject)
        if found is None:
            raise UnknownSubject(f"subject {subject} is unknown: no personal data was"
                                 " ever stored for them")
        proved: set[int] = set()
        values: list[str] = []
        key = None
        if found.erased_at is None:
            assert found.wrapped is not None and found.master_key_id is not None
            key = provider.unwrap(subject, found.master_key_id, found.wrapped)
            events = eventlog.of_subject(cur, subject)
            values = _personal_values(events, key)
            proved = {e.position for e in events}
        row = keystore.lock_for_erasure(cur, subject)
        assert row is not None  # a key row is never deleted
        mine = eventlog.positions_of_subject(cur, subject)
        if row.erased_at is not None or key is None:
            return Erasure(subject, row.erased_at, len(mine), already=True)
        # Appends take no lock: one may have committed since the proof was read.
        later = [position for position in mine if position not in proved]
        if later:
            values += _personal_values(eventlog.read_positions(cur, later), key)
        proof = Proof.of(values)
        ledger = ErasedSubject.record(subject, reason, len(mine))
        stored = [app.mapper.to_stored_event(e) for e in ledger.collect_events()]
        positions = app.recorder.append_in(cur, stored)  # type: ignore[attr-defined]
        erased_at = keystore.mark_erased(cur, subject, proof.seal(provider, subject))
        letters = dlq.scrub(cur, mine)
        effects = outbox.scrub(cur, mine)
    app.recorder.wake()  # type: ignore[attr-defined]
    app.keyring.forget([subject])
    return Erasure(subject, erased_at, len(mine), already=False, position=positions[0],
                   dead_letters_scrubbed=letters, side_effects_scrubbed=effects)


def _personal_values(events: list[Any], key: bytes) -> list[str]:
    """Every string inside the subject's sealed fields (a tampered seal gives none)."""
    values: list[str] = []
    for event in events:
        if event.seal is None:
            continue
        try:
            fields = sealing.open_seal(event.seal, key, event.topic, event.aggregate_id,
                                       event.version)
        except EventUndecodable:
            continue
        values.extend(_strings(fields))
    return values


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
