"""Side effects are durable: recorded in the batch's transaction, run after it by the
dispatcher, retried, dead after the last retry (visible and retryable with `aura-es
dlq`), never lost in a crash, never run for a replay; a dead letter's retry records the
side effects the live path would have."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es import AuraApp
from aura_es.catalog import load_catalog
from aura_es.catalog.model import ErrorHandling, ProjectionSpec
from aura_es.db import connect
from aura_es.projection.engine import retry as dlq_retry
from aura_es.projection.engine.dispatch import Dispatcher
from aura_es.projection.engine.engine import Engine
from aura_es.projection.engine.loading import build
from aura_es.projection.engine.runner import BatchRunner
from aura_es.projection.state import outbox, presence
from tests.support import poison
from tests.support.chaos import quick_catalog
from tests.support.cli import aura
from tests.support.workers import env_for, start_supervisor, wait_for

TOPICS = ["aura.debate.started.v1", "aura.debate.argument_added.v1",
          "aura.debate.consensus_reached.v1", "aura.debate.failed.v1"]


def notifying(name: str, max_retries: int = 2) -> ProjectionSpec:
    return ProjectionSpec.model_validate({
        "name": name, "source_events": TOPICS, "output_model": "DebateState",
        "storage": name.lower(), "batch_size": 8,
        "handler": "tests.support.poison:NotifyingPoisonedDebates",
        "error_handling": ErrorHandling(retry_policy="none", max_retries=max_retries),
    })


def argue(app: AuraApp, debates: int, texts: list[str]) -> list[int]:
    """Debates with one argument per text; returns the arguments' positions."""
    positions: list[int] = []
    for d in range(debates):
        debate = app.start_debate(f"t{d}", ["a"], idempotency_key=f"d{d}")
        for n, text in enumerate(texts):
            result = app.add_argument(debate, "a", "for", text, round=n + 1,
                                      idempotency_key=f"d{d}a{n}")
            positions.extend(result.positions)
    return positions


def states(conn: Any, projection: str) -> dict[str, int]:
    return dict(conn.execute(
        "SELECT status, count(*) FROM aura_side_effects WHERE projection = %s GROUP BY status",
        (projection,)).fetchall())


@pytest.fixture(autouse=True)
def _clean() -> None:
    poison.RECEIVED.clear()
    poison.FAIL_NEXT[0] = 0
    poison.PoisonedDebates.fixed_up_to = 0


def test_recorded_side_effects_survive_a_crash_before_they_ran(app: AuraApp) -> None:
    spec = notifying("Crashing")
    argued = argue(app, 3, ["one", "two"])
    with connect(app.database_url) as conn:
        BatchRunner(conn, spec, build(spec), checkpoint_name=spec.name).run_until_caught_up()
    # The process dies here: the batches committed, no side effect ran.
    assert poison.RECEIVED == []
    with connect(app.database_url) as conn:  # a new worker, after the restart
        done = Dispatcher(spec.name, spec.error_handling).run_due(conn)
        assert done.done == len(argued) == 6
        assert states(conn, spec.name) == {"done": 6}
    keys = [key for key, _ in poison.RECEIVED]
    assert len(set(keys)) == 6 and all(key.endswith(":test.argument-webhook") for key in keys)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(failures=st.lists(st.booleans(), min_size=1, max_size=40),
       max_retries=st.integers(0, 3))
def test_every_side_effect_is_done_once_or_dead_after_its_last_retry(
    app: AuraApp, failures: list[bool], max_retries: int,
) -> None:
    """Whatever the receiver's failures: nothing lost, nothing done twice, dead exactly
    when it failed 1 + max_retries times."""
    spec = notifying(f"Flaky{len(failures)}r{max_retries}", max_retries=max_retries)
    with connect(app.database_url) as conn:
        conn.execute("TRUNCATE aura_events, aura_idempotency, aura_side_effects,"
                     " aura_projection_checkpoints RESTART IDENTITY")
        conn.execute(f"DROP TABLE IF EXISTS {spec.storage}")
    poison.RECEIVED.clear()
    argue(app, 2, ["x", "y"])
    schedule = iter(failures)
    attempts: dict[str, list[bool]] = {}

    def flaky(payload: dict[str, Any], key: str) -> None:
        failed = next(schedule, False)
        attempts.setdefault(key, []).append(failed)
        if failed:
            raise ConnectionError("flaky")

    original = poison.argument_webhook
    with connect(app.database_url) as conn:
        BatchRunner(conn, spec, build(spec), checkpoint_name=spec.name).run_until_caught_up()
        from aura_es.projection.handlers import actions
        actions._actions["test.argument-webhook"] = flaky
        try:
            dispatcher = Dispatcher(spec.name, spec.error_handling)
            for _ in range(10):
                dispatcher.run_due(conn)
        finally:
            actions._actions["test.argument-webhook"] = original
        rows = {r.idempotency_key: r for r in outbox.due(conn, spec.name, 100)}
        final = dict(conn.execute("SELECT idempotency_key, status FROM aura_side_effects"
                                  " WHERE projection = %s", (spec.name,)).fetchall())
    assert rows == {}  # nothing left pending
    assert len(final) == 4 and set(final) == set(attempts)
    for key, tries in attempts.items():
        successes = tries.count(False)
        assert successes <= 1  # never done twice
        if final[key] == "done":
            assert tries[-1] is False and successes == 1
        else:
            assert final[key] == "dead" and tries == [True] * (1 + max_retries)


def test_a_dead_side_effect_is_listed_and_can_be_retried(app: AuraApp) -> None:
    spec = notifying("Dead", max_retries=0)
    argue(app, 1, ["one"])
    poison.FAIL_NEXT[0] = 1
    with connect(app.database_url) as conn:
        BatchRunner(conn, spec, build(spec), checkpoint_name=spec.name).run_until_caught_up()
        assert Dispatcher(spec.name, spec.error_handling).run_due(conn).dead == 1
    env = env_for(app.database_url)
    listed = json.loads(aura("dlq", "side-effects", "--json", env=env).stdout)
    assert [(d["projection"], d["action"], d["status"]) for d in listed] == [
        (spec.name, "test.argument-webhook", "dead")]
    assert "does not answer" in listed[0]["last_error"]
    retried = aura("dlq", "retry-side-effect", str(listed[0]["id"]), "--json", env=env)
    assert retried.returncode == 0, retried.stderr
    with connect(app.database_url) as conn:
        assert Dispatcher(spec.name, spec.error_handling).run_due(conn).done == 1
        assert states(conn, spec.name) == {"done": 1}
    again = aura("dlq", "retry-side-effect", str(listed[0]["id"]), env=env)
    assert again.returncode == 2 and "no dead side effect" in again.stderr


def test_a_dead_letters_retry_records_the_side_effects_the_live_path_would_have(
    app: AuraApp,
) -> None:
    spec = notifying("Retried", max_retries=0)
    argued = argue(app, 2, ["fine", "POISON", "after"])
    with connect(app.database_url) as conn:
        engine = Engine(conn, spec)
        while engine.runner.position < app.head_position():
            engine.advance()
        dispatcher = Dispatcher(spec.name, spec.error_handling)
        dispatcher.run_due(conn)
        live = {key for key, _ in poison.RECEIVED}
        assert len(live) == 2  # the two "fine": each POISON is dead-lettered, "after" parked
        poison.PoisonedDebates.fixed_up_to = app.head_position()
        letters = dlq_retry.open_letters(conn)
        outcomes = dlq_retry.retry_dead_letters(
            conn, _catalog_with(spec), letters)
        assert all(o["applied"] for o in outcomes) and len(outcomes) == 2
        dispatcher.run_due(conn)
    assert len({key for key, _ in poison.RECEIVED}) == len(argued) == 6


def _catalog_with(spec: ProjectionSpec) -> Any:
    from aura_es.catalog.model import Catalog
    return Catalog(projections=[spec])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_worker_runs_the_side_effects_its_batches_record(
    app: AuraApp, tmp_path: Path,
) -> None:
    catalog = quick_catalog(tmp_path, handler="tests.support.poison:NotifyingPoisonedDebates")
    received = tmp_path / "received.log"
    argued = argue(app, 4, ["a", "b"])
    supervisor = start_supervisor(
        app.database_url, "DebateStateProjection", catalog=catalog, log=tmp_path / "log",
        env={"AURA_TEST_SIDE_EFFECT_LOG": str(received)})
    try:
        wait_for("every side effect", lambda: received.exists() and len(
            received.read_text().splitlines()) >= len(argued), 60)
        with connect(app.database_url) as conn:
            wait_for("them marked done", lambda: states(
                conn, "DebateStateProjection") == {"done": len(argued)}, 30)
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=60)
    assert len(set(received.read_text().splitlines())) == len(argued)


def status_row(db_url: str, catalog: Path, projection: str) -> dict[str, Any]:
    result = aura("status", "--json", "--catalog", str(catalog), env=env_for(db_url))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["projections"]
    return next(r for r in rows if r["projection"] == projection)


def test_a_worker_busy_with_a_slow_side_effect_is_shown_running(
    app: AuraApp, tmp_path: Path,
) -> None:
    """Its loop is inside one side effect for longer than a heartbeat's life (5 s): the
    pulse keeps it alive in `status` (it was shown as stopped)."""
    catalog = quick_catalog(tmp_path, handler="tests.support.poison:NotifyingPoisonedDebates")
    received, gate = tmp_path / "received.log", tmp_path / "gate"
    argue(app, 1, ["slow"])
    supervisor = start_supervisor(
        app.database_url, "DebateStateProjection", catalog=catalog, log=tmp_path / "log",
        env={"AURA_TEST_SIDE_EFFECT_LOG": str(received), "AURA_TEST_SIDE_EFFECT_GATE": str(gate)})
    try:
        wait_for("the side effect to start", lambda: received.exists()
                 and received.read_text().startswith("started"), 60)
        with connect(app.database_url) as conn:
            started = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            # The database's clock says a heartbeat sent at the start has gone stale.
            wait_for("a heartbeat's life to pass", lambda: conn.execute(
                "SELECT now() > %s + make_interval(secs => %s)",
                (started, presence.ALIVE_SECONDS + 1)).fetchone()[0], 30)  # type: ignore[index]
        row = status_row(app.database_url, catalog, "DebateStateProjection")
        assert row["state"] == "running", row
        assert row["side_effects_pending"] == 1 and row["side_effects_dead"] == 0
        gate.touch()
        with connect(app.database_url) as conn:
            wait_for("it marked done", lambda: states(
                conn, "DebateStateProjection") == {"done": 1}, 30)
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=60)


def test_dead_side_effects_need_attention_in_status(app: AuraApp, tmp_path: Path) -> None:
    catalog = quick_catalog(tmp_path, handler="tests.support.poison:NotifyingPoisonedDebates",
                            error_handling={"retry_policy": "none", "max_retries": 0})
    (spec,) = [s for s in load_catalog(catalog).projections
               if s.name == "DebateStateProjection"]
    argue(app, 1, ["one", "two"])
    poison.FAIL_NEXT[0] = 1
    with connect(app.database_url) as conn:
        BatchRunner(conn, spec, build(spec)).run_until_caught_up()
        assert Dispatcher(spec.name, spec.error_handling).run_due(conn).dead == 1
    row = status_row(app.database_url, catalog, spec.name)
    assert (row["side_effects_dead"], row["side_effects_pending"]) == (1, 0)
    table = aura("status", "--catalog", str(catalog), env={
        **env_for(app.database_url), "COLUMNS": "200"})
    line = next(x for x in table.stdout.splitlines() if spec.name in x)
    assert "1 dead side effects" in line


def test_an_error_needs_attention_until_the_worker_next_does_its_work(db_url: str) -> None:
    """The presence rows as the status reads them: an error is current until a healthy
    step follows it; then it is history (kept, not flagged)."""
    def beat(error: str | None = None, healthy: bool = False) -> presence.Worker:
        with connect(db_url) as conn:
            presence.beat(conn, "w1", "P", presence.Beat(
                role="active", breaker="closed", next_probe_seconds=None,
                events_per_second=0.0, error=error, healthy=healthy))
            (worker,) = presence.every(conn)["P"]
            return worker

    assert not beat().error_current
    failed = beat(error="OperationalError: the server went away")
    assert failed.error_current and failed.last_error is not None
    assert beat().error_current  # a heartbeat alone is not a recovery
    recovered = beat(healthy=True)
    assert not recovered.error_current
    assert recovered.last_error == "OperationalError: the server went away"  # history
    assert beat(error="TimeoutError: again").error_current
