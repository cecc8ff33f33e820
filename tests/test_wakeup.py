"""Readers are woken after every append commits (the NOTIFY follows the commit), and one
NOTIFY may answer many appends but never one that committed after it was sent."""

from __future__ import annotations

import threading
import time
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.rows import tuple_row

from aura_es import AuraApp
from aura_es.errors import ConfigurationError
from aura_es.store import eventlog
from aura_es.store.factory import wake_interval
from aura_es.store.recorder import AuraRecorder
from aura_es.store.wakeup import MIN_INTERVAL_SECONDS, Waker


class _Recorder:
    """A send that notes how many commits had been reported when it started."""

    def __init__(self, fail_first: int = 0) -> None:
        self.commits = 0
        self.seen: list[int] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def commit(self, waker: Waker) -> None:
        with self.lock:
            self.commits += 1
        waker.committed()

    def send(self) -> None:
        with self.lock:
            self.seen.append(self.commits)
        time.sleep(0.001)  # a round trip, during which more commits arrive
        if self.fail_first > 0:
            self.fail_first -= 1
            raise ConnectionError("server went away")


@settings(max_examples=25, deadline=None)
@given(threads=st.integers(1, 8), per_thread=st.integers(1, 40), fail_first=st.integers(0, 2))
def test_every_commit_is_followed_by_a_notify(threads: int, per_thread: int,
                                              fail_first: int) -> None:
    recorder = _Recorder(fail_first)
    waker = Waker(recorder.send, min_interval=0.0005)

    def commits() -> None:
        for _ in range(per_thread):
            recorder.commit(waker)

    workers = [threading.Thread(target=commits) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert waker.flush(timeout=10)
    total = threads * per_thread
    # The last send started after the last commit, so it wakes readers for all of them
    # (a send that fails is logged; readers' polling covers it).
    assert recorder.seen[-1] == total
    assert len(recorder.seen) <= total  # never more NOTIFYs than appends
    assert recorder.seen == sorted(recorder.seen)


def test_a_failed_notify_does_not_stop_later_ones() -> None:
    recorder = _Recorder(fail_first=1)
    waker = Waker(recorder.send, min_interval=0.0005)
    recorder.commit(waker)
    assert waker.flush(timeout=5)
    recorder.commit(waker)
    assert waker.flush(timeout=5)
    assert recorder.seen[-1] == 2


def test_a_listening_reader_is_woken_by_each_append(app: AuraApp, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        eventlog.listen(listener)
        for _ in range(3):
            app.start_debate("t", ["a"], idempotency_key=str(uuid4()))
            woken = list(listener.notifies(timeout=5, stop_after=1))
            assert [n.channel for n in woken] == [eventlog.CHANNEL]


def test_a_wake_up_does_not_wait_for_the_disk_nor_leave_its_session_changed(
    app: AuraApp, db_url: str,
) -> None:
    """Through a transaction-pooling proxy a session-wide SET would reach other clients
    (their appends would stop waiting for the disk): the NOTIFY's setting is SET LOCAL."""
    app.start_debate("t", ["a"], idempotency_key=str(uuid4()))
    recorder = app.recorder
    assert isinstance(recorder, AuraRecorder)
    assert recorder.waker.flush(timeout=5)
    notifier = recorder._notifier
    assert notifier is not None
    with psycopg.connect(db_url, autocommit=True) as fresh:
        default = fresh.execute("SHOW synchronous_commit").fetchone()
    with notifier.cursor(row_factory=tuple_row) as cur:
        assert cur.execute("SHOW synchronous_commit").fetchone() == default
    assert notifier.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert b"SET LOCAL synchronous_commit = off" in recorder._notify.as_bytes(notifier)


def test_an_idle_waker_closes_its_connection_and_starts_again_on_the_next_commit() -> None:
    recorder = _Recorder()
    closed = threading.Event()
    waker = Waker(recorder.send, closed.set, idle_seconds=0.05)
    recorder.commit(waker)
    assert waker.flush(timeout=5)
    assert closed.wait(timeout=5)
    recorder.commit(waker)
    assert waker.flush(timeout=5)
    assert recorder.seen == [1, 2]


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(max_size=12), st.floats().map(str), st.integers().map(str)))
def test_any_wake_interval_setting_is_used_as_given_or_refused_in_one_line(value: str) -> None:
    try:
        seconds = wake_interval(value)
    except ConfigurationError as e:
        message = str(e)
        assert message.startswith(f"AURA_ES_WAKE_INTERVAL_MS={value!r} ") and "\n" not in message
        return
    if value:
        assert seconds * 1000 == pytest.approx(float(value))
        assert 0 <= seconds <= 1
    else:
        assert seconds == MIN_INTERVAL_SECONDS


def test_the_environment_sets_each_writers_wake_interval(db_url: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("AURA_ES_WAKE_INTERVAL_MS", "2.5")
    app = AuraApp(db_url)
    try:
        recorder = app.recorder
        assert isinstance(recorder, AuraRecorder)
        assert recorder.waker.min_interval == 0.0025
    finally:
        app.close()
    monkeypatch.setenv("AURA_ES_WAKE_INTERVAL_MS", "soon")
    with pytest.raises(ConfigurationError, match="AURA_ES_WAKE_INTERVAL_MS='soon'"):
        AuraApp(db_url)
