"""The store stays an `eventsourcing` application recorder: the library's own contract
tests run against ours, appending without the lock and with it (``serial``), on a fresh
database each; and the library's position reader is gap-safe in the serial mode that
docs/guarantees.md tells its users to choose."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.tests.persistence import (
    ApplicationRecorderTestCase,
    NonInterleavingNotificationIDsBaseCase,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es import AuraApp
from aura_es.dsn import parse_database_url
from aura_es.errors import ConfigurationError
from aura_es.store.recorder import SERIAL_LOCK_TIMEOUT_SECONDS, AuraRecorder, SerialLockTimeout
from aura_es.testing.servers import PostgresServer


class _FreshDatabase:
    """Each test gets a database of its own, its tables made by the recorder itself."""

    serial = False
    _datastores: list[PostgresDatastore]
    _url: str

    @pytest.fixture(autouse=True)
    def _database(self, pg_server: PostgresServer) -> Iterator[None]:
        name = pg_server.create_database()
        self._url = pg_server.url_for(name)
        self._datastores = []
        yield
        for datastore in self._datastores:
            datastore.close()
        pg_server.drop_database(name)

    def create_recorder(self) -> AuraRecorder:
        recorder = AuraRecorder(_datastore(self._url), serial=self.serial)
        self._datastores.append(recorder.datastore)
        recorder.create_table()
        return recorder


def _datastore(url: str) -> PostgresDatastore:
    pg = parse_database_url(url)
    datastore = PostgresDatastore(
        pg.dbname, pg.host, pg.port, pg.user, pg.password, pool_size=12, max_overflow=4)
    kwargs = datastore.pool.kwargs
    assert isinstance(kwargs, dict)
    kwargs.update(pg.connect_kwargs())
    return datastore


class TestRecorderContract(_FreshDatabase, ApplicationRecorderTestCase[AuraRecorder]):
    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestSerialRecorderContract(TestRecorderContract):
    serial = True


class TestNonInterleavingPositions(_FreshDatabase, NonInterleavingNotificationIDsBaseCase):
    pass


class TestSerialNonInterleavingPositions(_FreshDatabase, NonInterleavingNotificationIDsBaseCase):
    serial = True


def _appends(recorder: AuraRecorder, sizes: list[int]) -> None:
    for n in sizes:
        originator = uuid4()
        recorder.insert_events([
            StoredEvent(originator_id=originator, originator_version=v, topic="t", state=b"{}")
            for v in range(1, n + 1)])


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=st.lists(st.lists(st.integers(1, 20), min_size=5, max_size=30),
                        min_size=4, max_size=10))
def test_the_library_reader_misses_nothing_when_appends_are_serial(
    pg_server: PostgresServer, batches: list[list[int]],
) -> None:
    name = pg_server.create_database()
    recorder = AuraRecorder(_datastore(pg_server.url_for(name)), serial=True)
    try:
        recorder.create_table()
        writers = [threading.Thread(target=_appends, args=(recorder, sizes))
                   for sizes in batches]
        for w in writers:
            w.start()
        seen: list[int] = []
        last = 0

        def read() -> int:
            batch = recorder.select_notifications(last, 100, inclusive_of_start=False)
            seen.extend(n.id for n in batch)
            return batch[-1].id if batch else last

        while any(w.is_alive() for w in writers):
            last = read()
        while (moved := read()) != last:
            last = moved
        stored = [n.id for n in recorder.select_notifications(None, 100_000)]
        assert len(stored) == sum(map(sum, batches))
        assert seen == stored  # every one, once, in order
    finally:
        recorder.datastore.close()
        pg_server.drop_database(name)


def test_serial_appends_come_from_the_app_or_the_environment(
    db_url: str, monkeypatch: Any,
) -> None:
    def serial(app: AuraApp) -> bool:
        recorder = app.recorder
        assert isinstance(recorder, AuraRecorder)
        return recorder.serial

    for setting, expected in [(None, False), ("yes", True), ("0", False)]:
        if setting is not None:
            monkeypatch.setenv("AURA_ES_SERIAL_APPENDS", setting)
        app = AuraApp(db_url)
        assert serial(app) is expected
        app.close()
    monkeypatch.delenv("AURA_ES_SERIAL_APPENDS")
    with_attribute = type("SerialApp", (AuraApp,), {"serial_appends": True})(db_url)
    assert serial(with_attribute)
    with_attribute.close()
    monkeypatch.setenv("AURA_ES_SERIAL_APPENDS", "sometimes")
    with pytest.raises(ConfigurationError, match="AURA_ES_SERIAL_APPENDS='sometimes'"):
        AuraApp(db_url)


def test_a_serial_writer_waits_for_the_lock_once_and_at_most_its_bound(db_url: str) -> None:
    """docs/guarantees.md: in serial mode a writer waits at most 10 s for the events
    table's lock; the wait is not retried three times over (90 s before the fix)."""
    app = type("SerialApp", (AuraApp,), {"serial_appends": True})(db_url)
    holder = psycopg.connect(db_url)
    try:
        holder.execute("LOCK TABLE aura_events IN EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(SerialLockTimeout, match="not free within 10 s"):
            app.start_debate("locked out", ["a"], idempotency_key="serial-wait")
        waited = time.monotonic() - started
        # One wait of 10 s; a retried one would take 30 s at least.
        assert SERIAL_LOCK_TIMEOUT_SECONDS <= waited < 2 * SERIAL_LOCK_TIMEOUT_SECONDS
        holder.rollback()
        debate = app.start_debate("locked out", ["a"], idempotency_key="serial-wait")
        assert app.get_debate(debate).topic == "locked out"  # nothing half-written before
    finally:
        holder.close()
        app.close()
