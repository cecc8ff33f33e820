"""A long append (``store/chunked.py``: 64 events or more) goes in chunks, pipelined in
one transaction, its later events mapped while the server inserts the first (issue 27).

Whatever happens between its chunks, it is all or nothing: every event stored at the
returned positions, one block of them that no other append interleaves, or nothing
stored, and the connection it ran on comes back idle for the next append. Tried against
what can happen between chunks: an event that cannot be mapped, a chunk the server
refuses, an erased subject, prepared statements the server forgot (or kept), a backend
terminated mid-way, and another writer appending meanwhile."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es import AuraApp, InvalidPayload
from aura_es.store.chunked import CHUNKED_FROM, chunk_bounds
from aura_es.store.mapper import MappedLazily
from tests.support.ledger import open_ledger


def _rows(app: AuraApp, aggregate_id: UUID) -> list[tuple[int, int, str]]:
    with app.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "SELECT notification_id, originator_version, topic FROM aura_events"
            " WHERE originator_id = %s ORDER BY originator_version", (aggregate_id,))]


def _held_is_idle(app: AuraApp) -> None:
    """The recorder's kept connection is idle, out of pipeline mode, or gone (replaced
    at the next append): never left in the middle of an append."""
    own = app.recorder._own  # type: ignore[attr-defined]
    held = own.take()
    try:
        if held is not None and not held.closed:
            assert held.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert held.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
    finally:
        if held is not None:
            own.give_back(held)


def _during_mapping(app: AuraApp, at: int, action: Callable[[], None]) -> Callable[[], None]:
    """Runs ``action`` when the ``at``-th event of the next append is mapped (the write
    check is called once an event): a later chunk's events are mapped while the first
    chunks are already on the server. Returns the undo."""
    mapper = app.mapper
    check = mapper.check  # type: ignore[attr-defined]
    seen = 0

    def checked(cls: type, state: bytes, what: str) -> None:
        nonlocal seen
        seen += 1
        if seen == at:
            action()
        check(cls, state, what)

    mapper.check = checked  # type: ignore[attr-defined]
    return lambda: setattr(mapper, "check", check)


def test_chunks_cover_every_event_once_in_order() -> None:
    for count in range(1, 1000):
        bounds = chunk_bounds(count)
        assert [i for start, end in bounds for i in range(start, end)] == list(range(count))
        assert all(end > start for start, end in bounds)


_SLICES = st.builds(slice, st.none() | st.integers(-45, 45), st.none() | st.integers(-45, 45),
                   st.none() | st.integers(1, 5) | st.integers(-5, -1))


@given(count=st.integers(0, 40),
       asks=st.lists(st.one_of(st.integers(-45, 45), _SLICES), max_size=6))
def test_events_mapped_lazily_read_as_the_list_would_each_mapped_once(
    count: int, asks: list[int | slice],
) -> None:
    events: list[Any] = list(range(count))
    calls: list[Any] = []

    def to_stored(event: Any) -> StoredEvent:
        calls.append(event)
        return StoredEvent(UUID(int=event), 1, "t", b"")

    lazy = MappedLazily(events, to_stored)
    mapped = [StoredEvent(UUID(int=e), 1, "t", b"") for e in events]
    for ask in asks:
        if isinstance(ask, int) and not -count <= ask < count:
            with pytest.raises(IndexError):
                lazy[ask]
        elif isinstance(ask, slice):
            assert list(lazy[ask]) == mapped[ask]
        else:
            assert lazy[ask] == mapped[ask]
    assert list(lazy) == mapped and len(lazy) == count
    assert calls == events  # each once, in order


STEPS = st.lists(st.sampled_from(["long", "retry", "unmappable", "refused", "deallocate",
                                  "forgotten", "terminate", "meanwhile"]),
                 min_size=1, max_size=8)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS, sizes=st.lists(st.integers(CHUNKED_FROM - 1, 300), min_size=8, max_size=8))
def test_a_long_append_is_all_or_nothing_whatever_happens_between_its_chunks(
    small_app: AuraApp, steps: list[str], sizes: list[int],
) -> None:
    app = small_app
    done: list[tuple[str, list[float], Any]] = []
    for n, (step, size) in enumerate(zip(steps, sizes, strict=False)):
        amounts = [float(i) for i in range(size)]
        key = f"{uuid4()}-{n}"
        if step == "retry" and done:
            key, amounts, first = done[-1]
            again = app.execute(open_ledger(key, amounts))
            assert again.duplicate and again.positions == first.positions
        elif step == "unmappable":  # a late event cannot be stored: nothing is
            amounts[-1] = math.nan
            head = app.head_position()
            with pytest.raises(InvalidPayload, match="amount"):
                app.execute(open_ledger(key, amounts))
            assert app.head_position() == head
        elif step == "refused":  # a later chunk collides with a stored event: nothing is
            ledger_id = uuid4()
            with app.connect() as admin:
                admin.execute("INSERT INTO aura_events (notification_id, originator_id,"
                              " originator_version, topic, state) VALUES"
                              " (aura_reserve_positions(1), %s, %s, 't', '{}')",
                              (ledger_id, size))
            stored = [StoredEvent(ledger_id, v, "test.raw.v1", b"{}")
                      for v in range(1, size + 1)]
            with pytest.raises(IntegrityError):
                app.recorder.insert_events(stored)
            assert [v for _, v, _ in _rows(app, ledger_id)] == [size]
        else:
            undo = _disturb(app, step)
            try:
                result = app.execute(open_ledger(key, amounts))
            finally:
                undo()
            assert not result.duplicate
            rows = _rows(app, result.aggregate_id)
            assert [(p, v) for p, v, _ in rows] == list(
                zip(result.positions, range(1, size + 2), strict=True))
            block = range(result.positions[0], result.positions[0] + size + 1)
            assert list(result.positions) == list(block)  # one block, not interleaved
            assert app.load_aggregate(result.aggregate_id).total == sum(amounts)  # type: ignore[attr-defined]
            done.append((key, amounts, result))
        _held_is_idle(app)


def _disturb(app: AuraApp, step: str) -> Callable[[], None]:
    """What happens to the connection or the log while a later chunk is mapped."""
    if step == "meanwhile":  # another writer appends between the chunks
        def other() -> None:
            other_app = AuraApp(app.database_url, pool_size=1)
            try:
                other_app.start_debate("t", ["a"], idempotency_key=str(uuid4()))
            finally:
                other_app.close()
        return _during_mapping(app, 40, other)
    if step == "terminate":  # the backend ends mid-way: the append runs again, once
        def terminate() -> None:
            with app.connect() as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                              " AND state <> 'idle'")
        return _during_mapping(app, 40, terminate)
    own = app.recorder._own  # type: ignore[attr-defined]
    held = own.take()
    if held is not None and not held.closed:
        try:
            if step == "deallocate":  # the server forgot the statements: prepared again
                held.execute(f"DEALLOCATE ALL /* {uuid4()} */")
            elif step == "forgotten":  # the client forgot it holds them: used as they are
                for statement in app.recorder._chunked.statements:  # type: ignore[attr-defined]
                    statement.mark_held(held, False)
        finally:
            own.give_back(held)
    elif held is not None:
        own.give_back(held)
    return lambda: None


def test_a_long_append_racing_writers_keeps_its_block(small_app: AuraApp) -> None:
    """Writers appending from other connections throughout: each long append's events
    sit in one block of positions, in version order."""
    app = small_app
    stop = threading.Event()

    def write() -> None:
        other = AuraApp(app.database_url, pool_size=1)
        try:
            while not stop.is_set():
                other.start_debate("t", ["a"], idempotency_key=str(uuid4()))
        finally:
            other.close()

    writers = [threading.Thread(target=write) for _ in range(3)]
    for t in writers:
        t.start()
    try:
        for i in range(15):
            result = app.execute(open_ledger(f"race-{i}", [1.0] * 150))
            first = result.positions[0]
            assert list(result.positions) == list(range(first, first + 151))
            assert [p for p, _, _ in _rows(app, result.aggregate_id)] == list(result.positions)
    finally:
        stop.set()
        for t in writers:
            t.join()


def test_an_append_larger_than_the_sockets_buffers_is_stored_whole(
    small_app: AuraApp,
) -> None:
    """40 MB in 625 chunks: sends that cannot complete at once (the server still busy
    with the first chunks) are finished while its answers are read, and every event is
    stored, in one block."""
    aggregate_id = uuid4()
    state = b'{"pad": "' + b"x" * 2000 + b'"}'
    stored = [StoredEvent(aggregate_id, v, "test.raw.v1", state) for v in range(1, 20_001)]
    positions = small_app.recorder.insert_events(stored)
    assert positions is not None
    assert list(positions) == list(range(positions[0], positions[0] + 20_000))
    with small_app.connect() as conn:
        assert conn.execute("SELECT count(*), min(originator_version), max(originator_version)"
                            " FROM aura_events WHERE originator_id = %s",
                            (aggregate_id,)).fetchone() == (20_000, 1, 20_000)
    _held_is_idle(small_app)
