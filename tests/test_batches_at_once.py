"""G1 and G2 for a batch saved at once (``execute_many``, issue 27): its keys looked up
first, then one pipelined transaction inserts each command's key row while the next are
decided, then the events; a key already stored makes the batch run the careful way
(duplicates answered from the keys the first lookup found). Whichever way a batch went,
each command is stored once and answered as it would be alone; a batch all of whose keys
are new went at once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es import AuraApp, CommandResult, DomainError
from aura_es.application import EventSourcedApp
from aura_es.commands import Command
from aura_es.store.at_once import AppendAtOnce
from aura_es.store.recorder import AuraRecorder
from tests.support.commands import empty, stored_events

CALLS = 8


def reset(app: AuraApp) -> list[uuid.UUID]:
    """An empty store but for ``CALLS`` LLM calls requested (for the updates)."""
    empty(app)
    return [app.request_llm_call("acme", "p", "m", 10, idempotency_key=f"call-{i}")
            for i in range(CALLS)]


@dataclass(frozen=True)
class Op:
    kind: str  # "debate" (a create) | "complete" (an update of one of the calls)
    key: int


def to_command(app: AuraApp, op: Op, calls: list[uuid.UUID]) -> Command:
    if op.kind == "debate":
        return app.start_debate_command(f"topic {op.key}", ["a"],
                                        idempotency_key=f"debate-{op.key}")
    # One key per call: the same "complete" again is a retry, never a second completion.
    return app.complete_llm_call_command(calls[op.key], 5, Decimal("0.01"), 12.0,
                                         idempotency_key=f"complete-{op.key}")


batch_ops = st.lists(
    st.one_of(st.builds(Op, kind=st.just("debate"), key=st.integers(0, 60)),
              st.builds(Op, kind=st.just("complete"), key=st.integers(0, CALLS - 1))),
    min_size=1, max_size=70,
)


class AtOnceOutcomes(list[AppendAtOnce]):
    def appended(self) -> list[bool]:
        """For each at-once transaction opened, whether the batch was appended in it."""
        return [at_once.appended for at_once in self]


@contextmanager
def batches_saved_at_once() -> Iterator[AtOnceOutcomes]:
    """The at-once transactions the batches run meanwhile opened."""
    opened = AtOnceOutcomes()
    original = AppendAtOnce.__init__

    def init(self: AppendAtOnce, *args: Any) -> None:
        original(self, *args)
        opened.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AppendAtOnce, "__init__", init)
        yield opened


@contextmanager
def lookups() -> Iterator[list[list[str]]]:
    """The keys each lookup of the careful way asked for, meanwhile."""
    asked: list[list[str]] = []
    original = EventSourcedApp.stored_keys

    def stored_keys(self: EventSourcedApp, key_hashes: list[str]) -> dict[str, Any]:
        asked.append(key_hashes)
        return original(self, key_hashes)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EventSourcedApp, "stored_keys", stored_keys)
        yield asked


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=st.lists(batch_ops, min_size=1, max_size=4))
def test_a_batch_stores_each_command_once_and_goes_at_once_when_its_keys_are_new(
    app: AuraApp, batches: list[list[Op]]
) -> None:
    """Batches up to 70 commands (so key rows go to the server in several statements
    while the batch is decided), creates and updates, keys repeated within a batch and
    across batches at any position: every result is the command's alone (a first run
    stored once, a retry its original result), and a batch went at once exactly when
    none of its keys was stored before it; a batch sent again answered its duplicates
    from what its first lookup found, with no lookup more."""
    calls = reset(app)
    first: dict[Op, CommandResult] = {}
    for ops in batches:
        all_new = not any(op in first for op in ops)
        with batches_saved_at_once() as at_once, lookups() as looked_up:
            results = app.execute_many([to_command(app, op, calls) for op in ops])
        assert at_once.appended() == [all_new]
        assert looked_up == []
        for op, result in zip(ops, results, strict=True):
            if op in first:
                assert result == CommandResult(**{**first[op].__dict__, "duplicate": True})
            else:
                assert not result.duplicate
                assert result.positions and len(result.positions) == (
                    result.to_version - result.from_version + 1)
                first[op] = result
    assert stored_events(app) == CALLS + len(first)
    for op, result in first.items():
        if op.kind == "complete":
            assert app.get_llm_call(calls[op.key]).version == result.to_version


def test_a_batch_a_command_of_which_is_refused_stores_only_what_ran_before_it(
    app: AuraApp,
) -> None:
    """A decide refused in the middle of a batch (a call completed twice under two
    keys): the at-once transaction rolls back, and the batch runs as it always has,
    command by command, storing those before the refused one and raising its error."""
    calls = reset(app)
    before = stored_events(app)
    commands: list[Command] = [
        app.start_debate_command(f"t{i}", ["a"], idempotency_key=f"d{i}") for i in range(30)]
    commands.append(app.complete_llm_call_command(calls[0], 5, Decimal("0.01"), 1.0,
                                                  idempotency_key="c0"))
    commands.append(app.complete_llm_call_command(calls[0], 6, Decimal("0.01"), 1.0,
                                                  idempotency_key="c0-again"))
    commands += [app.start_debate_command(f"u{i}", ["a"], idempotency_key=f"e{i}")
                 for i in range(10)]
    with pytest.raises(DomainError):
        app.execute_many(commands)
    assert stored_events(app) == before + 31
    assert app.get_llm_call(calls[0]).version == 2


def test_a_serial_store_runs_batches_the_careful_way(db_url: str) -> None:
    """Serial appends take the events table's lock in every append: no batch is saved
    at once there, and batches answer exactly as elsewhere."""
    app = type("SerialApp", (AuraApp,), {"serial_appends": True})(db_url)
    try:
        commands = [app.start_debate_command(f"t{i}", ["a"], idempotency_key=f"s{i}")
                    for i in range(40)]
        with batches_saved_at_once() as at_once:
            first = app.execute_many(commands)
            again = app.execute_many(commands)
        assert at_once.appended() == []
        assert not any(r.duplicate for r in first)
        assert again == [CommandResult(**{**r.__dict__, "duplicate": True}) for r in first]
        assert stored_events(app) == 40
    finally:
        app.close()


def kept_connection_pid(app: AuraApp) -> int:
    recorder = app.recorder
    assert isinstance(recorder, AuraRecorder)
    with recorder.connection() as conn:
        return int(conn.info.backend_pid)


def test_a_batch_after_the_server_forgot_its_statements_is_stored_once(app: AuraApp) -> None:
    """``DEALLOCATE ALL`` on the connection (a pooler that moved the session): a batch
    that finds a statement gone runs the careful way, having learnt it (each statement
    costs one batch at most), and batches go at once again, each command stored once."""
    reset(app)
    app.execute_many([app.start_debate_command("warm", ["a"], idempotency_key=f"w{i}")
                      for i in range(30)])
    recorder = app.recorder
    assert isinstance(recorder, AuraRecorder)
    with recorder.connection() as conn:
        conn.execute("DEALLOCATE ALL")
    with batches_saved_at_once() as at_once:
        for b in range(6):
            results = app.execute_many([
                app.start_debate_command("t", ["a"], idempotency_key=f"b{b}-{i}")
                for i in range(30)])
            assert not any(r.duplicate for r in results)
    # Four statements (the question, the key rows, a first chunk, a next one): four
    # batches at most.
    assert at_once.appended().count(False) <= 4
    assert at_once.appended()[-2:] == [True, True]
    assert stored_events(app) == CALLS + 210


def test_a_batch_whose_connection_was_killed_is_stored_once(app: AuraApp) -> None:
    """The kept connection terminated by the server between batches (a failover, an
    idle timeout): the next batch rides it out on a new connection, stored once."""
    reset(app)
    app.execute_many([app.start_debate_command("warm", ["a"], idempotency_key=f"w{i}")
                      for i in range(10)])
    pid = kept_connection_pid(app)
    with app.connect() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    commands = [app.start_debate_command("t", ["a"], idempotency_key=f"k{i}")
                for i in range(50)]
    results = app.execute_many(commands)
    assert not any(r.duplicate for r in results)
    assert app.execute_many(commands) == [
        CommandResult(**{**r.__dict__, "duplicate": True}) for r in results]
    assert stored_events(app) == CALLS + 60
    assert kept_connection_pid(app) != pid


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(key_sets=st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=40),
                         min_size=2, max_size=4))
def test_concurrent_batches_sharing_keys_store_each_once(
    app: AuraApp, key_sets: list[list[int]]
) -> None:
    """Batches in threads, their keys overlapping: a key stored by one batch while
    another is deciding collides in the other's transaction, which then runs the
    careful way; each key is stored once, and every answer for it names the same
    aggregate and positions."""
    reset(app)
    answers: dict[int, list[CommandResult]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(keys: list[int]) -> None:
        try:
            results = app.execute_many([
                app.start_debate_command("t", ["a"], idempotency_key=f"k{k}") for k in keys])
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)
            return
        with lock:
            for k, result in zip(keys, results, strict=True):
                answers.setdefault(k, []).append(result)

    threads = [threading.Thread(target=run, args=(keys,)) for keys in key_sets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert stored_events(app) == CALLS + len(answers)
    for results in answers.values():
        assert len({(r.aggregate_id, r.positions) for r in results}) == 1
        assert sum(not r.duplicate for r in results) <= 1
