"""After a restore: the erasures the stream recorded, made again in the store.

A backup older than an erasure still holds the subject's data key. The erasure events
(``aura.subject.erased.v1``) are mirrored onto the stream, which outlives the store, so
the stream is the ledger to re-apply: every subject it names is erased again here (one
``erase`` each, idempotent), unless this store never held data of theirs. An erasure
committed but not yet mirrored when the store was lost is on neither: docs/erasure.md
says what to keep for that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

import orjson
from nats.js.errors import NotFoundError

from aura_es.application import EventSourcedApp
from aura_es.erasure.erase import MAX_REASON, UnknownSubject, check_reason, erase
from aura_es.errors import DomainError
from aura_es.mirror.cloudevents import STORE_HEADER
from aura_es.mirror.stream import StreamSettings
from aura_es.mirror.verify import each_message
from aura_es.personal import ERASURE_TOPIC, check_subject

#: What a re-applied erasure's reason starts with (the original reason follows).
REAPPLIED = "re-applied from the stream: "


@dataclass
class Reapplied:
    #: Subjects erased now (their key was back, from the restored backup).
    erased: list[str] = field(default_factory=list)
    #: Subjects this store had erased already.
    already: list[str] = field(default_factory=list)
    #: Subjects this store holds no data of (their data came after the backup).
    unknown: list[str] = field(default_factory=list)
    #: How many names on the stream are not subject ids (a message someone else wrote);
    #: not shown: what they hold is unknown.
    refused: int = 0
    messages: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def erasures_on_stream(nats_url: str, stream: StreamSettings, store_id: UUID | None = None
                       ) -> tuple[dict[str, str], int]:
    """Each subject an erasure event on the stream names, with its first reason; and how
    many messages were read. With ``store_id``, only this store's erasures (a restored
    backup keeps its store's id; a message published before stores had ids names none).
    A stream that does not exist holds none."""
    try:
        return asyncio.run(_erasures(nats_url, stream, store_id))
    except NotFoundError:
        return {}, 0


async def _erasures(nats_url: str, stream: StreamSettings, store_id: UUID | None
                    ) -> tuple[dict[str, str], int]:
    found: dict[str, str] = {}
    messages = 0
    async for headers, body in each_message(nats_url, stream):
        messages += 1
        store = headers.get(STORE_HEADER)
        if store_id is not None and store is not None and store != str(store_id):
            continue  # another store's erasure: its subjects are not this store's
        if (erasure := erasure_in(body)) is not None:
            found.setdefault(*erasure)
    return found, messages


def erasure_in(body: bytes) -> tuple[str, str] | None:
    """(subject, reason) when ``body`` is the CloudEvent of an erasure; None for any
    other message, whatever it holds (a stream may carry others' messages)."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # not one of ours: the mirror publishes JSON CloudEvents
    if not isinstance(event, dict) or event.get("type") != ERASURE_TOPIC:
        return None
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("subject"), str):
        return None
    reason = data.get("reason")
    return data["subject"], reason if isinstance(reason, str) else ""


def reapply(app: EventSourcedApp, erasures: Mapping[str, str],
            progress: Callable[[str], None] | None = None) -> Reapplied:
    """Erases again every subject of ``erasures`` (subject -> original reason)."""
    done = Reapplied()
    for subject, reason in sorted(erasures.items()):
        try:
            check_subject(subject)
        except DomainError:
            done.refused += 1
            continue
        if progress:
            progress(subject)
        try:
            erasure = erase(app, subject, reason_for(reason))
        except UnknownSubject:
            done.unknown.append(subject)
            continue
        (done.already if erasure.already else done.erased).append(subject)
    return done


def reason_for(original: str) -> str:
    """The reason a re-applied erasure records, from the first one."""
    # The subject is erased again whatever its first reason was; one that cannot be
    # stored (too long, a NUL) is cut or left out, never a reason to keep the key.
    text = (REAPPLIED + (original or "-"))[:MAX_REASON]
    try:
        return check_reason(text)
    except DomainError:
        return REAPPLIED + "(the first reason could not be stored)"
