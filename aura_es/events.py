"""Event base classes: stable topics and the metadata every stored event carries.

Events are the ``eventsourcing`` library's frozen dataclasses. Each concrete event
declares ``TOPIC`` (e.g. ``"aura.debate.started.v1"``); the topic, not the Python
path, is what is stored, so classes can be renamed or moved without breaking decoding,
and topics double as NATS subjects.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import ClassVar
from uuid import UUID

from eventsourcing.domain import AggregateCreated, AggregateEvent
from eventsourcing.utils import register_topic, resolve_topic

from aura_es.frozen import quick_init
from aura_es.random_ids import random_uuid

META_KEYS = ("event_id", "tenant_id", "correlation_id", "causation_id", "idempotency_key")


@quick_init
@dataclass(frozen=True)
class CommandContext:
    """Who and what caused the events raised while it is active."""

    tenant_id: str = "default"
    correlation_id: str | None = None
    causation_id: str | None = None
    idempotency_key: str | None = None
    #: The person the command's personal data is about (``meta.subject``), if given.
    subject: str | None = None


#: The metadata source of the events a command raises (``new_meta``): the command
#: pipeline's decide sets it around each command and resets it after. CommandContext is
#: frozen, so one shared default instance is safe.
COMMAND_CONTEXT: ContextVar[CommandContext] = ContextVar(
    "aura_command_context", default=CommandContext()  # noqa: B039
)


def new_meta() -> dict[str, str | None]:
    """Metadata for one new event, taken from the active command context."""
    ctx = COMMAND_CONTEXT.get()
    meta = {
        "event_id": random_uuid(),
        "tenant_id": ctx.tenant_id,
        "correlation_id": ctx.correlation_id,
        "causation_id": ctx.causation_id,
        "idempotency_key": ctx.idempotency_key,
    }
    if ctx.subject is not None:
        # Only when given: every other event's metadata stays as it was.
        meta["subject"] = ctx.subject
    return meta


class _MetaAccessors:
    """Typed read access to the ``meta`` mapping of an event."""

    meta: dict[str, str | None]

    @property
    def event_id(self) -> UUID:
        return UUID(str(self.meta["event_id"]))

    @property
    def tenant_id(self) -> str:
        return str(self.meta.get("tenant_id") or "default")

    @property
    def correlation_id(self) -> str | None:
        return self.meta.get("correlation_id")

    @property
    def causation_id(self) -> str | None:
        return self.meta.get("causation_id")

    @property
    def idempotency_key(self) -> str | None:
        return self.meta.get("idempotency_key")


#: Every event topic a loaded event class declares (the catalog warns about others).
KNOWN_TOPICS: set[str] = set()


def missing_topic(cls: type) -> str | None:
    """Why events of ``cls`` may not be written (it has no ``TOPIC`` of its own), or
    None. An inherited topic is as bad as none: two classes would share one schema."""
    if cls.__dict__.get("TOPIC"):
        return None
    where = f"{cls.__module__}.{cls.__qualname__}"
    for base in cls.__mro__[1:]:
        inherited = base.__dict__.get("TOPIC")
        if inherited:
            return (f"event class {where} inherits TOPIC {inherited!r} from"
                    f" {base.__qualname__}: give it a TOPIC of its own")
    return (f"event class {where} has no TOPIC: give it a stable one, e.g."
            ' TOPIC = "shop.order.placed.v1"')


def _register(cls: type) -> None:
    topic = cls.__dict__.get("TOPIC")
    if not topic:
        return
    KNOWN_TOPICS.add(topic)
    try:
        existing = resolve_topic(topic)
    except Exception:
        existing = None
    if existing is not None and existing is not cls:
        # A class redefined in the same place (module reload, a test) replaces the old one.
        def place(c: type) -> tuple[str, str]:
            return c.__module__, c.__qualname__

        same_place = place(existing) == place(cls)
        if not same_place:
            raise TypeError(f"event topic {topic!r} is already used by {existing!r}")
        from eventsourcing.utils import _topic_cache

        _topic_cache[topic] = cls
        return
    if existing is None:
        register_topic(topic, cls)


class AuraEvent(_MetaAccessors, AggregateEvent):
    """An event of an aggregate. Subclasses set ``TOPIC`` and declare their fields."""

    TOPIC: ClassVar[str]
    meta: dict[str, str | None]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        _register(cls)


class AuraCreated(_MetaAccessors, AggregateCreated):
    """The first event of an aggregate. Subclasses set ``TOPIC`` and declare their fields."""

    TOPIC: ClassVar[str]
    meta: dict[str, str | None]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        _register(cls)
