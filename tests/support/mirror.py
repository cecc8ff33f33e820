"""Running the relay as a user does, and reading the stream, for the mirror tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import nats

from aura_es.db import connect
from tests.support.cli import aura
from tests.support.workers import ROOT, env_for


def start_relay(db_url: str, nats_url: str, stream: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aura_es.cli", "mirror", "run", "--nats-url", nats_url,
         "--stream", stream, "--subject-prefix", stream.lower(), *extra],
        env=env_for(db_url), cwd=ROOT, text=True, stderr=subprocess.PIPE,
    )


@contextlib.contextmanager
def running_relay(db_url: str, nats_url: str, stream: str,
                  *extra: str) -> Iterator[subprocess.Popen[str]]:
    """A relay for the block, stopped (SIGTERM) at its end whatever happened in it."""
    relay = start_relay(db_url, nats_url, stream, *extra)
    try:
        yield relay
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=60)


def verify(db_url: str, nats_url: str, stream: str) -> dict[str, Any]:
    result = aura("mirror", "verify", "--nats-url", nats_url, "--stream", stream,
                  "--subject-prefix", stream.lower(), "--json", env=env_for(db_url))
    assert result.returncode in (0, 1), result.stderr
    return dict(json.loads(result.stdout))


def publish(nats_url: str, subject: str, body: bytes,
            headers: dict[str, str] | None = None) -> None:
    """A message from someone else: a plain publish, no JetStream headers of ours."""
    async def send() -> None:
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().publish(subject, body, headers=headers)
        finally:
            await nc.close()
    asyncio.run(send())


def stream_messages(nats_url: str, stream: str) -> int:
    async def count() -> int:
        nc = await nats.connect(nats_url)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        finally:
            await nc.close()
    return asyncio.run(count())


def mirrored(db_url: str) -> int:
    with connect(db_url) as conn:
        row = conn.execute("SELECT coalesce(max(position), -1) FROM aura_mirror_progress"
                           ).fetchone()
        return int(row[0]) if row else -1


def head(db_url: str) -> int:
    with connect(db_url) as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM aura_events"
                           ).fetchone()
        return int(row[0]) if row else 0


def stop(relay: subprocess.Popen[str]) -> str:
    relay.send_signal(signal.SIGTERM)
    _, stderr = relay.communicate(timeout=30)
    assert relay.returncode == 0, stderr[-3000:]
    return stderr
