"""G9 for the mesh consumer: every store event applied exactly once, in stream order,
whatever fails around it: a handler failing (for a while, or for good), the process
SIGKILLed between apply and commit or right after the commit, two copies at once,
idle gaps, foreign and malformed messages, the same event published twice, and a
stream rewritten under the consumer (a cluster that lost its unsynced tail).

Real nats-server and PostgreSQL; consumers that are killed run in forked processes.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import nats
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aura_es.db import connect
from aura_es.mesh import Delivery, MeshConsumer, Subscription
from aura_es.mesh.origin import MAX_BIGINT, Malformed, origin
from aura_es.mesh.resume import first_after
from aura_es.retry import Backoff
from aura_es.store.eventlog import Cursor
from tests.support.mesh_consumer import (
    COUNTED,
    DIED_OF_FAULT,
    TABLE_DDL,
    Faults,
    block_sigterm,
    record,
    run,
)
from tests.support.mesh_stream import Published, StreamOfStore
from tests.support.workers import wait_for

FAST = Backoff(base=0.01, cap=0.04)
FORK = multiprocessing.get_context("fork")


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        try:
            return list(conn.execute(sql, args or None).fetchall())
        except psycopg.errors.UndefinedTable:
            return []


def checkpoint_seq(url: str, consumer: str) -> int:
    found = query(url, "SELECT stream_seq FROM aura_mesh_checkpoints WHERE consumer = %s",
                  consumer)
    return int(found[0][0]) if found else 0


def applied_ids(url: str, consumer: str) -> list[str]:
    return [r[0] for r in query(url, "SELECT event_id FROM mesh_applied WHERE consumer = %s"
                                     " ORDER BY n", consumer)]


def rejected_kinds(url: str, consumer: str) -> list[str]:
    return [r[0] for r in query(url, "SELECT kind FROM aura_mesh_rejected WHERE consumer = %s"
                                     " ORDER BY stream_seq", consumer)]


def in_process(url: str, store: StreamOfStore, name: str, handler: Callable[..., None],
               **options: Any) -> MeshConsumer:
    with connect(url) as conn:
        conn.execute(TABLE_DDL)
    return MeshConsumer(name, url, store.nats_url, [Subscription(COUNTED, 1, handler)],
                        stream=store.stream, subject_prefix=store.prefix,
                        **{"retry": FAST, **options})


def run_until(consumers: list[MeshConsumer], done: Callable[[], bool], timeout: float = 30,
              between: Callable[[], None] | None = None) -> None:
    """Runs the consumers until ``done()`` (checked in a thread: it queries the database)."""
    async def main() -> None:
        tasks = [asyncio.create_task(c.run()) for c in consumers]
        deadline = time.monotonic() + timeout
        try:
            while not await asyncio.to_thread(done):
                assert time.monotonic() < deadline, "the consumers did not get there in time"
                assert not any(t.done() for t in tasks), [t.exception() for t in tasks]
                if between is not None:
                    await asyncio.to_thread(between)
                await asyncio.sleep(0.05)
        finally:
            for c in consumers:
                c.stop.set()
            await asyncio.gather(*tasks)
    asyncio.run(main())


@pytest.fixture
def store(nats_url: str) -> Any:
    stream = StreamOfStore(nats_url, f"MO_{uuid4().hex[:8].upper()}")
    stream.create()
    yield stream
    stream.delete()


def caught_up(url: str, store: StreamOfStore, name: str) -> Callable[[], bool]:
    return lambda: checkpoint_seq(url, name) >= store.last_seq()


def test_a_batch_that_failed_four_times_loses_nothing(empty_db_url: str,
                                                      store: StreamOfStore) -> None:
    # The case: 328 events on the stream, the handler raising 4 times on one.
    events = [store.event(uuid4(), {"n": i}) for i in range(328)]
    store.publish(events)
    failures = Counter[str]()

    def handler(cur: psycopg.Cursor[Any], delivery: Delivery) -> None:
        if delivery.event_id == events[57].event_id and failures["x"] < 4:
            failures["x"] += 1
            raise RuntimeError("not yet")
        record(cur, "c", delivery)

    consumer = in_process(empty_db_url, store, "c", handler)
    run_until([consumer], caught_up(empty_db_url, store, "c"))
    assert failures["x"] == 4
    assert applied_ids(empty_db_url, "c") == [e.event_id for e in events]
    assert rejected_kinds(empty_db_url, "c") == []


def _child(db_url: str, nats_url: str, stream: str, name: str, faults: Faults) -> None:
    block_sigterm()
    try:
        run(db_url, nats_url, stream, name, faults)
    finally:
        os._exit(0)  # never the parent's atexit work, on the parent's sockets


HEALTHY = Faults()


def run_process(url: str, store: StreamOfStore, name: str, faults: Faults = HEALTHY,
                timeout: float = 30) -> int | None:
    """A forked consumer process until it dies of its fault (its exit code) or has read
    the whole stream (then it is stopped: None)."""
    process = FORK.Process(target=_child, args=(url, store.nats_url, store.stream, name,
                                                faults))
    process.start()
    try:
        wait_for("the consumer to die or catch up",
                 lambda: not process.is_alive() or caught_up(url, store, name)(),
                 timeout=timeout)
    except BaseException:
        process.kill()
        raise
    if not process.is_alive():
        process.join()
        return process.exitcode
    os.kill(process.pid or 0, signal.SIGTERM)
    process.join(timeout=30)
    if faults.die_after_commits and process.exitcode == DIED_OF_FAULT:
        # Its last commit both caught it up and fired its fault, before the SIGTERM.
        return DIED_OF_FAULT
    assert process.exitcode == 0, "a stopped consumer exits cleanly"
    return None


def test_a_consumer_killed_mid_batch_and_restarted_loses_nothing(
        empty_db_url: str, store: StreamOfStore) -> None:
    events = [store.event(uuid4(), {"n": i}) for i in range(120)]
    store.publish(events[:60])
    # SIGKILL-like exits in the middle of a batch (batches of 20), twice, with new
    # events arriving in between; then a healthy run.
    assert run_process(empty_db_url, store, "k", Faults(die_in_handler=27)) == DIED_OF_FAULT
    store.publish(events[60:90])
    assert run_process(empty_db_url, store, "k", Faults(die_in_handler=13)) == DIED_OF_FAULT
    store.publish(events[90:])
    assert run_process(empty_db_url, store, "k") is None
    assert applied_ids(empty_db_url, "k") == [e.event_id for e in events]


def test_an_idle_consumer_does_not_back_off(empty_db_url: str, store: StreamOfStore,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    first, later = store.event(uuid4(), {"n": 1}), store.event(uuid4(), {"n": 2})
    store.publish([first])
    consumer = in_process(empty_db_url, store, "idle", lambda cur, d: record(cur, "idle", d),
                          retry=Backoff(base=30.0, cap=30.0))
    published = False

    def after_idling() -> None:
        nonlocal published
        if not published and consumer.idle_polls >= 3:
            store.publish([later])
            published = True

    # Were an idle poll a failure, the first one would wait 30 s and this would time out.
    run_until([consumer], lambda: len(applied_ids(empty_db_url, "idle")) == 2, timeout=20,
              between=after_idling)
    assert consumer.idle_polls >= 3
    assert '"retrying"' not in capsys.readouterr().err



@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(timeout=st.floats(min_value=0.0001, max_value=0.003))
def test_an_empty_fetch_is_idle_however_its_timeout_runs_out(store: StreamOfStore,
                                                              timeout: float) -> None:
    """Against a real server, short timeouts: nats-py raises its own TimeoutError when
    nothing came, and Python's when its deadline ran out between its two requests
    (about a fifth of fetches at 0.5 ms here). Both are an idle poll: [] and no error."""
    from aura_es.mesh.reader import OrderedRead

    async def polls() -> list[list[Any]]:
        nc = await nats.connect(store.nats_url)
        try:
            read = OrderedRead(nc.jetstream(), store.stream, f"{store.prefix}.>", 1,
                               description="idle polls")
            await read.open()
            return [await read.batch(10, timeout) for _ in range(40)]
        finally:
            await nc.close()

    assert asyncio.run(polls()) == [[]] * 40

def test_poison_is_isolated_its_aggregate_parked_and_redelivered_in_order(
        empty_db_url: str, store: StreamOfStore) -> None:
    a, b = uuid4(), uuid4()
    events = [store.event(a, {"n": 1}), store.event(b, {"n": 2}),
              store.event(a, {"n": 3, "poison": True}), store.event(b, {"n": 4}),
              store.event(a, {"n": 5}), store.event(b, {"n": 6})]
    store.publish(events)
    fixed = False

    def handler(cur: psycopg.Cursor[Any], delivery: Delivery) -> None:
        if delivery.data.get("poison") and not fixed:
            raise ValueError("cannot handle this one")
        record(cur, "p", delivery)

    def consumer() -> MeshConsumer:
        return in_process(empty_db_url, store, "p", handler, max_retries=2)

    run_until([consumer()], caught_up(empty_db_url, store, "p"))
    ids = [e.event_id for e in events]
    # b never waits for a; a's later event is parked behind its poison one.
    assert applied_ids(empty_db_url, "p") == [ids[0], ids[1], ids[3], ids[5]]
    assert rejected_kinds(empty_db_url, "p") == ["poison", "parked"]
    reason = query(empty_db_url, "SELECT reason FROM aura_mesh_rejected WHERE kind = 'poison'")
    assert "failed on it 3 times: ValueError: cannot handle this one" in reason[0][0]
    # A new event of a is parked too, until the poison is redelivered.
    store.publish([later := store.event(a, {"n": 7})])
    run_until([consumer()], caught_up(empty_db_url, store, "p"))
    assert rejected_kinds(empty_db_url, "p") == ["poison", "parked", "parked"]
    with pytest.raises(ValueError):  # still failing: nothing changes
        asyncio.run(consumer().redeliver(a))
    assert rejected_kinds(empty_db_url, "p") == ["poison", "parked", "parked"]
    fixed = True
    assert asyncio.run(consumer().redeliver(a)) == 3
    assert applied_ids(empty_db_url, "p") == [*ids[:2], ids[3], ids[5], ids[2], ids[4],
                                              later.event_id]
    assert rejected_kinds(empty_db_url, "p") == []
    store.publish([last := store.event(a, {"n": 8})])  # a flows again
    run_until([consumer()], caught_up(empty_db_url, store, "p"))
    assert applied_ids(empty_db_url, "p")[-1] == last.event_id


def test_two_copies_apply_each_event_once_in_order(empty_db_url: str,
                                                   store: StreamOfStore) -> None:
    events = [store.event(uuid4(), {"n": i}) for i in range(400)]
    store.publish(events[:100])
    copies = [in_process(empty_db_url, store, "ha", lambda cur, d: record(cur, "ha", d),
                         batch_size=7) for _ in range(2)]
    rest = iter([events[100:200], events[200:300], events[300:]])

    def publish_more() -> None:
        for chunk in rest:
            store.publish(chunk)
            return

    run_until(copies, lambda: len(applied_ids(empty_db_url, "ha")) >= 400
              and caught_up(empty_db_url, store, "ha")(), between=publish_more)
    assert applied_ids(empty_db_url, "ha") == [e.event_id for e in events]
    assert sum(c.applied for c in copies) == 400


@pytest.mark.parametrize("waiting", [True, False])
def test_a_rewritten_stream_is_followed_by_the_stores_cursor(
        empty_db_url: str, store: StreamOfStore, waiting: bool) -> None:
    """The stream loses its tail (a cluster's unsynced writes) and the relay re-publishes
    it; the new stream also has a foreign message near its start, so sequences shift.
    The consumer resumes by cursor: it absorbs what it had read and applies what is new,
    whether it was waiting on the short stream when the tail came again, or started
    after it had (then it resumes right at the first new event)."""
    events = [store.event(uuid4(), {"n": i}) for i in range(30)]
    store.publish(events)

    def consumer() -> MeshConsumer:
        return in_process(empty_db_url, store, "rw", lambda cur, d: record(cur, "rw", d))

    run_until([consumer()], caught_up(empty_db_url, store, "rw"))
    store.delete()
    store.create()
    store.publish(events[:3])
    store.foreign()
    store.publish(events[3:10])  # what survived: fewer than the consumer had read
    newer = [store.event(uuid4(), {"n": 100 + i}) for i in range(10)]
    republished = False

    def relay_republishes() -> None:
        nonlocal republished
        if not republished:
            store.publish(events[10:], again=True)
            store.publish(newer)
            republished = True

    if not waiting:
        relay_republishes()
    resumed = consumer()

    def republish_once_idle() -> None:
        if resumed.idle_polls:
            relay_republishes()

    run_until([resumed], lambda: republished and caught_up(empty_db_url, store, "rw")(),
              between=republish_once_idle)
    assert applied_ids(empty_db_url, "rw") == [e.event_id for e in [*events, *newer]]
    assert resumed.absorbed == (20 if waiting else 0)
    # The foreign message sits before where the consumer resumed: resuming by the
    # store's cursor passes over it (it would never have been applied anyway).
    assert rejected_kinds(empty_db_url, "rw") == []


# -- the state machine -------------------------------------------------------------------

FAULTS = st.one_of(
    st.just(HEALTHY),
    st.builds(Faults, die_in_handler=st.integers(1, 40)),
    st.builds(Faults, die_after_commits=st.integers(1, 3)),
)


class MeshMachine(RuleBasedStateMachine):
    """Any interleaving of publishing (the store's events, some failing for a while or
    for good; foreign and malformed messages; events published twice) and consumer
    processes that die at any point between apply, commit and the next batch."""

    url: str
    nats_url: str

    def __init__(self) -> None:
        super().__init__()
        self.store = StreamOfStore(self.nats_url, f"MM_{uuid4().hex[:8].upper()}")
        self.store.create()
        self.name = f"m{uuid4().hex[:8]}"
        self.aggregates = [uuid4() for _ in range(3)]
        self.events: list[Published] = []
        self.foreign = self.malformed = 0

    @rule(kinds=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(
        ["ok", "ok", "ok", "flaky", "poison"])), min_size=1, max_size=12),
        same_transaction=st.booleans())
    def publish(self, kinds: list[tuple[int, str]], same_transaction: bool) -> None:
        batch = []
        for i, (aggregate, kind) in enumerate(kinds):
            data = {"poison": True} if kind == "poison" else {"flaky": 2} if kind == "flaky" else {}
            batch.append(self.store.event(self.aggregates[aggregate], data,
                                          new_transaction=not (same_transaction and i)))
        self.store.publish(batch)
        self.events.extend(batch)

    @rule()
    def publish_foreign(self) -> None:
        self.store.foreign()
        self.foreign += 1

    @rule(how=st.sampled_from(["huge_position", "not_json", "position_differs"]))
    def publish_malformed(self, how: str) -> None:
        event = self.store.event(uuid4(), {})
        headers, body = event.message.headers(), event.message.body
        if how == "huge_position":
            headers["Aura-Position"] = str(2**70)
        elif how == "not_json":
            body = b"\x00" + body
        else:
            body = json.dumps({**json.loads(body), "auraposition": 2**70}).encode()
        self.store.publish_raw([(body, headers)])
        self.malformed += 1

    @rule(which=st.integers(0, 10**6))
    def publish_again(self, which: int) -> None:
        if self.events:
            self.store.publish([self.events[which % len(self.events)]], again=True)

    @rule(faults=FAULTS)
    def consume(self, faults: Faults) -> None:
        run_process(self.url, self.store, self.name, faults)

    def expected(self) -> tuple[list[str], list[str]]:
        applied, held, kinds = [], set(), []
        for e in self.events:
            if e.aggregate_id in held:
                kinds.append("parked")
            elif e.data.get("poison"):
                held.add(e.aggregate_id)
                kinds.append("poison")
            else:
                applied.append(e.event_id)
        return applied, kinds

    @invariant()
    def applied_at_most_once_and_in_order(self) -> None:
        applied = applied_ids(self.url, self.name)
        expected, _ = self.expected()
        assert applied == expected[:len(applied)]

    def teardown(self) -> None:
        try:
            assert run_process(self.url, self.store, self.name) is None  # never a stall
            expected, kinds = self.expected()
            assert applied_ids(self.url, self.name) == expected
            found = Counter(rejected_kinds(self.url, self.name))
            assert found == Counter(kinds) + Counter(foreign=self.foreign,
                                                     invalid=self.malformed)
        finally:
            self.store.delete()


@pytest.mark.slow
def test_the_mesh_consumer_state_machine(empty_db_url: str, nats_url: str) -> None:
    MeshMachine.url, MeshMachine.nats_url = empty_db_url, nats_url
    MeshMachine.TestCase.settings = settings(
        max_examples=8, stateful_step_count=8, deadline=None,
        suppress_health_check=list(HealthCheck))
    MeshMachine.TestCase().runTest()


# -- pure logic --------------------------------------------------------------------------

HEADER_VALUES = st.one_of(st.text(max_size=30), st.integers(-10, 2**70).map(str),
                          st.just(str(MAX_BIGINT)), st.just(str(MAX_BIGINT + 1)))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["Aura-Position", "Aura-Transaction", "Aura-Store",
                                        "Nats-Msg-Id", "other"]), HEADER_VALUES))
def test_any_headers_give_an_origin_none_or_one_reason(headers: dict[str, str]) -> None:
    try:
        found = origin(headers)
    except Malformed as e:
        assert str(e).startswith("its ") and "\n" not in str(e)
        return
    if "Aura-Position" not in headers:
        assert found is None
        return
    assert found is not None
    assert 0 <= found.cursor.position <= MAX_BIGINT
    assert 0 <= found.cursor.transaction <= MAX_BIGINT
    assert found.cursor.position == int(headers["Aura-Position"])


class _Stored:
    def __init__(self, headers: dict[str, str] | None) -> None:
        self.headers, self.data = headers, b"{}"


class _Stream:
    """get_msg over a list of messages (None: deleted), as JetStream answers it."""

    def __init__(self, messages: list[dict[str, str] | None]) -> None:
        self.messages = messages
        self.gets = 0

    async def get_msg(self, stream: str, seq: int) -> _Stored:
        from nats.js.errors import NotFoundError

        self.gets += 1
        message = self.messages[seq - 1]
        if message is None:
            raise NotFoundError
        return _Stored(message)


@given(st.lists(st.sampled_from(["own", "own", "foreign", "deleted"]), max_size=60),
       st.integers(0, 80))
def test_resuming_by_cursor_finds_the_first_message_after_it(kinds: list[str],
                                                             target: int) -> None:
    messages: list[dict[str, str] | None] = []
    position = 0
    for kind in kinds:
        if kind == "own":
            position += 1
            messages.append({"Aura-Position": str(position), "Aura-Transaction": "7"})
        else:
            messages.append({} if kind == "foreign" else None)
    stream = _Stream(messages)
    found = asyncio.run(first_after(stream, "S", Cursor(7, target), 1,  # type: ignore[arg-type]
                                    len(messages)))
    # As a linear scan says: right after the last store message at or before the cursor.
    at_or_before = [seq for seq, m in enumerate(messages, 1)
                    if m and int(m.get("Aura-Position", target + 1)) <= target]
    assert found == (max(at_or_before) + 1 if at_or_before else 1)
    assert stream.gets <= 2 * len(messages) + 1

