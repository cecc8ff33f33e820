"""G11: across a PostgreSQL failover (the standby promoted) and a restart, keyed commands
succeed without the caller retrying, and nothing acknowledged is lost or doubled
(synchronous replication). Private servers from the failover harness
(``aura_es.testing.cluster``), never the shared ones."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from aura_es import AuraApp, ServiceUnavailable
from aura_es.testing.cluster import PostgresPair

pytestmark = [pytest.mark.failover, pytest.mark.timeout(300)]


def stored_keys(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT idempotency_key FROM aura_idempotency ORDER BY idempotency_key")]


def test_a_keyed_command_rides_out_a_failover_without_the_caller_retrying(
    aura_pg_pair: PostgresPair,
) -> None:
    app = AuraApp(aura_pg_pair.url(), pool_size=2)
    try:
        first = app.start_debate("before", ["a"], idempotency_key="before")
        old = aura_pg_pair.kill_primary()
        # The standby is promoted a second later, while the command waits for it.
        promoter = threading.Timer(1.0, aura_pg_pair.promote_standby)
        promoter.start()
        started = time.monotonic()
        second = app.start_debate("after", ["a"], idempotency_key="after")
        waited = time.monotonic() - started
        promoter.join()
        assert aura_pg_pair.primary is not old
        assert app.get_debate(first).topic == "before"  # acknowledged before: kept
        assert app.get_debate(second).topic == "after"
        assert waited < app.outage_seconds
        # The same key again is the same command: answered, not stored twice.
        assert app.start_debate("after", ["a"], idempotency_key="after") == second
        assert stored_keys(aura_pg_pair.url()) == ["after", "before"]
    finally:
        app.close()


def test_a_restart_is_invisible_to_the_next_keyed_command(aura_pg_pair: PostgresPair) -> None:
    app = AuraApp(aura_pg_pair.url(), pool_size=2)
    try:
        debate = app.start_debate("t", ["a"], idempotency_key="k1")
        aura_pg_pair.restart(aura_pg_pair.primary, "fast")  # every pooled connection dies
        app.add_argument(debate, "a", "for", "after the restart", round=1,
                         idempotency_key="k2")
        assert app.get_debate(debate).arguments == 1
    finally:
        app.close()


def test_an_outage_longer_than_the_deadline_is_one_clear_error(
    aura_pg_pair: PostgresPair,
) -> None:
    app = AuraApp(aura_pg_pair.url(), pool_size=1)
    app.outage_seconds = 2.0
    try:
        app.start_debate("t", ["a"], idempotency_key="k1")
        aura_pg_pair.kill_primary()  # and no promotion: nobody takes writes
        with pytest.raises(ServiceUnavailable) as refused:
            app.start_debate("u", ["a"], idempotency_key="k2")
        assert "\n" not in str(refused.value)
    finally:
        app.close()
