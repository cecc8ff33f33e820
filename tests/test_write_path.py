"""What the write path keeps between appends (issue 27), and why none of it goes stale:
the recorder's held connection, the append statements prepared on it, random ids.

Each is tested against what could make a cache wrong: a connection the server ended
(a failover, ``pg_terminate_backend``), a session that forgot its prepared statements
(``DEALLOCATE ALL``, what a pooler that moves sessions does), a changed table (DDL
between appends), a connection left inside a transaction, a forked process."""

from __future__ import annotations

import multiprocessing
import pickle
import re
import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid5

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es import forks
from aura_es.app import AuraApp
from aura_es.random_ids import random_uuid
from aura_es.store import idempotency
from aura_es.store.prepared import PreparedAppend

STEPS = st.lists(st.sampled_from(["append", "retry", "terminate", "deallocate",
                                  "add column", "drop column", "open transaction"]),
                 min_size=1, max_size=10)


def _stored(app: AuraApp, aggregate_id: UUID) -> list[tuple[int, int, str]]:
    with app.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "SELECT notification_id, originator_version, topic FROM aura_events"
            " WHERE originator_id = %s ORDER BY originator_version", (aggregate_id,))]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_appends_stay_right_whatever_happens_to_the_held_connection_between_them(
    small_app: AuraApp, steps: list[str],
) -> None:
    """Every append stores exactly its event and returns its position, and every retry
    returns the original, after the server ended the held connection, forgot its
    prepared statements, or had the events table changed under them."""
    app = small_app
    columns: list[str] = []
    try:
        _play(app, steps, columns)
    finally:
        with app.connect() as admin:
            for column in columns:
                admin.execute(f"ALTER TABLE aura_events DROP COLUMN {column}")


def _play(app: AuraApp, steps: list[str], columns: list[str]) -> None:
    done: list[tuple[str, Any]] = []
    for n, step in enumerate(steps):
        if step == "append" or (step == "retry" and not done):
            key = f"{random_uuid()}-{n}"
            result = app.execute(app.start_debate_command("t", ["a"], idempotency_key=key))
            assert not result.duplicate
            stored = _stored(app, result.aggregate_id)
            assert stored == [(result.positions[0], 1, "aura.debate.started.v1")]
            done.append((key, result))
        elif step == "retry":
            key, first = done[-1]
            again = app.execute(app.start_debate_command("t", ["a"], idempotency_key=key))
            assert again.duplicate and again.positions == first.positions
        elif step == "terminate":
            with app.connect() as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        elif step in ("deallocate", "open transaction"):
            held = app.recorder._own.take()  # type: ignore[attr-defined]
            if held is None or held.closed:
                continue
            try:
                if step == "deallocate":
                    # As psycopg itself does after a ROLLBACK or DDL on the connection.
                    # (Each time another text: psycopg checks a text's status only the
                    # first time it sees it, and would lose track of its own statements.)
                    held.execute(f"DEALLOCATE ALL /* {random_uuid()} */")
                else:
                    held.execute("BEGIN")  # left open: it must not reach the next append
            except psycopg.OperationalError:
                pass  # terminated just before: the next take replaces it
            finally:
                app.recorder._own.give_back(held)  # type: ignore[attr-defined]
        elif step == "add column":
            columns.append(f"extra_{random_uuid().replace('-', '_')}")
            with app.connect() as admin:
                admin.execute(f"ALTER TABLE aura_events ADD COLUMN {columns[-1]} text"
                              " DEFAULT 'x'")
        elif step == "drop column" and columns:
            with app.connect() as admin:
                admin.execute(f"ALTER TABLE aura_events DROP COLUMN {columns.pop()}")


def test_a_process_appends_on_no_more_connections_than_its_pool_holds(
    small_app: AuraApp,
) -> None:
    """The held connection is one of the pool's: appends from many threads at once,
    with duplicate lookups between them, never open more than the pool's bound (the
    pool's size and its overflow) and the waker's."""
    app = small_app
    peak = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal peak
        with app.connect() as admin:
            while not stop.is_set():
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                ).fetchone()
                peak = max(peak, int(row[0]) if row else 0)

    def write(worker: int) -> None:
        for i in range(40):
            key = f"w{worker}-{i % 30}"  # some retried: their lookups use the pool too
            app.execute(app.start_debate_command("t", ["a"], idempotency_key=key))

    counter = threading.Thread(target=count)
    counter.start()
    writers = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    counter.join()
    pool = app.factory.datastore.pool  # type: ignore[attr-defined]
    assert 1 <= peak <= pool.max_size + 1  # + the waker's
    with app.connect() as conn:
        row = conn.execute("SELECT count(*) FROM aura_events").fetchone()
    assert row == (6 * 30,)


def test_a_held_connection_left_in_a_transaction_goes_back_to_the_pool(
    small_app: AuraApp,
) -> None:
    app = small_app
    app.start_debate("t", ["a"], idempotency_key="first")
    own = app.recorder._own  # type: ignore[attr-defined]
    held = own.take()
    assert held is not None
    held.execute("BEGIN")
    own.give_back(held)
    again = own.take()
    try:  # the same connection, rolled back by the pool, or another: never in the transaction
        assert again is not None
        assert again.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        own.give_back(again)
    app.start_debate("t", ["a"], idempotency_key="second")


def test_a_statement_is_written_with_a_type_for_every_parameter() -> None:
    with pytest.raises(ValueError, match="%s::type"):
        PreparedAppend("SELECT %s, %s::text")
    with pytest.raises(ValueError, match="jsonb"):
        PreparedAppend("SELECT %s::jsonb")
    statement = PreparedAppend("SELECT %s::text, %s::bigint")
    assert statement.text == "SELECT $1::text, $2::bigint"


_KINDS: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], bytes]]] = {
    "text": (st.text(st.characters(codec="utf-8")), lambda v: v.encode()),
    "uuid": (st.uuids() | st.uuids().map(str), lambda v: UUID(str(v)).bytes),
    "bigint": (st.integers(-(2**63), 2**63 - 1), lambda v: v.to_bytes(8, "big", signed=True)),
    "integer": (st.integers(-(2**31), 2**31 - 1), lambda v: v.to_bytes(4, "big", signed=True)),
    "bytea": (st.binary(), bytes),
}


@settings(max_examples=200, deadline=None)
@given(data=st.data(), kinds=st.lists(st.sampled_from(sorted(_KINDS)), min_size=1, max_size=12))
def test_a_statements_parameters_are_encoded_each_by_its_kind(data: st.DataObject,
                                                               kinds: list[str]) -> None:
    """The encoding written out once per statement gives, parameter by parameter, the
    binary form of its declared type; a wrong count of parameters is refused."""
    statement = PreparedAppend("SELECT " + ", ".join(f"%s::{k}" for k in kinds))
    values = [data.draw(_KINDS[k][0]) for k in kinds]
    assert statement.encode(values) == [_KINDS[k][1](v) for k, v in zip(kinds, values, strict=True)]
    with pytest.raises(ValueError, match="parameters expected"):
        statement.encode([*values, values[0]])


_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@settings(max_examples=50, deadline=None)
@given(count=st.integers(min_value=1, max_value=600))
def test_random_ids_are_version_4_uuids_and_never_repeat(count: int) -> None:
    ids = [random_uuid() for _ in range(count)]
    for text in ids:
        assert _UUID4.match(text), text
        parsed = UUID(text)
        assert parsed.version == 4 and parsed.variant == "specified in RFC 4122"
        assert str(parsed) == text
    assert len(set(ids)) == count


@settings(max_examples=300, deadline=None)
@given(command_type=st.text(), tenant_id=st.text(), key=st.text())
def test_a_derived_aggregate_id_is_uuid5_of_its_name(command_type: str, tenant_id: str,
                                                      key: str) -> None:
    """A create's aggregate id, built without ``UUID.__init__``, is the uuid5 it always
    was: the same value, text, bytes, hash, version and ordering (a retry on another
    host, or after an upgrade, finds the aggregate its first attempt made)."""
    name = f"{command_type}:{tenant_id}:{key}"
    try:
        expected = uuid5(idempotency._ID_NAMESPACE, name)
    except UnicodeEncodeError:  # a lone surrogate: refused by the key checks before this
        with pytest.raises(UnicodeEncodeError):
            idempotency.derived_aggregate_id(command_type, tenant_id, key)
        return
    derived = idempotency.derived_aggregate_id(command_type, tenant_id, key)
    assert derived == expected and hash(derived) == hash(expected)
    assert (str(derived), derived.bytes, derived.version, derived.variant, derived.is_safe) == (
        str(expected), expected.bytes, expected.version, expected.variant, expected.is_safe)
    assert not derived < expected and not derived > expected
    assert UUID(str(derived)) == derived and pickle.loads(pickle.dumps(derived)) == expected


def _child_ids(queue: Any) -> None:
    queue.put([random_uuid() for _ in range(50)])


def test_a_forked_process_draws_other_ids_than_its_parent() -> None:
    random_uuid()  # the parent has unread random bytes when it forks
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_ids, args=(queue,))
    child.start()
    theirs = queue.get(timeout=30)
    child.join(timeout=30)
    ours = [random_uuid() for _ in range(50)]
    assert not set(ours) & set(theirs)


def _child_generations(queue: Any, noted: list[int]) -> None:
    mine = forks.generation()
    context = multiprocessing.get_context("fork")
    inner = context.Queue()
    grandchild = context.Process(target=lambda: inner.put(forks.generation()))
    grandchild.start()
    queue.put((mine, inner.get(timeout=30), mine not in noted))
    grandchild.join(timeout=30)


def test_a_forked_process_sees_a_generation_its_parent_never_noted() -> None:
    """What the kept connection and the waker compare instead of ``os.getpid()``: a
    child, and its own child, see a number no ancestor noted; the parent's is as it was."""
    noted = [forks.generation()]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_generations, args=(queue, noted))
    child.start()
    childs, grandchilds, new_in_child = queue.get(timeout=30)
    child.join(timeout=30)
    assert new_in_child and grandchilds not in (*noted, childs)
    assert forks.generation() == noted[0]


def test_threads_drawing_at_once_never_share_an_id() -> None:
    drawn: list[list[str]] = [[] for _ in range(4)]

    def draw(slot: int) -> None:
        drawn[slot].extend(random_uuid() for _ in range(3000))

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for ids in drawn for i in ids]
    assert len(set(everything)) == len(everything) == 12000


TEXTS = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                max_size=20)


@settings(max_examples=60, deadline=None)
@given(topic=TEXTS, participants=st.lists(TEXTS, min_size=1, max_size=4),
       tenant=TEXTS, model=TEXTS, tokens=st.integers(min_value=0, max_value=10**6))
def test_the_short_way_to_create_an_aggregate_gives_what_the_librarys_gives(
    topic: str, participants: list[str], tenant: str, model: str, tokens: int,
) -> None:
    """An aggregate created the short way (``aggregate.py``) has the state, the version
    and the pending event the library's general path gives it, field for field."""
    from uuid import uuid4

    from eventsourcing.domain import BaseAggregate

    from aura_es.domain.debate import Debate, DebateStarted
    from aura_es.domain.llm_call import LLMCall, LLMCallRequested

    cases: list[tuple[Any, Any, dict[str, Any]]] = [
        (Debate, DebateStarted, {"topic": topic, "participants": participants}),
        (LLMCall, LLMCallRequested, {"provider": tenant, "model": model,
                                     "prompt_tokens": tokens}),
    ]
    for cls, event_class, fields in cases:
        aggregate_id, meta = uuid4(), {"event_id": random_uuid(), "tenant_id": tenant}
        short = cls._create(event_class, id=aggregate_id, meta=dict(meta), **fields)
        general = BaseAggregate._create.__func__(  # type: ignore[attr-defined]
            cls, event_class, id=aggregate_id, meta=dict(meta), **fields)
        (ours,), (theirs,) = short.collect_events(), general.collect_events()
        assert type(short) is type(general) and type(ours) is type(theirs)
        timestamps = ("_created_on", "_modified_on")
        assert {k: v for k, v in vars(short).items() if k not in timestamps} == {
            k: v for k, v in vars(general).items() if k not in timestamps}
        assert short.created_on == ours.timestamp and short.modified_on == ours.timestamp
        assert {k: v for k, v in vars(ours).items() if k != "timestamp"} == {
            k: v for k, v in vars(theirs).items() if k != "timestamp"}
        # In the same order: the stored JSON's keys follow it.
        assert list(vars(ours)) == list(vars(theirs))


def test_an_aggregate_whose_init_takes_arguments_is_created_the_librarys_way() -> None:
    from uuid import uuid4

    from aura_es import AuraAggregate, AuraCreated

    class Opened(AuraCreated):
        TOPIC = "test.write_path.opened.v1"
        owner: str

        def apply(self, account: Any) -> None:
            account.opened = True

    class Account(AuraAggregate):
        TYPE = "test.write_path.account"

        def __init__(self, owner: str) -> None:
            self.owner = owner
            self.opened = False

    account = Account._create(Opened, id=uuid4(), owner="ann")
    assert (account.owner, account.opened, account.version) == ("ann", True, 1)


@settings(max_examples=60, deadline=None)
@given(arguments=st.lists(st.tuples(TEXTS, TEXTS, st.integers(min_value=1, max_value=9)),
                          min_size=1, max_size=5))
def test_the_short_way_to_trigger_an_event_gives_what_the_librarys_gives(
    arguments: list[tuple[str, str, int]],
) -> None:
    import copy
    from uuid import uuid4

    from eventsourcing.domain import BaseAggregate

    from aura_es.domain.debate import ArgumentAdded, Debate

    short = Debate.start(uuid4(), "t", ["a"])
    general = copy.deepcopy(short)
    for agent, text, round_ in arguments:
        fields = {"agent_id": agent, "position": "for", "text": text, "round": round_,
                  "meta": {"event_id": random_uuid()}}
        short.trigger_event(ArgumentAdded, **copy.deepcopy(fields))
        BaseAggregate.trigger_event(general, ArgumentAdded, **copy.deepcopy(fields))
    ours, theirs = short.collect_events(), general.collect_events()
    assert [type(e) for e in ours] == [type(e) for e in theirs]
    for mine, library in zip(ours, theirs, strict=True):
        assert {k: v for k, v in vars(mine).items() if k != "timestamp"} == {
            k: v for k, v in vars(library).items() if k != "timestamp"}
        assert list(vars(mine)) == list(vars(library))
    assert short.modified_on == ours[-1].timestamp
    assert {k: v for k, v in vars(short).items() if k != "_modified_on"} == {
        k: v for k, v in vars(general).items() if k != "_modified_on"}


def test_a_key_lookup_reads_no_table_scan_whatever_the_tables_statistics(db_url: str) -> None:
    """A retry's lookup (one key) and a batch's (many) find their keys by the index even
    when their plans were made on an empty, never analyzed table that has grown since:
    a generic plan made then, kept by a prepared statement, scanned the whole table on
    every lookup (a bulk load into a new store slowed sevenfold over 30,000 commands)."""
    from aura_es.dsn import parse_database_url
    from aura_es.store import idempotency
    from aura_es.store.prepared import PreparedAppend

    conninfo = parse_database_url(db_url).conninfo()
    hashes = [f"h{i:05d}" for i in range(3000)]
    # The recorder's lookup (``AuraRecorder.stored_keys``): the statement prepared on
    # the connection, run by libpq.
    lookup = PreparedAppend(idempotency.LOOKUP.as_string())
    with psycopg.connect(conninfo, autocommit=True) as conn:

        def stored(key_hashes: list[str]) -> dict[str, Any]:
            return idempotency.stored_in(conn, lookup.result(conn, (key_hashes,)))

        for _ in range(8):  # past PostgreSQL's five custom plans: the generic one is chosen
            assert stored(["nothing"]) == {}
            assert stored(["nothing", "else"]) == {}
        with psycopg.connect(conninfo, autocommit=True) as writer:
            writer.execute(
                "INSERT INTO aura_idempotency (key_hash, command_type, idempotency_key,"
                " aggregate_id, request_hash, from_version, to_version)"
                " SELECT h, 'c', h, gen_random_uuid(), 'r', 1, 1 FROM unnest(%s::text[]) h",
                (hashes,))
        conn.execute("BEGIN")  # the table's reads counted for this transaction only
        found_one = stored([hashes[7]])
        found_many = stored(hashes[100:200])
        row = conn.execute("SELECT coalesce(seq_tup_read, 0) FROM pg_stat_xact_user_tables"
                           " WHERE relname = 'aura_idempotency'").fetchone()
        conn.execute("COMMIT")
    assert list(found_one) == [hashes[7]]
    assert sorted(found_many) == hashes[100:200]
    assert row == (0,)


def test_a_statement_the_server_holds_but_the_client_lost_track_of_is_used(
    small_app: AuraApp,
) -> None:
    """An interrupt between preparing a statement and hearing the answer leaves the
    server holding what the client does not know of: preparing it again is not an
    error, and the append goes on."""
    app = small_app
    app.start_debate("t", ["a"], idempotency_key="first")
    own = app.recorder._own  # type: ignore[attr-defined]
    held = own.take()
    assert held is not None
    try:
        for statement in (app.recorder._prepared_one_with_key,  # type: ignore[attr-defined]
                          app.recorder._prepared_one,  # type: ignore[attr-defined]
                          app.recorder._look_up_keys):  # type: ignore[attr-defined]
            statement._held.discard(held)
    finally:
        own.give_back(held)
    result = app.execute(app.start_debate_command("t", ["a"], idempotency_key="second"))
    assert not result.duplicate and _stored(app, result.aggregate_id) == [
        (result.positions[0], 1, "aura.debate.started.v1")]
    retried = app.execute(app.start_debate_command("t", ["a"], idempotency_key="first"))
    assert retried.duplicate and retried.positions == (1,)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gt=st.none() | st.integers(min_value=-1, max_value=8),
       lte=st.none() | st.integers(min_value=-1, max_value=8),
       desc=st.booleans(), limit=st.none() | st.integers(min_value=0, max_value=8))
def test_an_aggregates_events_are_read_as_the_librarys_own_read_gives_them(
    small_app: AuraApp, gt: int | None, lte: int | None, desc: bool, limit: int | None,
) -> None:
    """The recorder's ``select_events`` (on its kept connection, one rendered statement
    per shape) returns what the library's gives for every combination of bounds."""
    from eventsourcing.postgres import PostgresAggregateRecorder

    app = small_app
    debate = app.start_debate("t", ["a"], idempotency_key="events-to-read")
    for n in range(len(_stored(app, debate)), 6):
        app.add_argument(debate, "agent-1", "for", f"point {n}", round=1,
                         idempotency_key=f"argument-{n}")
    kwargs: dict[str, Any] = {"gt": gt, "lte": lte, "desc": desc, "limit": limit}
    ours = app.recorder.select_events(debate, **kwargs)
    theirs = PostgresAggregateRecorder.select_events(app.recorder, debate, **kwargs)
    assert ours == theirs
    assert all(isinstance(e.state, bytes) for e in ours)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(aggregate_id=st.text(max_size=60) | st.uuids().map(str))
def test_an_aggregate_id_that_is_no_uuid_is_refused_as_the_librarys_read_refuses_it(
    small_app: AuraApp, aggregate_id: str,
) -> None:
    """Whatever text is given for an aggregate id (NUL, a huge one, a UUID's text), the
    recorder's read answers as the library's: the same events, or a DataError."""
    from eventsourcing.persistence import DataError
    from eventsourcing.postgres import PostgresAggregateRecorder

    app = small_app

    def read(how: Any) -> Any:
        try:
            return list(how(app.recorder, aggregate_id))
        except DataError:
            return DataError

    ours = read(type(app.recorder).select_events)
    theirs = read(PostgresAggregateRecorder.select_events)
    assert ours == theirs
