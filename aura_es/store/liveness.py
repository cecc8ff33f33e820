"""Is a pooled connection still alive? Asked at every checkout, for the price of a poll().

After a restart or a failover every pooled connection is dead. psycopg_pool's own check
sends a query (a round trip) at every checkout to find out: on two cores, a tenth of a
keyed command's client CPU and a round trip of its latency. But a server that ends a
session says so: it sends a FATAL message (a restart, `pg_terminate_backend`) or at least
closes the socket (a crash), and either makes the idle connection's socket readable. So
the round trip is made only when the socket has something to say; a link that died
silently (a partition) is found by the command's own failure and ridden out like any
outage (``commands.through_outages``).
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool


def check(conn: psycopg.Connection[Any]) -> None:
    """psycopg_pool's ``check``: raises when the connection is dead."""
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK:  # closed, or broken
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([pgconn.socket], [], [], 0)
    if readable:  # a goodbye, or a message nobody asked for: ask properly
        ConnectionPool.check_connection(conn)
