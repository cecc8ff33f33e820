"""A reader that follows a busy log sees every commit within one pause, though writers
hold their NOTIFYs back for up to a wake interval (``store/following.py``).

A model of both sides on a virtual clock: each writing process sends its NOTIFYs as
``wakeup.Waker`` does (at once after a quiet interval, else at the end of it, covering
every commit before it); the reader runs the worker's loop (take the NOTIFYs that came,
read, wait for a NOTIFY for ``Follow.timeout``), each read seeing every commit made
before it. Its poll interval is long, so a commit that only a poll would find shows.
"""

from __future__ import annotations

import heapq
import threading
import time
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_es.app import AuraApp
from aura_es.catalog import load_catalog
from aura_es.db import connect
from aura_es.store import eventlog
from aura_es.store.following import FIRST_PAUSE_SECONDS, MAX_PAUSE_SECONDS, Follow
from aura_es.worker.shutdown import Shutdown
from aura_es.worker.worker import Worker
from tests.support.workers import CATALOG, positions, wait_for

DEBATES = "DebateStateProjection"

POLL_SECONDS = 5.0


def notify_times(commits: list[float], interval: float) -> list[float]:
    """When a waker with ``interval`` sends its NOTIFYs for ``commits`` (sorted)."""
    sent: list[float] = []
    last = -float("inf")
    i = 0
    while i < len(commits):
        at = max(commits[i], last + interval)
        sent.append(at)
        last = at
        while i < len(commits) and commits[i] <= at:  # cleared before sending: covered
            i += 1
    return sent


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def latencies(writers: list[list[float]], interval: float, read_seconds: float,
              delivery: float, make_follow: type[Follow] = Follow) -> list[float]:
    """How long after its commit the reader saw each commit."""
    commits = sorted(t for w in writers for t in w)
    arrivals = sorted(at + delivery for w in writers for at in notify_times(w, interval))
    heapq.heapify(arrivals)
    clock = Clock()
    follow = make_follow(interval, clock=clock)
    seen = 0
    out: list[float] = []
    while seen < len(commits):
        # The NOTIFYs that came meanwhile: the read about to start covers them.
        heard = False
        while arrivals and arrivals[0] <= clock.now:
            heapq.heappop(arrivals)
            heard = True
        if heard:
            follow.heard()
        # A read sees every commit made before it starts.
        follow.reading()
        new = 0
        while seen < len(commits) and commits[seen] <= clock.now:
            out.append(clock.now - commits[seen])
            seen += 1
            new += 1
        if new:
            follow.heard()
        clock.now += read_seconds
        # Caught up (a read takes every commit made before it): wait, as the worker does.
        timeout = follow.timeout(POLL_SECONDS)
        if arrivals and arrivals[0] <= clock.now + timeout:
            clock.now = max(clock.now, heapq.heappop(arrivals))
            follow.heard()
        else:
            clock.now += timeout
    return out


_times = st.lists(st.floats(min_value=0.0, max_value=3.0), max_size=40).map(sorted)


@settings(max_examples=300, deadline=None)
@given(writers=st.lists(_times, min_size=1, max_size=4),
       interval=st.floats(min_value=0.005, max_value=0.25),
       read_seconds=st.floats(min_value=0.0002, max_value=0.005),
       delivery=st.floats(min_value=0.0, max_value=0.002))
def test_every_commit_is_seen_within_a_pause_and_a_read(
    writers: list[list[float]], interval: float, read_seconds: float, delivery: float,
) -> None:
    bound = MAX_PAUSE_SECONDS + 2 * read_seconds + delivery + 1e-9
    worst = max(latencies(writers, interval, read_seconds, delivery), default=0.0)
    assert worst <= bound


def test_a_quiet_log_costs_a_reader_only_its_poll_interval() -> None:
    clock = Clock()
    follow = Follow(0.1, clock=clock)
    assert follow.timeout(POLL_SECONDS) == POLL_SECONDS
    follow.heard()
    pauses = []
    while follow.following:
        follow.reading()
        pauses.append(follow.timeout(POLL_SECONDS))
        clock.now += pauses[-1]
    assert pauses[0] == FIRST_PAUSE_SECONDS and max(pauses) == MAX_PAUSE_SECONDS
    assert len(pauses) <= 15  # a dozen reads after a burst, then the poll interval again
    assert follow.timeout(POLL_SECONDS) == POLL_SECONDS


def test_without_following_a_held_back_notify_would_be_waited_for() -> None:
    """The model can fail: a reader that never follows sees a held-back commit late."""

    class Deaf(Follow):
        def timeout(self, poll_seconds: float) -> float:
            return poll_seconds

    slow = latencies([[0.0, 0.01]], interval=0.1, read_seconds=0.001, delivery=0.0,
                     make_follow=Deaf)
    assert max(slow) >= 0.08


def test_a_worker_follows_a_busy_log_though_its_notifies_are_held_back(
    db_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real PostgreSQL, a real worker: the writer sends at most one NOTIFY a second, yet
    the worker applies each of a stream of appends well within it."""
    monkeypatch.setenv("AURA_ES_WAKE_INTERVAL_MS", "1000")
    app = AuraApp(db_url)
    spec = load_catalog(CATALOG).get(DEBATES)
    shutdown = Shutdown()
    worker = Worker(app.database_url, spec, shutdown, poll_seconds=30.0, wake_interval=1.0)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        with connect(app.database_url) as conn, connect(app.database_url) as listener:
            eventlog.listen(listener)

            def applied(position: int) -> bool:
                return positions(conn).get(DEBATES, 0) >= position

            first = app.execute(
                app.start_debate_command("warm", ["a"], idempotency_key=str(uuid4())))
            wait_for("the worker", lambda: applied(first.positions[-1]), 30)
            slowest = 0.0
            for i in range(10):
                started = time.monotonic()
                result = app.execute(app.start_debate_command(
                    f"t{i}", ["a"], idempotency_key=str(uuid4())))
                last = result.positions[-1]
                wait_for(f"append {i}", lambda: applied(last), 30)  # noqa: B023
                slowest = max(slowest, time.monotonic() - started)
            notifies = len(list(listener.notifies(timeout=0.01)))
    finally:
        shutdown.request()
        thread.join(30)
        app.close()
    assert slowest < 0.5
    assert notifies < 11, "the writer was meant to hold its NOTIFYs back (one per append)"
