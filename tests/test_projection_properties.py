"""G4 in process: whatever the batch sizes, appends in between and crashes mid-batch, every
read model equals the fold of the log up to its checkpoint; a projection sees only its
source events."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es import AuraApp
from aura_es.catalog import load_catalog
from aura_es.catalog.model import ProjectionSpec
from aura_es.db import connect
from aura_es.load import scenarios
from aura_es.projection.engine.loading import build
from aura_es.projection.engine.runner import BatchRunner
from aura_es.projection.handlers.api import Projection, Tx
from aura_es.store.envelope import EventEnvelope
from tests.support import folds
from tests.support.scenarios import run_scenarios

CATALOG = load_catalog(Path(__file__).resolve().parents[1] / "catalog/projection-catalog.yaml")
_names = itertools.count()


class Crash(Exception):
    """Stands for a process dying after the handler wrote, before the commit."""


def check(conn: psycopg.Connection[Any], runners: dict[str, BatchRunner]) -> None:
    """Every read model equals the independent fold up to its own checkpoint."""
    debate = runners["DebateStateProjection"]
    assert folds.stored_debate_state(conn, debate.projection.storage) == \
        folds.debate_state(conn, debate.position)
    agents = runners["AgentPerformanceProjection"]
    assert folds.stored_agent_performance(conn, agents.projection.storage) == \
        folds.agent_performance(conn, up_to=agents.position)
    assert folds.stored_agent_performance(conn, agents.projection.storage, windows=True) == \
        folds.agent_performance(conn, bucket_seconds=60, up_to=agents.position)
    spend = runners["LLMSpendProjection"]
    assert folds.stored_llm_spend(conn, spend.projection.storage) == \
        folds.llm_spend(conn, spend.position)


def runner(conn: psycopg.Connection[Any], spec: ProjectionSpec, suffix: str) -> BatchRunner:
    projection = build(spec, storage=f"{spec.storage}_{suffix}")
    return BatchRunner(conn, spec, projection, checkpoint_name=f"{spec.name}_{suffix}")


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 6)),
        st.tuples(st.just("step"), st.integers(1, 40)),
        st.tuples(st.just("restart"), st.just(0)),
        st.tuples(st.just("crash"), st.integers(1, 40)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=operations, seed=st.integers(0, 10_000))
def test_read_models_equal_the_fold_at_every_checkpoint(
    app: AuraApp, ops: list[tuple[str, int]], seed: int
) -> None:
    with app.connect() as conn:
        conn.execute("TRUNCATE aura_events, aura_idempotency RESTART IDENTITY")
    source = scenarios(seed, 10_000)
    suffix = f"h{next(_names)}"
    with connect(app.database_url) as conn:
        runners = {s.name: runner(conn, s, suffix) for s in CATALOG.projections}
        for op, n in ops:
            if op == "append":
                run_scenarios(app, source, n)
            elif op == "restart":
                runners = {s.name: runner(conn, s, suffix) for s in CATALOG.projections}
            for name, r in runners.items():
                if op == "step":
                    r.step(limit=n)
                elif op == "crash":
                    before = r.position
                    original = r.projection.handle

                    def crashing(batch: Any, tx: Tx, original: Any = original) -> None:
                        original(batch, tx)
                        raise Crash

                    r.projection.handle = crashing  # type: ignore[method-assign]
                    with contextlib.suppress(Crash):
                        r.step(limit=n)
                    runners[name] = runner(conn, r.spec, suffix)
                    assert runners[name].position in (before, r.position)
            check(conn, runners)
        for r in runners.values():
            r.run_until_caught_up()
        check(conn, runners)


class Recording(Projection):
    """A user-written projection that records every topic it is given."""

    def create(self, tx: Tx) -> None:
        tx.execute(f'CREATE TABLE IF NOT EXISTS "{self.storage}" (position bigint, topic text)')

    def handle(self, batch: Any, tx: Tx) -> None:
        events: list[EventEnvelope] = list(batch)
        tx.cursor.executemany(
            f'INSERT INTO "{self.storage}" VALUES (%s, %s)',
            [(e.position, e.topic) for e in events],
        )


@pytest.mark.parametrize("topics", [
    ["aura.decision.approved.v1"],
    ["aura.debate.failed.v1", "aura.llm_call.completed.v1"],
])
def test_a_projection_sees_only_its_source_events(app: AuraApp, topics: list[str]) -> None:
    run_scenarios(app, scenarios(5, 10_000), 60)
    spec = ProjectionSpec(
        name="Recording", source_events=topics, output_model="Seen", storage="seen",
        handler="tests.test_projection_properties:Recording", batch_size=7,
    )
    with connect(app.database_url) as conn:
        r = BatchRunner(conn, spec, Recording(spec))
        r.run_until_caught_up()
        seen = conn.execute("SELECT position, topic FROM seen ORDER BY position").fetchall()
        expected = conn.execute(
            "SELECT notification_id, topic FROM aura_events WHERE topic = ANY(%s)"
            " ORDER BY notification_id", (topics,),
        ).fetchall()
    assert seen == expected and seen
    assert r.position == app.head_position()


def test_a_read_model_from_before_positions_were_kept_is_upgraded_in_place(
    app: AuraApp,
) -> None:
    run_scenarios(app, scenarios(3, 10_000), 30)
    spec = CATALOG.get("AgentPerformanceProjection")
    with connect(app.database_url) as conn:
        first = runner(conn, spec, "old")
        first.run_until_caught_up()
        table = first.projection.storage
        conn.execute(f'ALTER TABLE "{table}" DROP COLUMN first_proposal_at__pos,'
                     " DROP COLUMN last_decision_at__pos")
        run_scenarios(app, scenarios(4, 10_000), 30)
        again = runner(conn, spec, "old")
        again.run_until_caught_up()
        assert folds.stored_agent_performance(conn, table) == folds.agent_performance(conn)
