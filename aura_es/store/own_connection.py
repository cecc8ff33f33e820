"""One of the pool's connections, kept by the recorder for its appends between them.

A checkout from psycopg_pool (its lock, its queue, its statistics and log calls, our
liveness check) cost about 30 µs of a keyed command's client CPU next to a connection
held at hand, measured between two statements (issue 27): a sixth of the command. So
the recorder takes one connection from the pool at its first append and keeps it. It
stays counted by the pool, so a process opens no more connections than the pool's
bound (32 writer processes would otherwise need a third more server connections). One
thread at a time appends on it; a thread that finds it taken checks one out of the pool
as before, so concurrent appends still run in parallel.

It is checked before each use as the pool checks its own (``liveness.check``: a poll,
not a round trip). A dead one, one an append left broken or inside a transaction, and
one older than the pool's ``max_lifetime`` go back to the pool (which closes or renews
them) and another is taken: after a failover the next append finds the new primary as a
pooled connection would. A forked child never touches its parent's.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool

from aura_es import forks
from aura_es.store import liveness


class OwnConnection:
    """A pooled connection for one user at a time: ``take`` it (None when another
    thread holds it, or the pool is closed: check one out instead), ``give_back`` it
    after the append."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._since = 0.0
        self._generation = forks.generation()

    def take(self) -> psycopg.Connection[Any] | None:
        """The live connection, now this thread's; None when in use or the pool is
        closed. Raises ``psycopg.OperationalError`` (or the pool's ``PoolTimeout``, one
        of them) when no connection can be had."""
        if self._generation != forks.generation():
            # A forked child: the parent's socket and pool are not its own.
            self._conn, self._generation = None, forks.generation()
            self._lock = threading.Lock()
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._pool.closed:
                self._release()
                self._lock.release()
                return None
            conn = self._conn
            if conn is not None:
                try:
                    liveness.check(conn)
                    if time.monotonic() - self._since > self._pool.max_lifetime:
                        raise psycopg.OperationalError("past the pool's max_lifetime")
                except psycopg.Error:
                    self._release()
                    conn = None
            if conn is None:
                conn = self._pool.getconn()
                self._conn, self._since = conn, time.monotonic()
            return conn
        except BaseException:
            self._lock.release()
            raise

    def give_back(self, conn: psycopg.Connection[Any]) -> None:
        """Ends this thread's turn. A connection left broken, or inside a transaction,
        goes back to the pool (which closes it or rolls it back)."""
        try:
            # A broken connection's status is UNKNOWN: not idle either.
            if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                self._release()
        finally:
            self._lock.release()

    def close(self) -> None:
        """Returns it to the pool (before the pool closes)."""
        with self._lock:
            if self._generation == forks.generation():
                self._release()
            self._conn = None

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not self._pool.closed:
            self._pool.putconn(conn)
