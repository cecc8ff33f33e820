"""Events as CloudEvents v1.0 in structured mode (the NATS binding's only mode).

The body is the CloudEvent JSON; extension attributes carry the global position, tenant
and correlation id. Subjects are ``<prefix>.<aggregate>.<event>``, taken from topics
shaped ``<namespace>.<aggregate>.<event>.v<N>``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import orjson

from aura_es.mapper import json_default
from aura_es.projection.envelope import EventEnvelope

CONTENT_TYPE = "application/cloudevents+json"
POSITION_HEADER = "Aura-Position"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_VERSION = re.compile(r"^v\d+$")


@dataclass(frozen=True)
class Message:
    subject: str
    body: bytes
    msg_id: str
    position: int

    def headers(self) -> dict[str, str]:
        return {
            "Nats-Msg-Id": self.msg_id,
            "Content-Type": CONTENT_TYPE,
            POSITION_HEADER: str(self.position),
        }


def aggregate_and_event(topic: str) -> tuple[str, str]:
    parts = topic.split(".")
    if len(parts) >= 2 and _VERSION.match(parts[-1]):
        parts = parts[:-1]
    if len(parts) >= 3:
        parts = parts[1:]  # drop the namespace
    aggregate = parts[0] if len(parts) > 1 else "event"
    event = "_".join(parts[1:]) if len(parts) > 1 else parts[0]
    return _UNSAFE.sub("_", aggregate), _UNSAFE.sub("_", event)


def to_message(event: EventEnvelope, prefix: str) -> Message:
    aggregate, name = aggregate_and_event(event.topic)
    msg_id = event.event_id or f"{event.aggregate_id}:{event.version}"
    cloud_event = {
        "specversion": "1.0",
        "id": msg_id,
        "source": f"/aura/{aggregate}",
        "type": event.topic,
        "subject": str(event.aggregate_id),
        "time": event.occurred_at.isoformat(),
        "datacontenttype": "application/json",
        "data": event.payload,
        "auraposition": event.position,
        "auraversion": event.version,
        "auratenant": event.tenant_id,
        "auracorrelation": event.correlation_id,
    }
    return Message(
        subject=f"{prefix}.{aggregate}.{name}",
        body=orjson.dumps(cloud_event, default=json_default),
        msg_id=msg_id,
        position=event.position,
    )


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
