"""One stored event as a projection sees it: position, topic, payload and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from aura_es.mapper import JsonMapper

_NOT_PAYLOAD = frozenset({"timestamp", "meta", "originator_topic", "class_version"})
_mapper = JsonMapper()


@dataclass(frozen=True)
class EventEnvelope:
    position: int
    topic: str
    aggregate_id: UUID
    version: int
    payload: dict[str, Any]
    meta: dict[str, Any]
    occurred_at: datetime
    _raw: bytes = field(repr=False, compare=False, default=b"")

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> EventEnvelope:
        """From ``(notification_id, originator_id, originator_version, topic, state)``."""
        position, aggregate_id, version, topic, state = row
        raw = bytes(state)
        data: dict[str, Any] = orjson.loads(raw)
        meta = data.get("meta") or {}
        payload = {k: v for k, v in data.items() if k not in _NOT_PAYLOAD}
        return cls(
            position=position,
            topic=topic,
            aggregate_id=aggregate_id,
            version=version,
            payload=payload,
            meta=meta,
            occurred_at=datetime.fromisoformat(data["timestamp"]),
            _raw=raw,
        )

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

        return _mapper.to_domain_event(
            StoredEvent(self.aggregate_id, self.version, self.topic, self._raw)
        )
