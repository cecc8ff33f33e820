"""One active worker per projection across all hosts: a Postgres session advisory lock.

The lock lives as long as the worker's connection: a worker that dies (SIGKILL, a lost
host) drops its connection and so the lock, and a standby polling for it takes over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from aura_es import locks
from aura_es.worker.shutdown import Shutdown

LOCK_NAMESPACE = "aura.projection:"


def try_lock(conn: psycopg.Connection[Any], name: str) -> bool:
    return locks.try_lock(conn, LOCK_NAMESPACE + name)


def wait_for_lock(
    conn: psycopg.Connection[Any],
    name: str,
    shutdown: Shutdown,
    *,
    poll_seconds: float = 0.5,
    while_waiting: Callable[[], None] | None = None,
) -> bool:
    """Blocks until this connection holds the lock (True) or shutdown is asked (False)."""
    while not shutdown.requested:
        if try_lock(conn, name):
            return True
        if while_waiting is not None:
            while_waiting()
        shutdown.wait(poll_seconds)
    return False
