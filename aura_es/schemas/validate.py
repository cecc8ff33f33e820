"""Writes are checked against their event type's schema before anything is written.

The check runs pydantic's compiled validator of the model the schema is generated from
(``payload_adapter``), strict, over the stored JSON: 2-3 µs an event where a JSON Schema
interpreter takes ~40 (docs/benchmarks.md). Both say the same of every payload (a
hypothesis test in tests/test_schemas.py holds them to it), and ``aura-es schema check``
proves the generated schema equal to the committed file, so a running application
needs no registry files.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import ValidationError

from aura_es.errors import InvalidPayload
from aura_es.schemas.generate import current_schema, payload_adapter


@functools.cache
def _validator(cls: type) -> Any:
    """The compiled validator of ``payload_adapter(cls)``, called without the adapter's
    Python wrapper (its keyword handling, run after each round trip, cost a keyed command
    ~1 µs of client CPU; issue 27). Cached with the adapter, per event class.

    Its model ignores the fields the schema leaves open (the event's ``meta``,
    ``timestamp``, ``originator_topic``) where the schema's allows them: the same
    verdict on every payload (the schema says nothing of them), without building the
    Python objects of values nobody reads (2.5 -> 1.4 µs a debate's event, warm;
    5.8-7.3% of a command's client CPU was this check, issue 27)."""
    return payload_adapter(cls, extra="ignore").validator


def check_payload(cls: type, state: bytes, what: str) -> None:
    """``InvalidPayload`` naming the field when ``state`` (the event's stored JSON) does
    not match the schema of ``cls``."""
    try:
        _validator(cls).validate_json(state, strict=True)
    except ValidationError as e:
        error = e.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "(payload)"
        if error["type"] == "missing":
            raise InvalidPayload(f"{what}: field {field} is missing (schema"
                                 f" {current_schema(cls)['$id']})") from None
        shown = _short(error.get("input"))
        message = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidPayload(f"{what}: field {field} is {shown}, which does not match the"
                             f" schema: {message}") from None


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
