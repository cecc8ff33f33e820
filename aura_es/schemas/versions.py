"""Refusing stored events of a schema version newer than this code knows.

An event written by a newer deployment of its class cannot be upcast (upcasters only go
forward) and guessing its meaning would be a value silently changed. Every such event
fails alike until the newer code is deployed, so it is a systemic failure (the breaker
opens), never poison for the dead-letter queue.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Protocol

from eventsourcing.utils import resolve_topic

from aura_es.errors import EventVersionUnknown
from aura_es.schemas.generate import payload_version


class Versioned(Protocol):
    """What the check reads of a stored event (an ``EventEnvelope`` is one)."""

    @property
    def topic(self) -> str: ...

    @property
    def schema_version(self) -> int: ...

    @property
    def undecodable(self) -> str | None: ...


@functools.cache
def known_version(topic: str) -> int | None:
    """The highest schema version this code reads for ``topic`` (None: no class)."""
    try:
        return payload_version(resolve_topic(topic))
    except Exception:  # a topic without a loaded class: handlers read its raw payload
        return None


def require_known(events: Iterable[Versioned]) -> None:
    for event in events:
        if event.undecodable is not None or event.schema_version == 1:
            continue
        known = known_version(event.topic)
        if known is not None and event.schema_version > known:
            raise EventVersionUnknown(event.topic, event.schema_version, known)
