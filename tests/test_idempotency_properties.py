"""G1 and G2: a keyed command is stored once, whoever retries it and however often."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from aura_es import (
    AuraApp,
    CommandResult,
    ConcurrencyConflict,
    DomainError,
    IdempotencyKeyConflict,
)
from aura_es.commands import Command
from aura_es.store import idempotency
from aura_es.testing.servers import PostgresServer
from tests.support.commands import empty as reset
from tests.support.commands import stored_events

DB_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Op:
    kind: str  # "debate" | "argument" | "llm"
    key: int
    variant: int


ops = st.lists(
    st.builds(
        Op,
        kind=st.sampled_from(["debate", "argument", "llm"]),
        key=st.integers(0, 4),
        variant=st.integers(0, 1),
    ),
    min_size=1,
    max_size=30,
)


def to_command(app: AuraApp, op: Op, debate_id: Any) -> Command:
    key = f"key-{op.key}"
    if op.kind == "debate":
        return app.start_debate_command(f"topic {op.variant}", ["a"], idempotency_key=key)
    if op.kind == "argument":
        return app.add_argument_command(
            debate_id, "a", "for", f"text {op.variant}", round=1, idempotency_key=key
        )
    return app.request_llm_call_command("acme", "p", "m", op.variant, idempotency_key=key)


@DB_SETTINGS
@given(sequence=ops)
def test_sequential_retries_store_once_and_conflicts_store_nothing(
    app: AuraApp, sequence: list[Op]
) -> None:
    reset(app)
    debate_id = app.start_debate("shared", ["a"], idempotency_key="setup")
    first: dict[tuple[str, int], tuple[int, CommandResult]] = {}
    for op in sequence:
        command = to_command(app, op, debate_id)
        seen = first.get((op.kind, op.key))
        if seen is not None and seen[0] != op.variant:
            head = app.head_position()
            with pytest.raises(IdempotencyKeyConflict):
                app.execute(command)
            assert app.head_position() == head
            continue
        result = app.execute(command)
        if seen is None:
            assert not result.duplicate
            first[(op.kind, op.key)] = (op.variant, result)
        else:
            assert result.duplicate
            assert result == CommandResult(**{**seen[1].__dict__, "duplicate": True})
    assert stored_events(app) == 1 + len(first)


batches = st.lists(ops, min_size=1, max_size=4)


@DB_SETTINGS
@given(batches=batches)
def test_a_batch_stores_each_command_once_and_answers_like_one_by_one(
    app: AuraApp, batches: list[list[Op]]
) -> None:
    """G1 and G2 for ``execute_many``: each result is what the command alone returns
    (a first run stored once, a retry its original result, within the batch or across
    batches); a key sent with other arguments fails the batch, and whatever the batch
    stored before it failed is then a retry's original result, never stored twice."""
    reset(app)
    debate_id = app.start_debate("shared", ["a"], idempotency_key="setup")
    first: dict[tuple[str, int], tuple[int, CommandResult]] = {}

    def check(op: Op, result: CommandResult) -> None:
        seen = first.get((op.kind, op.key))
        if seen is None:
            first[(op.kind, op.key)] = (op.variant, result)
        else:
            assert result == CommandResult(**{**seen[1].__dict__, "duplicate": True})

    for batch in batches:
        variants: dict[tuple[str, int], int] = {k: v for k, (v, _) in first.items()}
        conflicted = False
        for op in batch:
            conflicted |= variants.setdefault((op.kind, op.key), op.variant) != op.variant
        commands = [to_command(app, op, debate_id) for op in batch]
        if not conflicted:
            results = app.execute_many(commands)
            for op, result in zip(batch, results, strict=True):
                assert result.duplicate == ((op.kind, op.key) in first)
                check(op, result)
            continue
        with pytest.raises(IdempotencyKeyConflict):
            app.execute_many(commands)
        # What the failed batch stored, if anything, is a retry's original result now.
        for op, command in zip(batch, commands, strict=True):
            seen = first.get((op.kind, op.key))
            if seen is not None and seen[0] != op.variant:
                with pytest.raises(IdempotencyKeyConflict):
                    app.execute(command)
                continue
            check(op, app.execute(command))
    assert stored_events(app) == 1 + len(first)
    assert app.get_debate(debate_id).arguments == sum(k == "argument" for k, _ in first)


@dataclass(frozen=True)
class UpdateStep:
    kind: str  # "argue" (a key, new or retried) | "retry-other" | "close"
    key: int


update_steps = st.lists(
    st.builds(UpdateStep, kind=st.sampled_from(["argue", "argue", "retry-other", "close"]),
              key=st.integers(0, 5)),
    min_size=1, max_size=25,
)


@DB_SETTINGS
@given(steps=update_steps)
def test_a_retried_update_gets_its_original_result_whatever_its_aggregate_became(
    app: AuraApp, steps: list[UpdateStep]
) -> None:
    """Updates go straight to the save (no lookup first): a retry is answered from its
    key row whether the decide on today's state passes again (the key collides in the
    insert) or is refused (the debate was closed since), and stores nothing."""
    reset(app)
    debate_id = app.start_debate("retries", ["a"], idempotency_key="setup")
    first: dict[int, CommandResult] = {}
    closed = False

    def argue(key: int, text: str) -> CommandResult:
        return app.add_argument(debate_id, "a", "for", text, round=1,
                                idempotency_key=f"arg-{key}")

    for step in steps:
        head = app.head_position()
        if step.kind == "close":
            if not closed:
                app.reach_consensus(debate_id, "done", idempotency_key="close")
                closed = True
            continue
        if step.kind == "retry-other" and step.key in first:
            with pytest.raises(IdempotencyKeyConflict):
                argue(step.key, "other words")
            assert app.head_position() == head
            continue
        if step.key in first:
            again = argue(step.key, f"text {step.key}")
            assert again == CommandResult(**{**first[step.key].__dict__, "duplicate": True})
            assert app.head_position() == head
        elif closed:
            with pytest.raises(DomainError):
                argue(step.key, f"text {step.key}")
            assert app.head_position() == head
        else:
            first[step.key] = argue(step.key, f"text {step.key}")
            assert not first[step.key].duplicate
    assert stored_events(app) == 1 + len(first) + closed
    assert app.get_debate(debate_id).arguments == len(first)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n_commands=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_eight_threads_retrying_the_same_commands_store_each_once(
    app: AuraApp, n_commands: int, seed: int
) -> None:
    reset(app)
    app.max_attempts = 100  # eight racers on one aggregate: let them all get through
    debate_id = app.start_debate("shared", ["a"], idempotency_key="setup")
    commands = [
        to_command(app, Op(kind, i, 0), debate_id)
        for i in range(n_commands)
        for kind in ("debate", "argument")
    ]
    barrier = threading.Barrier(8)

    def sender(thread_no: int) -> dict[str, CommandResult]:
        order = list(range(len(commands)))
        random.Random(seed + thread_no).shuffle(order)
        barrier.wait()
        return {f"{commands[i].type}:{i}": app.execute(commands[i]) for i in order}

    with ThreadPoolExecutor(8) as pool:
        per_thread = list(pool.map(sender, range(8)))
    for name in per_thread[0]:
        results = [r[name] for r in per_thread]
        outcomes = {(r.aggregate_id, r.from_version, r.to_version, r.positions) for r in results}
        assert len(outcomes) == 1
        assert sum(not r.duplicate for r in results) == 1
    assert stored_events(app) == 1 + len(commands)


def test_racing_different_commands_on_one_aggregate_all_land(app: AuraApp) -> None:
    debate_id = app.start_debate("race", ["a"], idempotency_key="setup")
    app.max_attempts = 100
    barrier = threading.Barrier(8)

    def argue(i: int) -> CommandResult:
        barrier.wait()
        return app.add_argument(debate_id, "a", "for", f"t{i}", round=1, idempotency_key=f"k{i}")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(argue, range(8)))
    assert sorted(r.from_version for r in results) == list(range(2, 10))
    assert app.get_debate(debate_id).arguments == 8


def test_racing_commands_give_up_with_a_clear_error_when_attempts_run_out(app: AuraApp) -> None:
    debate_id = app.start_debate("race", ["a"], idempotency_key="setup")
    app.max_attempts = 1
    barrier = threading.Barrier(8)
    original_decide = app.commands._decide

    def slow_decide(*args: Any, **kwargs: Any) -> Any:
        aggregate = original_decide(*args, **kwargs)
        barrier.wait()  # everyone has read the same version before anyone saves
        return aggregate

    app.commands._decide = slow_decide  # type: ignore[method-assign]

    def argue(i: int) -> str:
        try:
            app.add_argument(debate_id, "a", "for", f"t{i}", round=1, idempotency_key=f"k{i}")
            return "ok"
        except ConcurrencyConflict:
            return "conflict"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(argue, range(8)))
    assert outcomes.count("ok") == 1 and outcomes.count("conflict") == 7
    assert stored_events(app) == 2


def test_a_racing_duplicate_that_loses_the_version_race_is_a_duplicate(app: AuraApp) -> None:
    debate_id = app.start_debate("race", ["a"], idempotency_key="setup")
    for round_no in range(15):
        barrier = threading.Barrier(2)

        def argue(_: int, r: int = round_no, barrier: threading.Barrier = barrier) -> CommandResult:
            barrier.wait()
            return app.add_argument(debate_id, "a", "for", "x", round=1, idempotency_key=f"d{r}")

        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(argue, range(2))
        assert (a.from_version, a.positions) == (b.from_version, b.positions)
        assert sorted([a.duplicate, b.duplicate]) == [False, True]
    assert app.get_debate(debate_id).arguments == 15


def test_a_duplicate_committed_while_its_append_waits_is_answered(app: AuraApp) -> None:
    """Another session holds the command's key row uncommitted: the append waits for
    it, and once it commits, answers with the row it stored, storing nothing."""
    reset(app)
    command = app.start_debate_command("t", ["a"], idempotency_key="held")
    aggregate_id = idempotency.derived_aggregate_id(command.type, command.tenant_id, "held")
    record = idempotency.IdempotencyRecord(
        idempotency.key_hash(command.type, aggregate_id, "held"), command.type, "held",
        aggregate_id, idempotency.request_hash(command.type, command.request), 1, 1)
    holder = app.connect(autocommit=False)
    answers: list[CommandResult] = []
    try:
        holder.execute(idempotency.INSERT_ONE, record)
        appending = threading.Thread(target=lambda: answers.append(app.execute(command)))
        appending.start()
        with app.connect() as watcher:
            for _ in range(2000):  # until the append queues behind the held key row
                row = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%%aura_idempotency%%' AND pid <> %s",
                    (holder.info.backend_pid,)).fetchone()
                if row and row[0]:
                    break
                watcher.execute("SELECT pg_sleep(0.005)")
            else:
                pytest.fail("the append never waited for the held key row")
        holder.commit()
        appending.join(timeout=30)
    finally:
        holder.close()
    assert answers == [CommandResult(aggregate_id, 1, 1, (), duplicate=True)]
    assert stored_events(app) == 0


def _fingerprint(url: str) -> tuple[list[tuple[Any, ...]], list[str]]:
    app = AuraApp(url, pool_size=1)
    with app.connect() as conn:
        events = [
            tuple(r) for r in conn.execute(
                "SELECT originator_id, originator_version, topic FROM aura_events ORDER BY 1, 2"
            )
        ]
        keys = [r[0] for r in conn.execute("SELECT key_hash FROM aura_idempotency ORDER BY 1")]
    app.close()
    return events, keys


def _load(url: str, seed: int, dup: float) -> Callable[[], subprocess.Popen[bytes]]:
    cmd = [
        sys.executable, "-m", "aura_es.cli", "load", "--seed", str(seed), "--commands", "150",
        "--duplicate-rate", str(dup), "--concurrency", "2", "--database-url", url, "--json",
    ]
    return lambda: subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


@pytest.mark.slow
@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # shrinking processes takes ages
)
@given(seed=st.integers(0, 10_000), dup=st.sampled_from([0.0, 0.3, 0.6]))
def test_four_processes_with_one_seed_store_what_one_process_stores(
    pg_server: PostgresServer, aura_template: str, seed: int, dup: float
) -> None:
    single, racing = (pg_server.create_database(template=aura_template) for _ in range(2))
    try:
        assert _load(pg_server.url_for(single), seed, dup)().wait(timeout=120) == 0
        procs = [_load(pg_server.url_for(racing), seed, dup)() for _ in range(4)]
        assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
        expected = _fingerprint(pg_server.url_for(single))
        assert len(expected[0]) == 150
        assert _fingerprint(pg_server.url_for(racing)) == expected
    finally:
        pg_server.drop_database(single)
        pg_server.drop_database(racing)
