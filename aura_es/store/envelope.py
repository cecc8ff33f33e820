"""One stored event as a projection sees it: position, topic, payload and metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

from aura_es.errors import EventUndecodable
from aura_es.personal import SEALED_KEY
from aura_es.store import sealing
from aura_es.store.mapper import JsonMapper

_NOT_PAYLOAD = frozenset({"timestamp", "meta", "originator_topic", "class_version",
                          SEALED_KEY})
_mapper = JsonMapper()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class EventEnvelope:
    position: int
    topic: str
    aggregate_id: UUID
    version: int
    #: Its personal fields opened (or erased placeholders) when it was read with its
    #: subject's key, sealed placeholders otherwise. Read through a property (set below).
    payload: dict[str, Any]
    meta: dict[str, Any]
    occurred_at: datetime
    _raw: bytes = field(repr=False, compare=False, default=b"")
    #: Why the stored bytes are not an event (None for every event that decodes). Such
    #: an event never reaches a handler: it is dead-lettered with its raw bytes.
    undecodable: str | None = None
    #: The id of the transaction that stored it (0 for events from before lock-free
    #: appends): with ``position``, its place in the log's order.
    transaction: int = 0
    #: The version of its type's schema the payload was written with (``class_version``).
    schema_version: int = 1
    #: The seal of its personal fields (None: it has none); their values in ``payload``
    #: are placeholders until ``store/opening.py`` opens it.
    seal: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    #: True once the personal fields in ``payload`` are the opened values (or, for an
    #: erased subject, the erased placeholders).
    opened: bool = False
    #: The keys it opens with when a personal field is first read (``from_row(...,
    #: lazily=True)``), held by the reader's transaction; None once opened, or never set.
    _keys: Mapping[str, bytes | None] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_row(cls, row: tuple[Any, ...], keys: Mapping[str, bytes | None] | None = None,
                 *, lazily: bool = False) -> EventEnvelope:
        """From ``(notification_id, originator_id, originator_version, topic, state
        [, transaction_id])``; its personal fields opened when ``keys`` holds its
        subject's (None: erased), in the same pass (``store/opening.py`` otherwise), or,
        ``lazily``, when one of them is first read (a reader that reads a few of its
        events' personal fields opens only those).

        Never raises for a row of the events table: a row whose state does not decode
        (written by another program, or damaged), or whose seal does not open, comes
        back with ``undecodable`` set, so one bad row is isolated instead of stopping
        every reader.
        """
        position, aggregate_id, version, topic, state = row[:5]
        transaction = int(row[5]) if len(row) > 5 and row[5] is not None else 0
        raw = bytes(state)
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict):
                raise ValueError(f"the state is a JSON {type(data).__name__}, not an object")
            meta = data.get("meta") or {}
            if not isinstance(meta, dict):
                raise ValueError("its meta is not an object")
            occurred_at = datetime.fromisoformat(data["timestamp"])
            if occurred_at.tzinfo is None:
                raise ValueError("its timestamp has no time zone")
            schema_version = data.get("class_version", 1)
            if type(schema_version) is not int or schema_version < 1:
                raise ValueError(f"its class_version {schema_version!r} is not a version")
        except Exception as e:
            return cls(
                position=position, topic=topic, aggregate_id=aggregate_id, version=version,
                payload={}, meta={}, occurred_at=_EPOCH, _raw=raw,
                undecodable=f"{type(e).__name__}: {e}", transaction=transaction,
            )
        payload = {k: v for k, v in data.items() if k not in _NOT_PAYLOAD}
        seal = data.get(SEALED_KEY)
        if not isinstance(seal, dict):
            seal = None
        opened = False
        undecodable = None
        pending = None
        if seal is not None and keys is not None and seal.get("subject") in keys:
            if lazily:
                pending = keys
            else:
                try:
                    payload.update(sealing.read_as(seal, keys[seal["subject"]], topic,
                                                   aggregate_id, version, payload))
                    opened = True
                except EventUndecodable as e:
                    undecodable = str(e)
        return cls(
            position=position,
            topic=topic,
            aggregate_id=aggregate_id,
            version=version,
            payload=payload,
            meta=meta,
            occurred_at=occurred_at,
            _raw=raw,
            transaction=transaction,
            schema_version=schema_version,
            seal=seal,
            opened=opened,
            undecodable=undecodable,
            _keys=pending,
        )

    @property
    def pending(self) -> bool:
        """True while its personal fields wait to be opened on first read."""
        return self._keys is not None

    def _open_pending(self) -> None:
        keys, seal, payload = self._keys, self.seal, self.__dict__["payload"]
        assert keys is not None and seal is not None
        payload.update(sealing.read_as(seal, keys[seal["subject"]], self.topic,
                                       self.aggregate_id, self.version, payload))
        # Frozen for its readers; opening once, in place, is what ``lazily`` defers.
        object.__setattr__(self, "opened", True)
        object.__setattr__(self, "_keys", None)

    @property
    def raw(self) -> bytes:
        """The stored bytes, as they are in the events table."""
        return self._raw

    def opened_with(self, fields: dict[str, Any]) -> EventEnvelope:
        """A copy whose personal ``fields`` are opened (or erased placeholders). Built
        from this one's attributes: ``dataclasses.replace`` runs ``__init__`` again, a
        third of the cost of opening an event (profiled)."""
        copied = object.__new__(EventEnvelope)
        attributes = self.__dict__.copy()
        payload = self.__dict__["payload"].copy()
        payload.update(fields)
        attributes["payload"] = payload
        attributes["opened"] = True
        attributes["_keys"] = None
        object.__setattr__(copied, "__dict__", attributes)
        return copied

    @property
    def subject(self) -> str | None:
        """Whose personal data it holds (None: it holds none)."""
        return sealing.subject_of_seal(self.seal)

    @property
    def event_id(self) -> str | None:
        value = self.meta.get("event_id")
        return str(value) if value is not None else None

    @property
    def tenant_id(self) -> str:
        return str(self.meta.get("tenant_id") or "default")

    @property
    def correlation_id(self) -> str | None:
        value = self.meta.get("correlation_id")
        return str(value) if value is not None else None

    def value(self, path: str) -> Any:
        """``payload.x``, ``meta.x``, ``aggregate_id``, ``topic``, ``position``, ``occurred_at``."""
        head, _, name = path.partition(".")
        if head == "payload":
            if self._keys is not None:
                names = self.seal.get("fields") if self.seal is not None else None
                if isinstance(names, list) and name not in names:
                    return self.__dict__["payload"].get(name)  # not personal: none opened
            return self.payload.get(name)
        if head == "meta":
            return self.meta.get(name)
        if head == "aggregate_id":
            return str(self.aggregate_id)
        if head == "occurred_at":
            return self.occurred_at.isoformat()
        return getattr(self, head)

    def decode(self) -> Any:
        """The typed domain event (upcast to its current version)."""
        from eventsourcing.persistence import StoredEvent

        state = self._raw
        payload = self.payload  # opens a pending one
        if self.opened:
            # The typed event of what this envelope holds: its opened fields, no seal.
            data = orjson.loads(self._raw)
            data.pop(SEALED_KEY, None)
            data.update(payload)
            state = orjson.dumps(data)
        return _mapper.to_domain_event(
            StoredEvent(self.aggregate_id, self.version, self.topic, state)
        )


def _payload(event: EventEnvelope) -> dict[str, Any]:
    if event.__dict__.get("_keys") is not None:
        event._open_pending()
    return event.__dict__["payload"]  # type: ignore[no-any-return]


def _set_payload(event: EventEnvelope, payload: dict[str, Any]) -> None:
    event.__dict__["payload"] = payload


# ``payload`` stays a field (constructed, replaced and compared as one) and is read
# through this property, so an event read ``lazily`` opens its personal fields the first
# time anything reads them: no reader can be handed the sealed placeholders by mistake.
setattr(EventEnvelope, "payload", property(  # noqa: B010
    _payload, _set_payload,
    doc="The payload; a pending event's personal fields are opened on first read"
        " (``SealBroken`` if its seal fails authentication)."))
