"""Replay: blue/green rebuilds under live load (G7), resuming after a crash at any point,
partial replays that leave other rows byte for byte, the side-effect gate, drift."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from aura_es import AuraApp
from aura_es.catalog import load_catalog
from aura_es.catalog.model import ProjectionSpec
from aura_es.db import connect
from aura_es.load import scenarios
from aura_es.projection import EventEnvelope, Tx
from aura_es.projection.engine import serving
from aura_es.projection.engine.dispatch import Dispatcher
from aura_es.projection.engine.engine import Engine
from aura_es.projection.engine.loading import fingerprint
from aura_es.projection.engine.runner import GenerationChanged
from aura_es.projection.handlers.actions import side_effect_action
from aura_es.replay import Rebuild, ReplayRunning, replay_aggregates
from aura_es.replay.claim import claim
from projections.debate_state import DebateStateProjection
from tests.support import folds
from tests.support.scenarios import run_scenarios
from tests.support.workers import (
    ALL,
    CATALOG,
    ROOT,
    assert_read_models_equal_fold,
    caught_up,
    env_for,
    positions,
    start_supervisor,
    wait_for,
)

SPECS = load_catalog(CATALOG)
DEBATES = SPECS.get("DebateStateProjection")
_names = itertools.count()


def aura(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aura_es.cli", *args], env=env_for(db_url),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def stop(process: subprocess.Popen[str]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def debates_spec(name: str, handler: str = "projections.debate_state:DebateStateProjection",
                 ) -> ProjectionSpec:
    return DEBATES.model_copy(update={"name": name, "storage": name.lower(),
                                      "handler": handler})


# -- G7 under live load -------------------------------------------------------------------------


@pytest.mark.slow
def test_readers_never_see_a_partial_read_model_during_rebuilds_under_writes(
    app: AuraApp, db_url: str, tmp_path: Path,
) -> None:
    run_scenarios(app, scenarios(1, 100_000), 400)
    supervisor = start_supervisor(db_url, *ALL, log=tmp_path / "workers.log")
    writing = threading.Event()
    writing.set()
    failures: list[BaseException] = []
    reads: list[int] = []

    def write() -> None:
        source = scenarios(2, 100_000)
        while writing.is_set():
            run_scenarios(app, source, 3)
            time.sleep(0.01)

    def read() -> None:
        with connect(db_url) as conn:
            while writing.is_set():
                try:
                    reads.append(read_each_model_in_one_statement(conn))
                except BaseException as e:  # reported by the main thread
                    failures.append(e)
                    return

    try:
        with connect(db_url) as conn:
            wait_for("workers to catch up", lambda: caught_up(conn))
        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        for name in ALL:
            done = aura(db_url, "replay", name, "--json")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["generation"] == 2
        time.sleep(1)
        writing.clear()
        for thread in threads:
            thread.join(timeout=60)
        if failures:
            raise failures[0]
        with connect(db_url) as conn:
            wait_for("workers to catch up after the switch", lambda: caught_up(conn))
            assert_read_models_equal_fold(conn)
            generation = dict(conn.execute(
                "SELECT projection, generation FROM aura_projection_checkpoints"))
            assert all(generation[name] == 2 for name in ALL)
            kinds = dict(conn.execute(
                "SELECT relname, relkind FROM pg_class WHERE relname = ANY(%s)",
                (["debate_state", "llm_spend", "agent_performance", "debate_state__g2"],)))
            assert kinds == {"debate_state": "v", "llm_spend": "v", "agent_performance": "v",
                             "debate_state__g2": "r"}
    finally:
        writing.clear()
        stop(supervisor)
    # Reads went on throughout and the read model only grew: never empty, never reset.
    assert len(reads) > 20
    assert reads == sorted(reads)


Fold = Callable[..., dict[Any, tuple[Any, ...]]]
READ_MODELS: list[tuple[str, str, Fold, Fold]] = [
    ("DebateStateProjection", "debate_state", folds.stored_debate_state, folds.debate_state),
    ("LLMSpendProjection", "llm_spend", folds.stored_llm_spend, folds.llm_spend),
    ("AgentPerformanceProjection", "agent_performance", folds.stored_agent_performance,
     lambda conn, up_to: folds.agent_performance(conn, up_to=up_to)),
]


def read_each_model_in_one_statement(conn: psycopg.Connection[Any]) -> int:
    """A reader's query of each stable name (one statement, one snapshot) equals the fold
    of the log up to the checkpoint that statement saw; returns the debates seen."""
    debates = 0
    for name, table, stored, fold in READ_MODELS:
        conn.execute("DROP TABLE IF EXISTS snap")
        conn.execute(sql.SQL(
            "CREATE TEMP TABLE snap AS SELECT t.*, (SELECT position FROM"
            " aura_projection_checkpoints WHERE projection = {}) AS snap_position FROM {} t"
        ).format(sql.Literal(name), sql.Identifier(table)))
        row = conn.execute("SELECT max(snap_position), count(*) FROM snap").fetchone()
        assert row is not None and row[1] > 0, f"{table} read empty"
        assert stored(conn, "snap") == fold(conn, row[0]), f"{table} differs from the fold"
        debates = row[1] if table == "debate_state" else debates
    return debates


# -- resuming after a crash ---------------------------------------------------------------------


class Crash(BaseException):
    """A process dying at this point: nothing after it runs, its transaction rolls back."""


class CrashingDebates(DebateStateProjection):
    countdown: ClassVar[int | None] = None

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        super().handle(batch, tx)
        if CrashingDebates.countdown is not None:
            CrashingDebates.countdown -= 1
            if CrashingDebates.countdown < 0:
                CrashingDebates.countdown = None
                raise Crash


class CrashingSwitch(Rebuild):
    def _move_names(self, cur: Any, live: Any) -> Any:
        super()._move_names(cur, live)
        raise Crash


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(where=st.one_of(st.integers(0, 12).map(lambda n: ("batch", n)),
                       st.just(("switch", 0))),
       batch_size=st.sampled_from([7, 50, 400]), appends=st.integers(0, 5))
def test_a_rebuild_killed_anywhere_and_resumed_equals_the_fold(
    app: AuraApp, where: tuple[str, int], batch_size: int, appends: int,
) -> None:
    if app.head_position() == 0:
        run_scenarios(app, scenarios(3, 100_000), 150)
    spec = debates_spec(f"Crashy{next(_names)}", "tests.test_replay:CrashingDebates")
    with connect(app.database_url) as live_conn, connect(app.database_url) as conn:
        live = Engine.attach(live_conn, spec).runner
        live.run_until_caught_up()
        crashed_at = _crash_a_rebuild(app.database_url, spec, where, batch_size)
        run_scenarios(app, scenarios(4 + appends, 100_000), appends)
        try:  # the live read model keeps being updated until the switch
            live.run_until_caught_up()
            switched = False
        except GenerationChanged:
            switched = True
        assert switched == (crashed_at is None)
        if crashed_at is not None:
            resumed = Rebuild(conn, spec, batch_size=batch_size)
            assert resumed.generation == 2
            result = resumed.run()
            resumed.close()
            assert result.generation == 2
        with pytest.raises(GenerationChanged):
            live.step()
        live = Engine.attach(live_conn, spec).runner
        live.run_until_caught_up()
        assert folds.stored_debate_state(conn, spec.storage) == \
            folds.debate_state(conn, live.position)
        assert conn.execute("SELECT count(*) FROM aura_projection_checkpoints"
                            " WHERE projection LIKE %s", (f"{spec.name}@%",)).fetchone() == (0,)
        tables = [row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND (tablename = %s OR starts_with(tablename, %s || '__')) ORDER BY 1",
            (spec.storage, spec.storage))]
        assert tables == [f"{spec.storage}__g2"]


def _crash_a_rebuild(
    url: str, spec: ProjectionSpec, where: tuple[str, int], batch_size: int
) -> tuple[str, int] | None:
    crashed = connect(url)
    try:
        if where[0] == "batch":
            CrashingDebates.countdown = where[1]
            rebuild: Rebuild = Rebuild(crashed, spec, batch_size=batch_size)
        else:
            rebuild = CrashingSwitch(crashed, spec, batch_size=batch_size)
        rebuild.run()
        return None
    except Crash:
        return where
    finally:
        CrashingDebates.countdown = None
        crashed.close()  # the process is gone: its claim and open transaction with it


@pytest.mark.slow
def test_sigkilled_replay_command_resumes_and_finishes(big_log_url: str) -> None:
    resumed = []
    for extra in (0.0, 0.1, 0.25):
        command = [sys.executable, "-m", "aura_es.cli", "replay", "DebateStateProjection",
                   "--batch-size", "500"]
        process = subprocess.Popen(command, env=env_for(big_log_url), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with connect(big_log_url) as conn:
            def started(p: subprocess.Popen[bytes] = process) -> bool:
                row = conn.execute("SELECT max(position) FROM aura_projection_checkpoints"
                                   " WHERE projection LIKE 'DebateStateProjection@g%'"
                                   ).fetchone()
                return p.poll() is not None or bool(row and row[0])

            wait_for("the rebuild to start", started)
        time.sleep(extra)
        process.kill()
        process.wait()
        done = aura(big_log_url, "replay", "DebateStateProjection", "--json")
        assert done.returncode == 0, done.stderr
        resumed.append(json.loads(done.stdout)["resumed_from"])
        with connect(big_log_url) as conn:
            live = Engine.attach(conn, DEBATES).runner
            live.run_until_caught_up()
            assert folds.stored_debate_state(conn) == folds.debate_state(conn, live.position)
            switched = conn.execute("SELECT count(*) FROM aura_projection_rebuilds WHERE"
                                    " status = 'switched'").fetchone()
            assert switched is not None and switched[0] >= 1
    assert any(resumed), f"no kill landed mid-rebuild: {resumed}"


# -- partial replay -----------------------------------------------------------------------------


def _rows(conn: psycopg.Connection[Any], table: str) -> dict[UUID, str]:
    return dict(conn.execute(f'SELECT debate_id, t::text FROM "{table}" t'))


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=6, unique=True))
def test_a_partial_replay_rebuilds_only_its_aggregates(app: AuraApp, picks: list[int]) -> None:
    if app.head_position() == 0:
        run_scenarios(app, scenarios(5, 100_000), 150)
    spec = debates_spec(f"Partial{next(_names)}")
    with connect(app.database_url) as conn:
        Engine.attach(conn, spec).runner.run_until_caught_up()
        ids = sorted(_rows(conn, spec.storage))
        chosen = sorted({ids[p % len(ids)] for p in picks})
        # A handler bug that got into every row: replayed rows come back right, the rest
        # stay exactly as they were.
        conn.execute(f'UPDATE "{spec.storage}" SET arguments = arguments + 1000')
        before = _rows(conn, spec.storage)
        result = replay_aggregates(conn, spec, chosen, chunk=2)
        after = _rows(conn, spec.storage)
        assert result.aggregates == len(chosen)
        assert {k: v for k, v in after.items() if k not in chosen} == \
            {k: v for k, v in before.items() if k not in chosen}
        stored = folds.stored_debate_state(conn, spec.storage)
        expected = folds.debate_state(conn)
        assert all(stored[k] == expected[k] for k in chosen)
        assert all(stored[k] != expected[k] for k in ids if k not in chosen)


def test_replay_cli_partial_by_aggregate_and_by_range(app: AuraApp, db_url: str) -> None:
    run_scenarios(app, scenarios(6, 100_000), 120)
    with connect(db_url) as conn:
        Engine.attach(conn, DEBATES).runner.run_until_caught_up()
        conn.execute("UPDATE debate_state SET arguments = arguments + 1000")
        one = conn.execute("SELECT debate_id FROM debate_state ORDER BY debate_id LIMIT 1"
                           ).fetchone()
        assert one is not None
        middle = app.head_position() // 2
    done = aura(db_url, "replay", "DebateStateProjection", "--aggregate", str(one[0]), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["aggregates"] == 1
    done = aura(db_url, "replay", "DebateStateProjection", "--from-position", str(middle),
                "--json")
    assert done.returncode == 0, done.stderr
    with connect(db_url) as conn:
        in_range = {row[0] for row in conn.execute(
            "SELECT DISTINCT originator_id FROM aura_events WHERE notification_id >= %s"
            " AND topic LIKE 'aura.debate.%%'", (middle,))} | {one[0]}
        stored, expected = folds.stored_debate_state(conn), folds.debate_state(conn)
    assert {k for k in stored if stored[k] == expected[k]} == in_range & set(stored)


# -- the side-effect gate -----------------------------------------------------------------------


NOTIFIED: list[tuple[str, str]] = []


@side_effect_action("test.notify-started")
def _notify_started(payload: dict[str, Any], idempotency_key: str) -> None:
    NOTIFIED.append((payload["debate"], idempotency_key))


class NotifyingDebates(DebateStateProjection):
    """Asks for a 'webhook' per started debate."""

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        super().handle(batch, tx)
        for event in batch:
            if event.topic == "aura.debate.started.v1":
                tx.side_effect("test.notify-started", {"debate": str(event.aggregate_id)},
                               event=event)


def test_side_effects_run_live_and_never_during_replay(app: AuraApp) -> None:
    run_scenarios(app, scenarios(7, 100_000), 60)
    spec = debates_spec("Notifying", "tests.test_replay:NotifyingDebates")
    NOTIFIED.clear()
    dispatcher = Dispatcher(spec.name, spec.error_handling)
    with connect(app.database_url) as conn:
        Engine.attach(conn, spec).runner.run_until_caught_up()
        assert NOTIFIED == [], "a side effect ran before the dispatcher ran it"
        dispatcher.run_due(conn)
        live_calls = list(NOTIFIED)
        started = conn.execute("SELECT count(*) FROM aura_events WHERE topic ="
                               " 'aura.debate.started.v1'").fetchone()
        assert started is not None and len(live_calls) == started[0] > 0
        assert len({key for _, key in live_calls}) == len(live_calls)
        rebuild = Rebuild(conn, spec)
        rebuild.run()
        rebuild.close()
        replay_aggregates(conn, spec, [UUID(live_calls[0][0])])
        dispatcher.run_due(conn)
    assert live_calls == NOTIFIED


# -- drift and bad input ------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_rebuild_a_drifted_read_model_by_themselves(
    app: AuraApp, db_url: str, tmp_path: Path,
) -> None:
    run_scenarios(app, scenarios(8, 100_000), 200)
    supervisor = start_supervisor(db_url, "DebateStateProjection")
    with connect(db_url) as conn:
        wait_for("catch-up", lambda: caught_up(conn, ["DebateStateProjection"]))
    stop(supervisor)
    document = yaml.safe_load(CATALOG.read_text())
    document["projections"][0]["output_model"] = "DebateStateV2"
    changed = tmp_path / "catalog.yaml"
    changed.write_text(yaml.safe_dump(document))
    new_print = fingerprint(load_catalog(changed).get("DebateStateProjection"))
    status = aura(db_url, "status", "--catalog", str(changed), "--json")
    assert json.loads(status.stdout)["projections"][0]["drift"] is True
    log = tmp_path / "drift.log"
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "aura_es.cli", "workers", "run", "-p", "DebateStateProjection",
         "--catalog", str(changed), "--poll-seconds", "0.5", "--rebuild-on-drift"],
        env=env_for(db_url), cwd=ROOT, text=True, stderr=log.open("w"),
        start_new_session=True,
    )
    try:
        run_scenarios(app, scenarios(9, 100_000), 50)
        with connect(db_url) as conn:
            wait_for("the rebuild to switch", lambda: conn.execute(
                "SELECT generation = 2 AND fingerprint = %s FROM aura_projection_checkpoints"
                " WHERE projection = 'DebateStateProjection'", (new_print,)).fetchone()
                == (True,), timeout=90)
            run_scenarios(app, scenarios(10, 100_000), 20)
            wait_for("catch-up", lambda: caught_up(conn, ["DebateStateProjection"]))
            assert_read_models_equal_fold(conn, ["DebateStateProjection"])
    finally:
        stop(supervisor)
    status = aura(db_url, "status", "--catalog", str(changed), "--json")
    assert json.loads(status.stdout)["projections"][0]["drift"] is False
    # The live worker either moved over in place, or (had it started after the switch)
    # attached to the new generation directly.
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("event") in ("switched to the rebuilt read model", "active")
               and line.get("generation") == 2 for line in lines)


def test_replay_bad_input_exits_2_and_changes_nothing(
    app: AuraApp, db_url: str, tmp_path: Path
) -> None:
    run_scenarios(app, scenarios(11, 100_000), 30)
    with connect(db_url) as conn:
        Engine.attach(conn, DEBATES).runner.run_until_caught_up()
        before = positions(conn), _rows(conn, "debate_state")
    broken = tmp_path / "catalog.yaml"
    document = yaml.safe_load(CATALOG.read_text())
    document["projections"][0]["handler"] = "projections.nowhere:Missing"
    broken.write_text(yaml.safe_dump(document))
    cases = [
        (["replay", "NoSuchProjection"], "unknown projection 'NoSuchProjection'"),
        (["replay", "DebateStateProjection", "--catalog", str(broken)], "does not import"),
        (["replay", "DebateStateProjection", "--aggregate", "not-a-uuid"], "not a UUID"),
        (["replay", "DebateStateProjection", "--since", "2026-01-02", "--until", "2026-01-01"],
         "is not before --until"),
        (["replay", "LLMSpendProjection", "--since", "1h"], "update_strategy incremental"),
        (["replay", "DebateStateProjection", "--aggregate", str(UUID(int=7))], "has no events"),
    ]
    for args, message in cases:
        done = aura(db_url, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    with connect(db_url) as holder:
        claim(holder, "DebateStateProjection", "rebuild")
        done = aura(db_url, "replay", "DebateStateProjection")
        assert done.returncode == 2
        assert "already being replayed: a rebuild by pid" in done.stderr
        with connect(db_url) as other, pytest.raises(ReplayRunning):
            Rebuild(other, DEBATES)
    with connect(db_url) as conn:
        assert (positions(conn), _rows(conn, "debate_state")) == before
        assert conn.execute("SELECT count(*) FROM aura_projection_rebuilds").fetchone() == (0,)


def test_dry_run_reports_the_plan_and_changes_nothing(app: AuraApp, db_url: str) -> None:
    run_scenarios(app, scenarios(12, 100_000), 60)
    with connect(db_url) as conn:
        Engine.attach(conn, DEBATES).runner.run_until_caught_up()
        expected = conn.execute("SELECT count(*) FROM aura_events WHERE topic = ANY(%s)",
                                (DEBATES.source_events,)).fetchone()
        tables = conn.execute("SELECT count(*) FROM pg_class").fetchone()
    done = aura(db_url, "replay", "DebateStateProjection", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert expected is not None and plan["events"] == expected[0]
    assert plan["create"] == ["debate_state__g2"] and plan["drop"] == ["debate_state"]
    assert plan["estimated_seconds"] is not None and plan["events_per_second"] > 0
    with connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_class").fetchone() == tables
        assert conn.execute("SELECT count(*) FROM aura_projection_rebuilds").fetchone() == (0,)


def test_the_switch_waits_for_transactions_with_older_snapshots(app: AuraApp) -> None:
    run_scenarios(app, scenarios(13, 100_000), 60)
    spec = debates_spec("Waiting")
    with connect(app.database_url) as conn, connect(app.database_url) as report:
        Engine.attach(conn, spec).runner.run_until_caught_up()
        # A long report: its snapshot predates the new tables being filled.
        report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        report.execute("SELECT count(*) FROM aura_events").fetchone()
        results: list[Any] = []
        rebuilding = connect(app.database_url)
        rebuilding_pid = rebuilding.info.backend_pid
        worker = threading.Thread(target=lambda: results.append(Rebuild(rebuilding, spec).run()))
        worker.start()
        # The rebuild has caught up and waits in its loop for older snapshots to end.
        wait_for("the switch to wait for the report's snapshot", lambda: conn.execute(
            "SELECT query LIKE '%%backend_xmin%%' FROM pg_stat_activity WHERE pid = %s",
            (rebuilding_pid,)).fetchone() == (True,), timeout=60)
        assert not results, "switched while an older snapshot could still read the new table"
        assert serving.current(conn.cursor(), spec).generation == 1
        expected = _rows(report, spec.storage)
        report.execute("COMMIT")
        worker.join(timeout=30)
        rebuilding.close()
        assert results and results[0].generation == 2
        assert _rows(conn, spec.storage) == expected


@pytest.mark.slow
def test_a_worker_with_another_definition_reloads_after_the_switch(
    app: AuraApp, db_url: str, tmp_path: Path,
) -> None:
    run_scenarios(app, scenarios(14, 100_000), 100)
    log = tmp_path / "workers.log"
    supervisor = start_supervisor(db_url, "DebateStateProjection", log=log)
    document = yaml.safe_load(CATALOG.read_text())
    document["projections"][0]["output_model"] = "DebateStateV2"
    changed = tmp_path / "catalog.yaml"
    changed.write_text(yaml.safe_dump(document))
    try:
        with connect(db_url) as conn:
            wait_for("catch-up", lambda: caught_up(conn, ["DebateStateProjection"]))
        done = aura(db_url, "replay", "DebateStateProjection", "--catalog", str(changed))
        assert done.returncode == 0, done.stderr
        wait_for("the worker to reload", lambda: "reloading" in log.read_text(), timeout=30)
        run_scenarios(app, scenarios(15, 100_000), 30)
        with connect(db_url) as conn:
            wait_for("catch-up after the reload",
                     lambda: caught_up(conn, ["DebateStateProjection"]), timeout=60)
            assert_read_models_equal_fold(conn, ["DebateStateProjection"])
    finally:
        stop(supervisor)
    text = log.read_text()
    assert '"exit_code": 4' in text and "restart_in_seconds\": 0.0" in text
    status = json.loads(aura(db_url, "status", "--json").stdout)["projections"][0]
    assert status["generation"] == 2 and status["drift"] is True


# -- dead letters across a switch ---------------------------------------------------------------


def _poisoned_log(app: AuraApp) -> tuple[UUID, UUID]:
    """Two debates with a poison argument (and a later one parked behind it), one clean."""
    poisoned = []
    for n in range(2):
        debate = app.start_debate(f"p{n}", ["a"], idempotency_key=f"dl-{n}")
        app.add_argument(debate, "a", "for", "POISON", round=1, idempotency_key=f"dl-{n}-1")
        app.add_argument(debate, "a", "for", "fine", round=2, idempotency_key=f"dl-{n}-2")
        poisoned.append(debate)
    app.start_debate("clean", ["a"], idempotency_key="dl-clean")
    return poisoned[0], poisoned[1]


def _open_letters(conn: psycopg.Connection[Any], name: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT d.aggregate_id, d.position, array(SELECT p.position FROM"
        " aura_dead_letter_parked p WHERE p.dead_letter_id = d.id ORDER BY p.position)"
        " FROM aura_dead_letters d WHERE d.projection = %s AND d.status = 'parked'"
        " ORDER BY d.position", (name,)).fetchall()


@pytest.mark.parametrize("fixed_before_rebuild", [True, False])
def test_dead_letters_are_handed_over_at_the_switch(
    app: AuraApp, fixed_before_rebuild: bool
) -> None:
    from tests.support.poison import POISONED_SPEC, PoisonedDebates
    SPEC = POISONED_SPEC

    _poisoned_log(app)
    PoisonedDebates.fixed_up_to = 0
    try:
        with connect(app.database_url) as conn:
            live = Engine.attach(conn, SPEC)
            while live.runner.position < app.head_position():
                live.advance()
            before = _open_letters(conn, SPEC.name)
            assert len(before) == 2 and all(len(parked) == 1 for _, _, parked in before)
            if fixed_before_rebuild:
                PoisonedDebates.fixed_up_to = app.head_position()
            rebuild = Rebuild(conn, SPEC)
            result = rebuild.run()
            rebuild.close()
            after = _open_letters(conn, SPEC.name)
            superseded = conn.execute(
                "SELECT count(*) FROM aura_dead_letters WHERE status = 'superseded'"
                " AND projection = %s", (f"{SPEC.name}@g1",)).fetchone()
            assert superseded == (2,)  # the replaced read model's letters, kept for audit
            expected_open = [] if fixed_before_rebuild else before
            assert after == expected_open and result.open_dead_letters == len(expected_open)
            if not fixed_before_rebuild:
                # The new generation parked the same events; the fix, then a retry, lands
                # them in the new tables.
                PoisonedDebates.fixed_up_to = app.head_position()
                retried = Engine.attach(conn, SPEC).runner
                for letter_id, in conn.execute(
                        "SELECT id FROM aura_dead_letters WHERE projection = %s AND"
                        " status = 'parked'", (SPEC.name,)).fetchall():
                    assert retried.retry_dead_letter(letter_id)
            assert folds.stored_debate_state(conn, SPEC.storage) == folds.debate_state(conn)
    finally:
        PoisonedDebates.fixed_up_to = 0
