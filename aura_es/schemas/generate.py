"""An event class's payload as JSON Schema, generated with pydantic from its annotations.

The events stay the ``eventsourcing`` library's dataclasses (their decorators, upcasters
and aggregates are what users already write); pydantic only reads their annotations.
The schema describes the stored JSON of the payload (the CloudEvent's ``data``): the
event's own fields, without the library's ``originator_*``, ``timestamp`` and our
``meta``.

Models are **open** (``additionalProperties: true``): a reader ignores fields it does not
know. That is what lets a version add a field and stay FORWARD compatible (a service
built for the older version still reads it), the tolerant-reader rule CloudEvents
consumers follow. Writes are checked against the same schema, and an event class cannot
carry fields its annotations do not declare, so openness never lets junk in.
"""

from __future__ import annotations

import functools
import re
import types
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints
from uuid import UUID

from pydantic import BeforeValidator, ConfigDict, TypeAdapter, WithJsonSchema, create_model

from aura_es.errors import ConfigurationError
from aura_es.personal import META_SUBJECT, SEALED_KEY, personal_fields, subject_field

#: The JSON Schema dialect of every registry file.
DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: ``$id`` and CloudEvents ``dataschema`` of a version: a URN, since the registry lives
#: in the repository and on JetStream, not at a web address.
URI_PREFIX = "urn:aura-es:schema:"
_NOT_PAYLOAD = frozenset({"originator_id", "originator_version", "timestamp", "meta",
                          "originator_topic"})
#: Topics become file names, URIs and KV keys: letters, digits, ``.``, ``_`` and ``-``.
TOPIC_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")


def schema_uri(topic: str, version: int) -> str:
    return f"{URI_PREFIX}{topic}:v{version}"


def parse_schema_uri(uri: str) -> tuple[str, int] | None:
    """``(topic, version)`` of an aura-es schema URI; None for anything else."""
    if not uri.startswith(URI_PREFIX):
        return None
    topic, _, version = uri.removeprefix(URI_PREFIX).rpartition(":")
    if not TOPIC_PATTERN.match(topic) or not re.fullmatch(r"v[1-9][0-9]{0,5}", version):
        return None
    return topic, int(version[1:])


def payload_version(cls: type) -> int:
    """The schema version the class writes (the library's ``class_version``)."""
    return int(getattr(cls, "class_version", 1))


def topic_of(cls: type) -> str:
    topic = cls.__dict__.get("TOPIC")
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(topic, str) or not topic:
        raise ConfigurationError(f"event class {where} has no stable TOPIC")
    if not TOPIC_PATTERN.match(topic):
        raise ConfigurationError(
            f"event class {where}: TOPIC {topic!r} is not lower-case dotted words"
            " (letters, digits, '_', '-')")
    return topic


def event_classes() -> dict[str, type]:
    """Every loaded event class with a TOPIC, by topic (import your event modules first)."""
    from aura_es.events import AuraCreated, AuraEvent, missing_topic

    found: dict[str, type] = {}
    refused: list[str] = []
    roots: list[type] = [AuraEvent, AuraCreated]
    pending = list(roots)
    while pending:
        cls = pending.pop()
        subclasses: list[type] = cls.__subclasses__()
        pending.extend(subclasses)
        # A class with subclasses and no TOPIC is a base for others (as the framework's
        # own roots are); one without is an event type, and the write path would refuse
        # its events.
        if (not subclasses and cls not in roots
                and (problem := missing_topic(cls)) is not None):
            refused.append(problem)
        if "TOPIC" in cls.__dict__:
            topic = topic_of(cls)
            # A class redefined at the same place (a reload) replaces the earlier one.
            found[topic] = cls
    if refused:
        raise ConfigurationError("; ".join(sorted(refused)))
    return dict(sorted(found.items()))


#: A Decimal is stored as its exact string (``str(Decimal)``: digits, a point, an
#: exponent); never NaN or infinity, which payload checks refuse.
DECIMAL_PATTERN = r"^[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]{1,6})?$"
_DECIMAL_RE = re.compile(DECIMAL_PATTERN)


def _decimal_string(value: Any) -> Any:
    # What the schema's pattern says, for writes validated by pydantic (validate.py).
    if not isinstance(value, str) or not _DECIMAL_RE.match(value):
        raise ValueError("must be a decimal as a string, e.g. \"12.50\"")
    return Decimal(value)


_DECIMAL = Annotated[Decimal, BeforeValidator(_decimal_string),
                     WithJsonSchema({"type": "string", "pattern": DECIMAL_PATTERN})]


def _canonical_uuid(value: Any) -> Any:
    # JSON Schema's "uuid" format is the hyphenated form (RFC 4122), which the mapper
    # writes; pydantic alone would also take 32 bare digits, braces or a urn: prefix.
    if isinstance(value, str) and len(value) == 36 and all(
            value[i] == "-" for i in (8, 13, 18, 23)):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise ValueError("must be a UUID in its hyphenated form")


_UUID = Annotated[UUID, BeforeValidator(_canonical_uuid),
                  WithJsonSchema({"type": "string", "format": "uuid"})]


def _stored_form(hint: Any) -> Any:
    """``hint`` with every Decimal and UUID replaced by its stored form's schema."""
    if hint is Decimal:
        return _DECIMAL
    if hint is UUID:
        return _UUID
    args = get_args(hint)
    origin = get_origin(hint)
    if not args or origin is None or origin is Annotated:
        return hint
    converted = tuple(_stored_form(a) for a in args)
    if origin in (Union, types.UnionType):
        return Union[converted]  # noqa: UP007 - built from a tuple
    return origin[converted] if origin in (list, tuple, dict, set, frozenset) else hint


def payload_fields(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {
        name: hint for name, hint in hints.items()
        if name not in _NOT_PAYLOAD and not name.isupper() and not name.startswith("_")
        and get_origin(hint) is not ClassVar and name != "class_version"
    }


@functools.cache
def payload_adapter(cls: type, *, extra: Literal["allow", "ignore"] = "allow"
                    ) -> TypeAdapter[Any]:
    """The pydantic model of the payload ``cls`` writes: its JSON Schema is the registry
    file, and (strict, over the stored JSON) it validates writes. Fields it does not
    name are allowed (the schema's ``additionalProperties: true``); ``extra="ignore"``
    validates the same and keeps nothing of them (``validate.py``)."""
    model = create_model(  # type: ignore[call-overload]
        "Payload", __config__=ConfigDict(extra=extra),
        **{name: (_stored_form(hint), ...) for name, hint in payload_fields(cls).items()},
    )
    return TypeAdapter(model)


@functools.cache
def current_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of what ``cls`` writes today (its ``class_version``)."""
    topic = topic_of(cls)
    version = payload_version(cls)
    generated = payload_adapter(cls).json_schema(mode="serialization")
    for prop in generated.get("properties", {}).values():
        prop.pop("title", None)  # "Latency Ms": noise in a reviewed file
    generated.pop("title", None)
    _mark_personal(cls, generated)
    return {"$schema": DIALECT, "$id": schema_uri(topic, version), "title": topic,
            **generated}


#: The seal of an event's personal fields, as stored and mirrored (docs/erasure.md).
SEALED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The event's personal fields, sealed with its subject's data key"
                   " (AES-256-GCM); each of them holds a placeholder in the payload",
    "properties": {
        "subject": {"type": "string"},
        "fields": {"type": "array", "items": {"type": "string"}},
        "data": {"type": "string", "contentEncoding": "base64",
                 "description": "the 12-byte nonce, then the ciphertext and its tag"},
    },
    "required": ["subject", "fields", "data"],
}


def _mark_personal(cls: type, schema: dict[str, Any]) -> None:
    """Records which fields are personal (``x-aura-personal``), whose they are
    (``x-aura-subject``) and the seal they travel in, so the schema describes the form
    on the wire: a consumer without the key reads each as its placeholder."""
    fields = personal_fields(cls)
    if not fields:
        return
    properties = schema.setdefault("properties", {})
    for name in fields:
        properties[name]["x-aura-personal"] = True
    properties[SEALED_KEY] = SEALED_SCHEMA
    schema["x-aura-subject"] = subject_field(cls) or f"meta.{META_SUBJECT}"
