"""The erasure as an event: one ``ErasedSubject`` aggregate per subject, whose creation
is the erasure (``aura.subject.erased.v1``), so it is mirrored and read like any event."""

from __future__ import annotations

from uuid import UUID, uuid5

from aura_es.aggregate import AuraAggregate
from aura_es.events import AuraCreated
from aura_es.personal import ERASURE_TOPIC

# Fixed: a subject's ledger aggregate has the same id on every host, forever.
_NAMESPACE = UUID("0c5a7c1e-6f0f-4e5e-9d53-3a8f2f1b7d40")


class SubjectWasErased(AuraCreated):
    """Every personal field of ``subject`` now reads as erased. ``events`` is how many
    events held them; ``reason`` is the operator's (never personal data)."""

    TOPIC = ERASURE_TOPIC
    subject: str
    reason: str
    events: int


class ErasedSubject(AuraAggregate):
    TYPE = "aura.subject"

    def __init__(self) -> None:
        self.subject = ""

    @classmethod
    def record(cls, subject: str, reason: str, events: int) -> ErasedSubject:
        return cls._create(SubjectWasErased, id=ledger_id(subject), subject=subject,
                           reason=reason, events=events)


def ledger_id(subject: str) -> UUID:
    return uuid5(_NAMESPACE, subject)
