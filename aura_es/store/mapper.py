"""Stores events as plain JSON (orjson), and turns JSON back into typed events.

The library's JSONTranscoder wraps UUIDs, Decimals and datetimes in ``{"_type_": ...}``
objects. We store the plain JSON instead, so projections can read ``payload.agent_id``
in SQL and the mirror can publish the same bytes as CloudEvent data; the types come
back from the event class's annotations when an event is decoded.
"""

from __future__ import annotations

import functools
import types
import typing
from collections import abc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints
from uuid import UUID

import orjson
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent, Transcoder
from eventsourcing.utils import get_topic, resolve_topic

from aura_es import payload
from aura_es.errors import ConfigurationError, EventUndecodable, EventVersionUnknown
from aura_es.events import missing_topic
from aura_es.frozen import quick_new
from aura_es.payload import json_default
from aura_es.personal import SEALED_KEY, personal_fields, subject_of
from aura_es.store import sealing
from aura_es.store.keyring import Keyring

__all__ = ["JsonMapper", "SealedStoredEvent", "dumps", "json_default"]

Convert = Callable[[Any], Any]
_BASE_FIELDS = frozenset({"originator_id", "originator_version"})


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=json_default)


def _converter(hint: Any) -> Convert | None:
    """A function from JSON value to the annotated type, or None when JSON is already right."""
    if hint in (UUID, datetime, Decimal):
        scalar: dict[Any, Convert] = {
            UUID: UUID,
            datetime: datetime.fromisoformat,
            Decimal: lambda v: Decimal(str(v)),
        }
        return scalar[hint]
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            conv = _converter(inner[0])
            if conv is None:
                return None
            return functools.partial(_optional, conv)
        return None
    if origin in (list, tuple, abc.Sequence):
        args = get_args(hint)
        conv = _converter(args[0]) if args else None
        if origin is tuple:
            return functools.partial(_each, conv or _same, tuple)
        if conv is None:
            return None
        return functools.partial(_each, conv, list)
    return None


def _same(value: Any) -> Any:
    return value


def _optional(convert: Convert, value: Any) -> Any:
    return None if value is None else convert(value)


def _each(convert: Convert, container: Callable[[Any], Any], values: Any) -> Any:
    return container(convert(v) for v in values)


@cache
def _field_converters(cls: type) -> tuple[tuple[str, Convert], ...]:
    hints = get_type_hints(cls)
    out = []
    for name, hint in hints.items():
        if name in _BASE_FIELDS or name.isupper():
            continue
        conv = _converter(hint)
        if conv is not None:
            out.append((name, conv))
    return tuple(out)


@cache
def _writing(cls: type) -> tuple[str, int, str]:
    """What writing an event of ``cls`` needs, the same for every event of the class:
    its topic, its schema version, and how errors name it. Worked out once per class
    (a fifth of a bulk append's mapping, profiled; issue 27); a class defined again is
    another class."""
    # A stored event without its own topic would be stored under its Python path,
    # with no schema to check it against: refused before anything is written.
    if (problem := missing_topic(cls)) is not None:
        raise ConfigurationError(problem)
    class_version = getattr(cls, "class_version", 1)
    topic = get_topic(cls)
    # Named by the schema version a reader expects (not the aggregate's version). The
    # checks refuse, before anything is written, a value JSON or PostgreSQL would change
    # (NaN to null) or refuse (NUL), and an event too large to mirror.
    return topic, class_version, f"event {topic} (schema v{class_version})"


#: Appends of at least this many events are mapped as the recorder asks for them.
LAZY_FROM = 64


class MappedLazily(abc.Sequence[StoredEvent]):
    """Domain events, each mapped the first time it is asked for, and kept: a second
    pass (the recorder's retry after a lost connection, the application's results)
    maps nothing again. A mapping that fails raises where the event is asked for."""

    def __init__(self, events: list[DomainEventProtocol[UUID]],
                 to_stored: Callable[[DomainEventProtocol[UUID]], StoredEvent]) -> None:
        self._events = events
        self._to_stored = to_stored
        self._mapped: list[StoredEvent] = []

    def __len__(self) -> int:
        return len(self._events)

    @typing.overload
    def __getitem__(self, index: int) -> StoredEvent: ...

    @typing.overload
    def __getitem__(self, index: slice) -> abc.Sequence[StoredEvent]: ...

    def __getitem__(self, index: int | slice) -> StoredEvent | abc.Sequence[StoredEvent]:
        if isinstance(index, slice):
            wanted = range(len(self._events))[index]
            self._map_until(max(wanted, default=-1) + 1)
            return [self._mapped[i] for i in wanted]
        self._map_until(len(self._events) if index < 0 else index + 1)
        return self._mapped[index]

    def __iter__(self) -> abc.Iterator[StoredEvent]:
        self._map_until(len(self._events))
        return iter(self._mapped)

    def _map_until(self, end: int) -> None:
        mapped, to_stored = self._mapped, self._to_stored
        for event in self._events[len(mapped):end]:
            mapped.append(to_stored(event))


#: ``StoredEvent(...)`` for every event mapped and read, without the four
#: ``object.__setattr__`` calls of its frozen ``__init__`` (1.1 -> 0.3 µs; issue 27).
stored_event = quick_new(StoredEvent)


@dataclass(frozen=True)
class SealedStoredEvent(StoredEvent):
    """A stored event whose personal fields are sealed: the recorder writes its subject
    beside it (and checks, in the append's statement, that the subject is not erased)."""

    subject: str = ""


class _NoTranscoder(Transcoder):
    def encode(self, obj: Any) -> bytes:
        return dumps(obj)

    def decode(self, data: bytes) -> Any:
        return orjson.loads(data)


#: Refuses an event's encoded payload that does not fit its type's schema: (event class,
#: the payload as JSON, what to call it in the error). The application injects the schema
#: registry's check (``aura_es.schemas.validate.check_payload``); the store knows none.
WriteCheck = Callable[[type, bytes, str], None]


class JsonMapper(Mapper[UUID]):
    """Mapper whose stored state is plain JSON; typed by event annotations on the way out."""

    def __init__(self, max_event_bytes: int | None = None, *,
                 check: WriteCheck | None = None, keyring: Keyring | None = None) -> None:
        super().__init__(transcoder=_NoTranscoder())
        self.max_event_bytes = max_event_bytes
        self.check = check
        #: Seals personal fields on the way in, opens them on the way out; without one,
        #: an event with personal fields is refused and a sealed one reads as sealed.
        self.keyring = keyring

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        event_state = dict(vars(domain_event))
        originator_id = event_state.pop("originator_id")
        originator_version = event_state.pop("originator_version")
        cls = type(domain_event)
        topic, class_version, what = _writing(cls)
        if class_version > 1:
            event_state["class_version"] = class_version
        state = payload.encode(event_state, what)
        payload.check_size(state, what, self.max_event_bytes or payload.MAX_EVENT_BYTES)
        if self.check is not None:
            self.check(cls, state, what)
        fields = personal_fields(cls)
        if fields:
            # Checked as plaintext (above), stored sealed: the schema's placeholders fit.
            return self._sealed(event_state, fields, cls, originator_id, originator_version,
                                topic, what)
        return stored_event(originator_id, originator_version, topic, state)

    def to_stored_events(self, events: list[DomainEventProtocol[UUID]]
                         ) -> abc.Sequence[StoredEvent]:
        """The events mapped, a long run of them as the recorder asks for them (it sends
        the first chunk while the next is mapped: ``pipelined.py``). Mapped at once when
        one must be sealed: its subject's key may need a connection from the pool the
        recorder is appending on."""
        if len(events) < LAZY_FROM or any(map(personal_fields, {type(e) for e in events})):
            return [self.to_stored_event(e) for e in events]
        return MappedLazily(events, self.to_stored_event)

    def _sealed(self, event_state: dict[str, Any], fields: dict[str, tuple[Any, Any]],
                cls: type, originator_id: UUID, originator_version: int, topic: str,
                what: str) -> SealedStoredEvent:
        subject = subject_of(cls, event_state)
        assert subject is not None
        if self.keyring is None:
            raise ConfigurationError(f"{what} has personal fields and this store seals none")
        key = self.keyring.for_writing(subject)
        sealing.seal(event_state, fields, subject, key, topic, originator_id,
                     originator_version)
        state = payload.encode(event_state, what)
        payload.check_size(state, what, self.max_event_bytes or payload.MAX_EVENT_BYTES)
        return SealedStoredEvent(originator_id, originator_version, topic, state, subject)

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        cls = resolve_topic(stored_event.topic)
        try:
            state: dict[str, Any] = orjson.loads(stored_event.state)
            state["originator_id"] = (
                stored_event.originator_id
                if isinstance(stored_event.originator_id, UUID)
                else UUID(str(stored_event.originator_id))
            )
            state["originator_version"] = stored_event.originator_version
            if (seal := state.pop(SEALED_KEY, None)) is not None:
                state.update(self._opened(seal, state, stored_event))
            class_version = getattr(cls, "class_version", 1)
            from_version = state.pop("class_version", 1)
            if from_version > class_version:
                raise EventVersionUnknown(stored_event.topic, from_version, class_version)
            while from_version < class_version:
                getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
                from_version += 1
            for name, conv in _field_converters(cls):
                if name in state:
                    state[name] = conv(state[name])
        except (EventVersionUnknown, EventUndecodable, ConfigurationError):
            raise
        except Exception as e:
            raise MapperDeserialisationError(
                f"cannot decode stored event {stored_event.topic!r} "
                f"{stored_event.originator_id} v{stored_event.originator_version}: {e}"
            ) from e
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        return typing.cast(DomainEventProtocol[UUID], event)

    def _opened(self, seal: Any, state: dict[str, Any], stored: StoredEvent) -> dict[str, Any]:
        """A seal's fields, opened; erased placeholders once its subject is erased; left
        sealed by a mapper without a keyring (``EventEnvelope.decode`` of an unopened
        event)."""
        subject = sealing.subject_of_seal(seal)
        if self.keyring is None or subject is None:
            return {}
        return sealing.read_as(seal, self.keyring.for_reading([subject]).get(subject),
                               stored.topic, stored.originator_id,
                               stored.originator_version, state)
