"""The standby guard: the relay publishes an event only once every streaming standby has
flushed it, so an asynchronous failover can never leave the stream holding an event the
new primary lacks (a phantom).

The events a read returned were committed before it; ``pg_current_wal_lsn()`` taken
after the read is at or past all their commit records. The relay waits until every
standby in ``pg_stat_replication`` reports ``flush_lsn`` at or past it. With no standby
streaming, there is nothing to wait for (a single server, as before). The cost is one
round trip to a standby per batch: measured in docs/benchmarks.md (failover).
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from aura_es.errors import ConfigurationError, ServiceUnavailable

_STATE = (
    "SELECT pg_current_wal_lsn(),"
    " count(*) FILTER (WHERE state = 'streaming'),"
    " count(*) FILTER (WHERE state = 'streaming' AND flush_lsn IS NULL)"
    " FROM pg_stat_replication"
)
_FLUSHED = (
    "SELECT count(*) FILTER (WHERE state = 'streaming' AND flush_lsn < %s::pg_lsn),"
    " count(*) FILTER (WHERE state = 'streaming')"
    " FROM pg_stat_replication"
)
#: Between looks at the standbys' progress: the flush usually follows in a millisecond.
POLL_SECONDS = 0.002


async def wait_until_standbys_have(conn: psycopg.AsyncConnection[Any],
                                   stop: asyncio.Event) -> None:
    """Returns once every streaming standby has flushed all that is committed now (or at
    once when none streams); returns early when ``stop`` is set."""
    cur = await conn.execute(_STATE)
    row = await cur.fetchone()
    assert row is not None
    lsn, streaming, hidden = row
    if not streaming:
        return
    if hidden:
        raise ConfigurationError(
            "the relay's database role cannot see its standbys' progress"
            " (pg_stat_replication.flush_lsn is hidden): grant it pg_monitor, or run"
            " `aura-es mirror run --no-standby-guard` and accept that a failover may"
            " leave events on the stream that the new primary lacks")
    delay = POLL_SECONDS
    while not stop.is_set():
        cur = await conn.execute(_FLUSHED, (str(lsn),))
        behind = await cur.fetchone()
        if behind is None or not behind[0] or not behind[1]:
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


def standbys_named_in(url_hosts: list[tuple[str, str]], connect: Any) -> list[str]:
    """Of the hosts a URL names, those that are standbys and do not stream from a primary
    (each as ``host:port``): a standby the relay would wait for in vain, or a typo."""
    lagging: list[str] = []
    for host, port in url_hosts:
        try:
            with connect(host, port) as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver)"
                ).fetchone()
        except (psycopg.Error, ServiceUnavailable):
            continue  # away (the old primary after a failover, say): nothing to check
        if row and row[0] and row[1] != "streaming":
            lagging.append(f"{host}:{port}")
    return lagging
