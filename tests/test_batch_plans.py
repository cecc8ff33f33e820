"""A projection's batch reads the events after its cursor and stops: whatever the
planner knows of the table. A new topic, a bulk load or a topic grown since the last
ANALYZE once made PostgreSQL plan each batch as a scan of every row of the topic (or of
the whole table) and a sort, so a catch-up read the log once a batch. Measured here by
the heap blocks the batch's statement fetches (the backend's own counters: work, not
time), on a table that was never analyzed."""

from __future__ import annotations

from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es.store import eventlog
from aura_es.store.names import EVENTS_TABLE

EVENTS = 30_000
RARE = "tests:Rare"
COMMON = "tests:Common"
#: One event in RARE_EVERY is of the rare topic: spread over every page of the table.
RARE_EVERY = 20


def bulk_loaded(url: str) -> None:
    """Events written in one statement, and never analyzed (autovacuum off for the table)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {EVENTS_TABLE} SET (autovacuum_enabled = false)")
        conn.execute(
            f"INSERT INTO {EVENTS_TABLE} (originator_id, originator_version, topic, state)"
            " SELECT gen_random_uuid(), 1,"
            " CASE WHEN g %% %s = 0 THEN %s ELSE %s END,"
            " convert_to('{\"text\": \"' || repeat('x', 300) || '\"}', 'UTF8')"
            " FROM generate_series(1, %s) AS g", (RARE_EVERY, RARE, COMMON, EVENTS))


def heap_pages(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_relation_size(%s) / current_setting('block_size')::int",
                       (EVENTS_TABLE,)).fetchone()
    assert row is not None
    return int(row[0])


def blocks_fetched(cur: psycopg.Cursor[Any]) -> int:
    """Heap blocks of the events table this transaction has asked for so far."""
    row = cur.execute("SELECT pg_stat_get_xact_blocks_fetched(%s::regclass)",
                      (EVENTS_TABLE,)).fetchone()
    assert row is not None
    return int(row[0])


def in_log_order(conn: psycopg.Connection[Any], topics: list[str]) -> list[eventlog.Cursor]:
    return [eventlog.Cursor(int(t), int(p)) for t, p in conn.execute(
        f"SELECT transaction_id, notification_id FROM {EVENTS_TABLE} WHERE topic = ANY(%s)"
        " ORDER BY transaction_id, notification_id", (topics,))]


def test_a_batch_on_a_never_analyzed_table_reads_its_events_and_stops(db_url: str) -> None:
    bulk_loaded(db_url)
    with psycopg.connect(db_url) as conn:
        pages = heap_pages(conn)
        logs = {topics: in_log_order(conn, list(topics))
                for topics in [(RARE,), (COMMON,), (RARE, COMMON)]}
        conn.rollback()

        @settings(max_examples=15, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(topics=st.sampled_from(sorted(logs)), start=st.floats(0, 1),
               limit=st.integers(1, 100))
        def reads_its_batch_only(topics: tuple[str, ...], start: float, limit: int) -> None:
            log = logs[topics]
            at = min(int(start * len(log)), len(log) - 1)
            after = log[at - 1] if at else eventlog.ORIGIN
            with conn.transaction(), conn.cursor() as cur:
                before = blocks_fetched(cur)
                batch = eventlog.read_batch(cur, after, list(topics), limit)
                fetched = blocks_fetched(cur) - before
                planner = cur.execute("SELECT current_setting('enable_bitmapscan'),"
                                      " current_setting('enable_seqscan')").fetchone()
            assert [eventlog.Cursor.of(e) for e in batch.events] == log[at:at + limit]
            # Two visits an event at most (the topic's index scan checks the row's
            # visibility on a table never vacuumed, then the row is read by position),
            # plus the horizon's short read of the newest rows: never the table.
            assert fetched <= 2 * limit + 20 < pages, (fetched, pages)
            # A handler's SQL in the same transaction is planned as before the read.
            assert planner == ("on", "on")

        reads_its_batch_only()


def test_a_batch_read_outside_a_transaction_is_refused_not_planned_badly(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn, conn.cursor() as cur:
        try:
            eventlog.read_batch(cur, eventlog.ORIGIN, [RARE], 10)
        except psycopg.ProgrammingError as refused:
            assert "needs a transaction" in str(refused)
        else:
            raise AssertionError("a batch read in autocommit was planned without its settings")
