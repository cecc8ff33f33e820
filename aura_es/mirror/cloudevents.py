"""Events as CloudEvents v1.0 in structured mode (the NATS binding's only mode).

The body is the CloudEvent JSON; extension attributes carry the global position, the
store's id, tenant and correlation id. Subjects are ``<prefix>.<aggregate>.<event>``,
taken from topics shaped ``<namespace>.<aggregate>.<event>.v<N>``.

Headers say whose message it is without parsing the body: ``Aura-Position`` and
``Aura-Store``. A message without them on the stream is foreign (published by someone
else) and is never taken for one of the store's events.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson

from aura_es.payload import json_default
from aura_es.personal import SEALED_KEY
from aura_es.schemas import versions
from aura_es.schemas.generate import schema_uri
from aura_es.store.envelope import EventEnvelope
from aura_es.store.eventlog import Cursor

CONTENT_TYPE = "application/cloudevents+json"
POSITION_HEADER = "Aura-Position"
TRANSACTION_HEADER = "Aura-Transaction"
STORE_HEADER = "Aura-Store"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_VERSION = re.compile(r"^v\d+$")


@dataclass(frozen=True)
class Message:
    subject: str
    body: bytes
    msg_id: str
    position: int
    store_id: UUID | None = None
    transaction: int = 0

    @property
    def cursor(self) -> Cursor:
        """Its place in the log's (and so the stream's) order."""
        return Cursor(self.transaction, self.position)

    def headers(self) -> dict[str, str]:
        headers = {
            "Nats-Msg-Id": self.msg_id,
            "Content-Type": CONTENT_TYPE,
            POSITION_HEADER: str(self.position),
        }
        if self.store_id is not None:
            headers[STORE_HEADER] = str(self.store_id)
        if self.store_id is not None and self.transaction:
            headers[TRANSACTION_HEADER] = str(self.transaction)
        return headers

    def size(self) -> int:
        """Bytes the server counts against its ``max_payload``: body and headers."""
        return len(self.body) + sum(len(k) + len(v) + 4 for k, v in self.headers().items()) + 12


def aggregate_and_event(topic: str) -> tuple[str, str]:
    parts = topic.split(".")
    if len(parts) >= 2 and _VERSION.match(parts[-1]):
        parts = parts[:-1]
    if len(parts) >= 3:
        parts = parts[1:]  # drop the namespace
    aggregate = parts[0] if len(parts) > 1 else "event"
    event = "_".join(parts[1:]) if len(parts) > 1 else parts[0]
    return _UNSAFE.sub("_", aggregate) or "_", _UNSAFE.sub("_", event) or "_"


def message_id(event: EventEnvelope) -> str:
    return event.event_id or f"{event.aggregate_id}:{event.version}"


def to_message(event: EventEnvelope, prefix: str, store_id: UUID | None = None,
               *, dataschema: bool = True) -> Message:
    """The CloudEvent of ``event``; ``store_id`` None gives the form published before
    stores had ids, ``dataschema`` False the form before schemas (how ``verify``
    recomputes those older messages)."""
    aggregate, name = aggregate_and_event(event.topic)
    msg_id = message_id(event)
    cloud_event: dict[str, Any] = {
        "specversion": "1.0",
        "id": msg_id,
        "source": f"/aura/{aggregate}",
        "type": event.topic,
        "subject": str(event.aggregate_id),
    }
    if event.undecodable is None:
        cloud_event |= {
            "time": event.occurred_at.isoformat(),
            "datacontenttype": "application/json",
        }
        # The registry version its data was written with (docs/schemas.md); a topic
        # with no loaded class has no registered schema to name.
        if dataschema and versions.known_version(event.topic) is not None:
            cloud_event["dataschema"] = schema_uri(event.topic, event.schema_version)
        # Sealed personal fields travel sealed: the placeholders and the seal, as stored
        # (the schema's ``_sealed``), for a consumer given key access to open.
        if event.opened:  # a reader's opened copy: its plaintext never leaves the process
            raise ValueError(f"event at position {event.position} is opened: not published")
        cloud_event["data"] = (event.payload if event.seal is None
                               else {**event.payload, SEALED_KEY: event.seal})
    else:
        # Mirrored as it is stored, so the stream still holds every event once, in order.
        cloud_event |= {
            "datacontenttype": "application/octet-stream",
            "data_base64": base64.b64encode(event.raw).decode(),
            "auraundecodable": event.undecodable,
        }
    cloud_event |= {
        "auraposition": event.position,
        "auraversion": event.version,
        "auratenant": event.tenant_id,
        "auracorrelation": event.correlation_id,
    }
    if store_id is not None:
        cloud_event["aurastore"] = str(store_id)
    # Events stored before lock-free appends have no transaction (0): their messages
    # stay byte for byte what the earlier relay published, so verify still matches them.
    if store_id is not None and event.transaction:
        cloud_event["auratransaction"] = event.transaction
    return Message(
        subject=f"{prefix}.{aggregate}.{name}",
        body=orjson.dumps(cloud_event, default=json_default),
        msg_id=msg_id,
        position=event.position,
        store_id=store_id,
        transaction=event.transaction,
    )


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
