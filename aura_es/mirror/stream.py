"""The JetStream stream: created if missing, never silently changed when it differs."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from aura_es.errors import ConfigurationError
from aura_es.mirror.cloudevents import POSITION_HEADER, STORE_HEADER, TRANSACTION_HEADER
from aura_es.store.eventlog import ORIGIN, Cursor

_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True)
class StreamSettings:
    name: str = "AURA_EVENTS"
    subject_prefix: str = "aura.events"
    replicas: int = 1
    max_age_seconds: float = 0.0  # 0: keep forever
    # Nats-Msg-Id dedup window: longer than any relay outage we recover from by retrying.
    duplicate_window_seconds: float = 120.0

    def __post_init__(self) -> None:
        if not _STREAM_NAME.match(self.name):
            raise ConfigurationError(
                f"stream name {self.name!r} is invalid: letters, digits, '_' and '-' only"
            )
        if not _SUBJECT_TOKEN.match(self.subject_prefix):
            raise ConfigurationError(f"subject prefix {self.subject_prefix!r} is invalid")
        if self.replicas < 1 or self.replicas > 5:
            raise ConfigurationError(f"replicas must be 1 to 5, got {self.replicas}")

    def config(self, atomic: bool) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            subjects=[f"{self.subject_prefix}.>"],
            storage=api.StorageType.FILE,
            num_replicas=self.replicas,
            max_age=self.max_age_seconds or None,
            duplicate_window=self.duplicate_window_seconds,
            allow_atomic=True if atomic else None,
        )


def _differences(want: api.StreamConfig, have: api.StreamConfig) -> list[str]:
    pairs: list[tuple[str, Any, Any]] = [
        ("subjects", want.subjects, have.subjects),
        ("storage", want.storage, have.storage),
        ("replicas", want.num_replicas, have.num_replicas),
        ("max_age", want.max_age or 0, have.max_age or 0),
    ]
    return [f"{name}: wanted {a!r}, the stream has {b!r}" for name, a, b in pairs if a != b]


def require_subjects(have: api.StreamConfig, settings: StreamSettings) -> None:
    """The stream takes the events' subjects, or a one-line error naming what it takes
    (a reader filtering on subjects the stream does not take gets a raw broker error)."""
    wanted = f"{settings.subject_prefix}.>"
    if wanted not in (have.subjects or []):
        taken = ", ".join(have.subjects or []) or "none"
        raise ConfigurationError(
            f"stream {settings.name!r} takes subjects {taken}, not {wanted}: pass the"
            " --subject-prefix it was created with")


#: JetStream's error code for "subjects overlap with an existing stream".
_SUBJECTS_OVERLAP = 10065
#: "insufficient resources" and "replicas > 1 not supported in non-clustered mode".
_TOO_MANY_REPLICAS = frozenset({10023, 10074})


async def ensure_stream(js: JetStreamContext, settings: StreamSettings, atomic: bool) -> bool:
    """Creates the stream if missing; returns whether atomic batches can be used."""
    want = settings.config(atomic)
    try:
        info = await js.stream_info(settings.name)
    except NotFoundError:
        try:
            await js.add_stream(want)
        except APIError as e:
            if e.err_code == _SUBJECTS_OVERLAP:
                raise ConfigurationError(await _overlap(js, settings)) from None
            if e.err_code in _TOO_MANY_REPLICAS:
                raise ConfigurationError(
                    f"cannot create stream {settings.name!r} with {settings.replicas}"
                    f" replicas: {e.description or 'the NATS servers cannot hold them'}"
                    " (give --replicas at most the number of JetStream servers)") from None
            raise
        return atomic
    diffs = _differences(want, info.config)
    if diffs:
        raise ConfigurationError(
            f"stream {settings.name!r} exists with another configuration ("
            + "; ".join(diffs) + "); change it yourself or choose another --stream"
        )
    return atomic and bool(info.config.allow_atomic)


async def _overlap(js: JetStreamContext, settings: StreamSettings) -> str:
    """Why the stream cannot be made: another stream takes its subjects (no retry helps)."""
    wanted = f"{settings.subject_prefix}.>"
    try:
        other = await js.find_stream_name_by_subject(wanted)
    except NotFoundError:
        other = "another stream"
    else:
        other = f"stream {other!r}"
    return (f"cannot create stream {settings.name!r}: its subjects {wanted} overlap those"
            f" of {other}; give this stream its own --subject-prefix")


@dataclass(frozen=True)
class Resume:
    """Where the relay goes on: the stream's last sequence (anyone's message), and the
    last global position of this store's own messages."""

    last_seq: int
    cursor: Cursor
    #: Messages after this store's last one that are not its own (skipped, reported).
    foreign: int = 0
    foreign_example: str | None = None
    #: The stream sequence and message id of this store's last message (0 and "": none).
    seq: int = 0
    msg_id: str = ""


#: Answers whether a message without a store id (published before stores had ids) is
#: this store's: given its position and message id, does the store hold that event?
IsOwnLegacy = Callable[[int, str], Awaitable[bool]]


async def resume_point(
    js: JetStreamContext, name: str, store_id: UUID, is_own_legacy: IsOwnLegacy,
    *, on_foreign: Callable[[int], None] | None = None,
) -> Resume:
    """Reads the stream backwards from its tail to this store's last message.

    Messages without the store's headers are foreign (anyone can publish on a subject
    the stream takes): they are counted and skipped, never read as "position 0", which
    would make the relay publish the whole store again. A message of another store is a
    ``ConfigurationError``: two stores may not share a stream.
    """
    info = await js.stream_info(name)
    last_seq = info.state.last_seq or 0
    first_seq = info.state.first_seq or 1
    foreign, example = 0, None
    seq = last_seq
    while seq >= first_seq and info.state.messages:
        try:
            message = await js.get_msg(name, seq)
        except NotFoundError:
            seq -= 1  # deleted or expired: nothing to learn from it
            continue
        headers = message.headers or {}
        position = _int(headers.get(POSITION_HEADER))
        owner = headers.get(STORE_HEADER)
        if owner is not None and position is not None:
            if owner != str(store_id):
                raise ConfigurationError(
                    f"stream {name!r} holds events of another store ({owner}, at stream"
                    f" sequence {seq}); this store is {store_id}: mirror it into its own"
                    " stream (--stream)"
                )
            transaction = _int(headers.get(TRANSACTION_HEADER)) or 0
            return Resume(last_seq, Cursor(transaction, position), foreign, example, seq,
                          headers.get("Nats-Msg-Id", ""))
        if position is not None and await is_own_legacy(position, headers.get("Nats-Msg-Id", "")):
            return Resume(last_seq, Cursor(0, position), foreign, example)
        if position is not None:
            raise ConfigurationError(
                f"stream {name!r} holds an event at stream sequence {seq} that this store"
                f" ({store_id}) does not have: another store's events are on it; mirror"
                " this store into its own stream (--stream)"
            )
        foreign += 1
        example = example or f"sequence {seq} on {message.subject!r}"
        if on_foreign is not None and foreign % 1000 == 0:
            on_foreign(foreign)
        seq -= 1
    return Resume(last_seq, ORIGIN, foreign, example)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
