"""Who published a message on the stream, and where it sits in the store's log: read
from the headers the relay sets, never from the body alone.

A message without ``Aura-Position`` is foreign (anyone allowed to publish on the
subjects can put one there): it is recorded, never applied, as ``mirror verify`` counts
it. A store's message carries its log cursor ``(Aura-Transaction, Aura-Position)``,
which increases along the stream; the consumer uses it to absorb an event published
twice (after the stream lost its tail and the relay re-published it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from aura_es.mirror.cloudevents import POSITION_HEADER, STORE_HEADER, TRANSACTION_HEADER
from aura_es.store.eventlog import Cursor

#: PostgreSQL's bigint: what a position or a transaction id can be.
MAX_BIGINT = 2**63 - 1
_DIGITS = re.compile(r"^[0-9]{1,19}$")


@dataclass(frozen=True)
class Origin:
    """A store's message: its place in that store's log, and the store (None for
    messages published before stores had ids)."""

    cursor: Cursor
    store: str | None


class Malformed(ValueError):
    """Headers that claim to be a store's but cannot be (say why)."""


def _bigint(name: str, value: str) -> int:
    if not _DIGITS.match(value) or int(value) > MAX_BIGINT:
        raise Malformed(f"its {name} header {value[:40]!r} is not a non-negative 64-bit"
                        " integer")
    return int(value)


def origin(headers: Mapping[str, str] | None) -> Origin | None:
    """The message's origin; None when it is foreign. ``Malformed`` for headers that
    name a position, store or transaction no store could have written."""
    headers = headers or {}
    position = headers.get(POSITION_HEADER)
    if position is None:
        return None
    transaction = headers.get(TRANSACTION_HEADER)
    store = headers.get(STORE_HEADER)
    if store is not None and not re.fullmatch(r"[0-9a-f-]{36}", store):
        raise Malformed(f"its {STORE_HEADER} header {store[:40]!r} is not a store id")
    return Origin(
        Cursor(_bigint(TRANSACTION_HEADER, transaction) if transaction is not None else 0,
               _bigint(POSITION_HEADER, position)),
        store,
    )


def fingerprint(headers: Mapping[str, str] | None, body: bytes) -> str:
    """What identifies one message at one stream sequence: its ``Nats-Msg-Id``, or for a
    message without one a digest of its body. A different fingerprint at the same
    sequence means the stream was rewritten there."""
    msg_id = (headers or {}).get("Nats-Msg-Id")
    if msg_id:
        return f"id:{msg_id[:200]}"
    return "sha256:" + hashlib.sha256(body).hexdigest()[:32]
