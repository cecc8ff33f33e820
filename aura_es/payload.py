"""What an event (or a command's arguments) may hold, checked before anything is written.

The store keeps JSON that PostgreSQL (``jsonb``), the projections and every JetStream
consumer read back exactly as it was given. So a value that one of them would change
or refuse is refused at the command, with the field named:

- NUL characters (PostgreSQL text and jsonb cannot hold U+0000) and lone surrogates
  (not UTF-8 at all);
- NaN and infinity (JSON has no such numbers: they would be stored as ``null``);
- integers outside the signed 64-bit range (``bigint`` columns, and most JSON readers);
- values JSON cannot represent (objects of other types, non-string keys);
- an encoded event larger than ``MAX_EVENT_BYTES`` (so its CloudEvent always fits
  a NATS message).

Every other string is kept exactly: control characters, right-to-left text, combining
marks, emoji.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson

from aura_es.errors import InvalidPayload, PayloadTooLarge

#: The largest stored event, in bytes of its JSON: a NATS message holds 1 MiB by
#: default (``max_payload``), and the CloudEvent adds its envelope to the event's JSON.
MAX_EVENT_BYTES = 1_000_000
MIN_INT, MAX_INT = -(2**63), 2**63 - 1


def json_default(obj: Any) -> Any:
    """orjson's fallback: Decimals as exact strings, sets and tuples as lists."""
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot store a value of type {type(obj).__name__} in an event")


def text_problem(value: str) -> str | None:
    """Why the string ``value`` cannot be stored, or None."""
    if "\x00" in value:
        return "contains a NUL character (U+0000), which PostgreSQL cannot store"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate, which is not valid UTF-8"
    return None


def check_text(field: str, value: Any) -> None:
    """For strings outside a payload (keys, tenant and correlation ids)."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise InvalidPayload(f"{field} {problem}")


def _problems(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, problem) for every value JSON would change, refuse or misread."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        kind = type(item)
        if kind is str:
            problem = text_problem(item)
            if problem:
                yield where, problem
        elif kind is float:
            if not math.isfinite(item):
                yield where, f"is {item}: JSON has no NaN or infinity"
        elif kind is int:
            if not MIN_INT <= item <= MAX_INT:
                yield where, "is outside the signed 64-bit integer range"
        elif kind is dict:
            for key, child in item.items():
                if not isinstance(key, str):
                    yield where, f"has a key of type {type(key).__name__}; keys must be strings"
                    continue
                problem = text_problem(key)
                if problem:
                    yield f"{where}[{key!a}]", f"key {problem}"
                    continue
                stack.append((child, _child_path(where, key)))
        elif kind in (list, tuple, set, frozenset):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, Decimal) and not item.is_finite():
            yield where, f"is {item}: only finite decimals can be stored"


def _storable(value: Any) -> bool:
    """The fast check, run on every event: no paths built, stops at the first problem.
    (Lone surrogates and values JSON cannot hold make orjson raise instead.) Strings,
    the commonest children, are checked in the loop rather than by a call each: a
    third of this check's cost in a bulk load (profiled, issue 27)."""
    kind = type(value)
    if kind is str:
        return "\x00" not in value
    if kind is dict:
        for key in value:
            if type(key) is not str or "\x00" in key:
                return False
        return _all_storable(value.values())
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        return _all_storable(value)
    if kind is float:
        return bool(value - value == 0.0)  # False for NaN and both infinities
    if kind is int:
        return bool(MIN_INT <= value <= MAX_INT)
    if isinstance(value, Decimal):
        return value.is_finite()
    return True


def _all_storable(children: Iterable[Any]) -> bool:
    for child in children:
        kind = type(child)
        if kind is str:
            if "\x00" in child:
                return False
        elif kind not in _ALWAYS_STORABLE and not _storable(child):
            return False
    return True


# Children that can hold nothing to refuse, passed without a call: in an event's
# metadata and timestamps, most of the values checked (issue 27).
_ALWAYS_STORABLE = frozenset({type(None), bool, datetime, UUID})


def _child_path(where: str, key: str) -> str:
    """``where.key`` for a plain name, ``where['a key']`` (escaped, on one line) else."""
    if key.isidentifier() and key.isascii():
        return f"{where}.{key}" if where else key
    return f"{where}[{key!a}]"


def encode(value: Any, what: str) -> bytes:
    """``value`` as JSON, exactly; ``InvalidPayload`` naming ``what`` and the field."""
    encoded = None
    if _storable(value):
        try:
            encoded = orjson.dumps(value, default=json_default)
        except (TypeError, orjson.JSONEncodeError):
            encoded = None
    if encoded is not None:
        return encoded
    # Something is wrong: find it, and name it.
    for where, problem in _problems(value, ""):
        raise InvalidPayload(f"{what}: {where or 'the value'} {problem}")
    try:
        return orjson.dumps(value, default=json_default)
    except (TypeError, orjson.JSONEncodeError) as e:
        raise InvalidPayload(f"{what}: cannot be stored as JSON: {e}") from None


def check_size(encoded: bytes, what: str, limit: int = MAX_EVENT_BYTES) -> None:
    if len(encoded) > limit:
        raise PayloadTooLarge(
            f"{what} is {len(encoded):,} bytes as JSON; the largest event aura-es stores is"
            f" {limit:,} bytes (so it fits one NATS message): store large content elsewhere"
            " and put its reference in the event"
        )
