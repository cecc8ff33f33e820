"""Connections to NATS, tuned to notice a dead server in seconds, not minutes.

nats-py pings every 120 s by default: a server that died without closing its sockets
(a killed cluster node behind a dead link) would be noticed only after minutes. Here a
connection pings every 5 s and gives up on a server after two missed pings, then moves
to the next one of the list (``AURA_ES_NATS_URL`` may name every node of a cluster).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client

from aura_es.dsn import nats_servers, redact
from aura_es.errors import ServiceUnavailable

PING_SECONDS = 5
MAX_OUTSTANDING_PINGS = 2

ErrorCallback = Callable[[Exception], Awaitable[None]]


async def _quiet(_: Exception) -> None:
    """nats-py prints a traceback for every connection error; callers report their own."""


async def connect(url: str, *, error_cb: ErrorCallback | None = None,
                  forever: bool = True, **options: Any) -> Client:
    """Connected to one of the servers ``url`` lists; ``forever``: once connected, it
    reconnects for as long as it lives (a relay, a consumer), else it tries each server
    once (a one-shot command)."""
    defaults: dict[str, Any] = {
        "connect_timeout": 5, "ping_interval": PING_SECONDS,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS, "reconnect_time_wait": 0.5,
        # 1, not 0, for one attempt at each server: nats-py reads 0 as "for ever".
        "max_reconnect_attempts": -1 if forever else 1, "error_cb": error_cb or _quiet,
    }
    return await nats.connect(nats_servers(url), **{**defaults, **options})


async def check(url: str) -> None:
    """One clear error when none of the servers ``url`` lists answers."""
    try:
        nc = await connect(url, forever=False, allow_reconnect=False)
    except Exception as e:
        raise ServiceUnavailable(f"no NATS server answers at {redact(url)}:"
                                 f" {type(e).__name__}") from None
    with contextlib.suppress(Exception):
        await nc.close()
