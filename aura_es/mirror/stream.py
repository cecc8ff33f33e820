"""The JetStream stream: created if missing, never silently changed when it differs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from aura_es.errors import ConfigurationError
from aura_es.mirror.cloudevents import POSITION_HEADER

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


async def ensure_stream(js: JetStreamContext, settings: StreamSettings, atomic: bool) -> bool:
    """Creates the stream if missing; returns whether atomic batches can be used."""
    want = settings.config(atomic)
    try:
        info = await js.stream_info(settings.name)
    except NotFoundError:
        await js.add_stream(want)
        return atomic
    diffs = _differences(want, info.config)
    if diffs:
        raise ConfigurationError(
            f"stream {settings.name!r} exists with another configuration ("
            + "; ".join(diffs) + "); change it yourself or choose another --stream"
        )
    return atomic and bool(info.config.allow_atomic)


async def tail(js: JetStreamContext, name: str) -> tuple[int, int]:
    """(last stream sequence, last mirrored global position); (0, 0) for an empty stream."""
    info = await js.stream_info(name)
    last_seq = info.state.last_seq or 0
    if not info.state.messages:
        return last_seq, 0
    message = await js.get_msg(name, last_seq)
    headers = message.headers or {}
    return last_seq, int(headers.get(POSITION_HEADER, 0))
