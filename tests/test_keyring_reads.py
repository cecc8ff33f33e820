"""How often an aggregate's load reads its subjects' keys, on a real PostgreSQL: a key
read from its row is trusted for READ_TTL_SECONDS from that read (never longer, so an
erasure elsewhere is seen within it), and a load of many aggregates reads the keys it
lacks in one query. Before, a key cached longer ago than the TTL was read again for
every event of its subject, each read a query on a pooled connection (93% of a bulk
load of personal events)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es.app import AuraApp
from aura_es.db import connect
from aura_es.masterkey import MASTER_KEY, LocalKeyProvider, parse_key
from aura_es.store import keystore
from aura_es.store.keyring import READ_TTL_SECONDS, Keyring

SUBJECTS = [f"user-{i}" for i in range(3)]


class Clock:
    """The keyring's monotonic clock, moved by the test (no waiting out a TTL)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    ticking = Clock()
    # The keyring's own view of the time module only: the pool's and the driver's clocks
    # keep running.
    monkeypatch.setattr("aura_es.store.keyring.time", SimpleNamespace(monotonic=ticking))
    return ticking


@pytest.fixture
def key_reads(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The subjects of every query of the key table, in order."""
    reads: list[list[str]] = []
    real = keystore.wrapped_keys

    def counted(cur: psycopg.Cursor[Any], subjects: list[str], **kwargs: Any) -> Any:
        reads.append(list(subjects))
        return real(cur, subjects, **kwargs)

    monkeypatch.setattr(keystore, "wrapped_keys", counted)
    return reads


@pytest.fixture
def new_ring(db_url: str) -> Callable[[], Keyring]:
    """A keyring of its own (an empty cache) on the test's store."""
    def connection() -> psycopg.Connection[Any]:
        return connect(db_url)

    provider = LocalKeyProvider(parse_key(os.environ[MASTER_KEY], MASTER_KEY))
    return lambda: Keyring(provider, connect=connection)


STEPS = st.lists(st.tuples(st.floats(0, 2.5 * READ_TTL_SECONDS, allow_nan=False),
                           st.sampled_from(SUBJECTS)), min_size=1, max_size=12)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_a_key_is_read_again_only_once_its_last_read_is_older_than_the_ttl(
        new_ring: Callable[[], Keyring], clock: Clock, key_reads: list[list[str]],
        steps: list[tuple[float, str]]) -> None:
    ring = new_ring()
    for subject in SUBJECTS:
        ring.for_writing(subject)  # made (or read) now: trusted from here
    last_read = dict.fromkeys(SUBJECTS, clock.now)
    key_reads.clear()
    for wait, subject in steps:
        clock.now += wait
        before = len(key_reads)
        key = ring.for_reading([subject])[subject]
        assert key is not None
        expected_read = clock.now - last_read[subject] > READ_TTL_SECONDS
        assert (len(key_reads) > before) == expected_read, (wait, subject, last_read)
        if expected_read:
            last_read[subject] = clock.now


def test_a_load_of_many_aggregates_reads_the_keys_it_lacks_in_one_query(
        app: AuraApp, clock: Clock, key_reads: list[list[str]]) -> None:
    debates = []
    for i, subject in enumerate(SUBJECTS * 2):
        debate = app.start_debate(f"t{i}", ["agent-1"], idempotency_key=f"d{i}")
        for round_ in (1, 2):
            app.add_argument(debate, "agent-1", "pro", f"{subject} says {round_}",
                             round=round_, idempotency_key=str(uuid.uuid4()),
                             subject=subject)
        debates.append(debate)
    clock.now += 2 * READ_TTL_SECONDS  # every key the writes cached is stale now
    key_reads.clear()
    loaded = app.load_aggregates(debates)
    assert sorted(loaded) == sorted(debates)
    assert [sorted(subjects) for subjects in key_reads] == [sorted(SUBJECTS)]
    again = app.load_aggregates(debates)  # within the TTL of that read
    assert len(key_reads) == 1
    assert {d: a.version for d, a in again.items()} == {d: a.version for d, a in loaded.items()}


def test_an_erasure_elsewhere_is_seen_once_a_ttl_has_passed_since_the_last_read(
        new_ring: Callable[[], Keyring], clock: Clock, db_url: str,
        key_reads: list[list[str]]) -> None:
    """A read refreshes a key's trust, a cached answer does not: an erasure committed by
    another process is seen at the first read a TTL after the key was last read."""
    ring = new_ring()
    ring.for_writing("user-0")
    clock.now += 0.6 * READ_TTL_SECONDS
    assert ring.for_reading(["user-0"])["user-0"] is not None  # cached: trust not extended
    with connect(db_url) as other, other.cursor() as cur:
        keystore.mark_erased(cur, "user-0", b"proof")
    clock.now += 0.3 * READ_TTL_SECONDS
    assert ring.for_reading(["user-0"])["user-0"] is not None  # within the TTL of its read
    assert key_reads == []
    clock.now += 0.2 * READ_TTL_SECONDS
    assert ring.for_reading(["user-0"])["user-0"] is None
    assert key_reads == [["user-0"]]
