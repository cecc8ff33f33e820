"""The exceptions aura-es raises. Every one of them is an ``AuraError``."""

from __future__ import annotations

from uuid import UUID


class AuraError(Exception):
    """Base class of every error aura-es raises on purpose."""


class ConfigurationError(AuraError):
    """Settings, a URL or a catalog are not usable. The CLI exits 2 on it."""


class ServiceUnavailable(AuraError):
    """PostgreSQL or NATS does not answer at the configured address."""


class SchemaMissing(AuraError):
    """The database has no aura-es tables yet, or tables of an older release."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(
            f"schema missing or older than this release (lacks {', '.join(missing)});"
            " run `aura-es db init` first"
        )
        self.missing = missing


class DomainError(AuraError):
    """A command is not valid for the aggregate's current state; nothing was stored."""


class InvalidPayload(DomainError):
    """An event or command argument holds a value that cannot be stored exactly (a NUL,
    a lone surrogate, NaN or infinity, an integer beyond 64 bits, an oversized event)."""


class PayloadTooLarge(InvalidPayload):
    """An event is larger than the largest event aura-es stores (``max_event_bytes``)."""


class EventUndecodable(AuraError):
    """A stored event cannot be decoded (its bytes are not an event of its topic)."""


class EventVersionUnknown(AuraError):
    """A stored event was written by a newer version of its class than this code knows:
    deploy the newer code. Systemic, never poison: every such event fails alike."""

    def __init__(self, topic: str, version: int, known: int) -> None:
        super().__init__(f"event {topic} is schema version {version}, but this code knows"
                         f" versions up to {known}: deploy the code that writes it")
        self.topic, self.version, self.known = topic, version, known


class InvalidIdempotencyKey(DomainError):
    """The idempotency key is empty, only whitespace or longer than 255 characters."""


class AggregateNotFound(AuraError):
    def __init__(self, aggregate_id: UUID) -> None:
        super().__init__(f"aggregate {aggregate_id} not found")
        self.aggregate_id = aggregate_id


class IdempotencyKeyConflict(AuraError):
    """The key was used before with a different command payload; nothing was stored."""

    def __init__(self, command_type: str, idempotency_key: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} was already used for a different "
            f"{command_type!r} command"
        )
        self.command_type = command_type
        self.idempotency_key = idempotency_key


class ConcurrencyConflict(AuraError):
    """Other writers kept changing the aggregate; the command gave up after its attempts."""

    def __init__(self, aggregate_id: UUID, attempts: int) -> None:
        super().__init__(
            f"aggregate {aggregate_id} was changed concurrently on each of {attempts} attempts"
        )
        self.aggregate_id = aggregate_id
        self.attempts = attempts
