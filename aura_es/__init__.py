"""aura-es: event sourcing on PostgreSQL that never loses or doubles an event.

The public surface is what this module exports; everything else is internal.
``AuraApp`` (the AURA demo application) is loaded on first use only, so that importing
aura-es registers none of the demo's event topics.
"""

from typing import TYPE_CHECKING, Any

from aura_es.aggregate import AuraAggregate
from aura_es.application import EventSourcedApp
from aura_es.commands import CommandResult, Create, Update
from aura_es.errors import (
    AggregateNotFound,
    AuraError,
    ConcurrencyConflict,
    ConfigurationError,
    DomainError,
    EventUndecodable,
    EventVersionUnknown,
    IdempotencyKeyConflict,
    InvalidIdempotencyKey,
    InvalidPayload,
    PayloadTooLarge,
    SchemaMissing,
    ServiceUnavailable,
)
from aura_es.events import AuraCreated, AuraEvent, CommandContext
from aura_es.personal import InvalidSubject, Personal
from aura_es.settings import Settings
from aura_es.store.keyring import SubjectErased

__all__ = [
    "AggregateNotFound",
    "AuraAggregate",
    "AuraApp",
    "AuraCreated",
    "AuraError",
    "AuraEvent",
    "CommandContext",
    "CommandResult",
    "ConcurrencyConflict",
    "ConfigurationError",
    "Create",
    "DomainError",
    "EventSourcedApp",
    "EventUndecodable",
    "EventVersionUnknown",
    "IdempotencyKeyConflict",
    "InvalidIdempotencyKey",
    "InvalidPayload",
    "InvalidSubject",
    "PayloadTooLarge",
    "Personal",
    "SchemaMissing",
    "ServiceUnavailable",
    "Settings",
    "SubjectErased",
    "Update",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from aura_es.app import AuraApp


def __getattr__(name: str) -> Any:
    if name == "AuraApp":
        from aura_es.app import AuraApp

        return AuraApp
    raise AttributeError(f"module 'aura_es' has no attribute {name!r}")
