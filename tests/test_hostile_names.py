"""A projection's tables are known exactly: recorded when created, never matched by name.
A replay drops only its own; names that could collide are refused when the catalog is
validated, and a table that is not a read model is never adopted or dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_es import AuraApp, ConfigurationError
from aura_es.catalog import load_catalog
from aura_es.catalog.model import ProjectionSpec
from aura_es.db import connect
from aura_es.identifiers import (
    MAX_IDENTIFIER_BYTES,
    aux_table,
    generation_table,
    storage_problem,
)
from aura_es.projection.engine.loading import build
from aura_es.projection.engine.runner import BatchRunner
from aura_es.replay import Rebuild, plan_rebuild
from tests.support.cli import assert_one_line_error, aura
from tests.support.workers import CATALOG

DEBATE_TOPICS = ["aura.debate.started.v1", "aura.debate.argument_added.v1"]
DECISION_TOPICS = ["aura.decision.proposed.v1", "aura.decision.approved.v1"]


def debates(name: str, storage: str) -> ProjectionSpec:
    return ProjectionSpec.model_validate({
        "name": name, "source_events": DEBATE_TOPICS, "output_model": "D", "storage": storage,
        "handler": "projections.debate_state:DebateStateProjection"})


def windowed(name: str, storage: str) -> ProjectionSpec:
    return ProjectionSpec.model_validate({
        "name": name, "source_events": DECISION_TOPICS, "output_model": "W",
        "storage": storage, "update_strategy": "incremental",
        "windowing": {"type": "tumbling", "duration": "1h"},
        "declarative": {"key": "payload.agent_id", "fields": {"n": {"op": "count"}}},
    })


def tables(conn: object) -> set[str]:
    return {row[0] for row in conn.execute(  # type: ignore[attr-defined]
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        " AND tablename NOT LIKE 'aura%'")}


def catch_up(conn: object, *specs: ProjectionSpec) -> None:
    for spec in specs:
        BatchRunner(conn, spec, build(spec)).run_until_caught_up()  # type: ignore[arg-type]


@pytest.mark.parametrize("storage", ["cc__x", "ww__windows", "x_", "aura_events",
                                     "a" * 41, "Upper", "1abc", "debate state"])
def test_a_storage_name_that_could_collide_is_refused_by_catalog_validate(
    tmp_path: Path, storage: str,
) -> None:
    data = yaml.safe_load(CATALOG.read_text())
    data["projections"][1]["storage"] = storage
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    assert_one_line_error(aura("catalog", "validate", str(path)), "storage", repr(storage))


def test_a_replay_drops_only_its_own_tables_never_one_sharing_its_prefix(app: AuraApp) -> None:
    a, b = debates("A", "cc"), debates("B", "cc_x")
    w, v = windowed("W", "ww"), windowed("V", "ww_windows")
    for i in range(5):
        app.start_debate(f"t{i}", ["a"], idempotency_key=f"d{i}")
        app.propose_decision(f"agent{i}", "x", idempotency_key=f"p{i}")
    with connect(app.database_url) as conn:
        catch_up(conn, a, b, w, v)
        before = tables(conn)
        assert before == {"cc", "cc_x", "ww", "ww__windows", "ww_windows", "ww_windows__windows"}
        assert plan_rebuild(conn, a).drop == ["cc"]
        assert sorted(plan_rebuild(conn, w).drop) == ["ww", "ww__windows"]
        for spec, own in ((a, ["cc"]), (w, ["ww", "ww__windows"])):
            rebuild = Rebuild(conn, spec)
            result = rebuild.run()
            rebuild.close()
            assert sorted(result.dropped) == own
        assert tables(conn) == {"cc__g2", "cc_x", "ww__g2", "ww__g2__windows", "ww_windows",
                                "ww_windows__windows"}
        assert conn.execute("SELECT count(*) FROM cc_x").fetchone() == (5,)
        assert conn.execute("SELECT count(*) FROM cc").fetchone() == (5,)  # now the view


def test_a_users_own_table_with_the_storage_name_is_never_adopted(app: AuraApp) -> None:
    with connect(app.database_url) as conn:
        conn.execute("CREATE TABLE mine (id int)")
        conn.execute("INSERT INTO mine VALUES (1)")
        spec = debates("Mine", "mine")
        with pytest.raises(ConfigurationError, match="'mine' already exists and is not a read"):
            BatchRunner(conn, spec, build(spec))
        assert conn.execute("SELECT count(*) FROM aura_projection_checkpoints").fetchone() == (0,)
        assert conn.execute("SELECT * FROM mine").fetchall() == [(1,)]


def test_two_projections_with_one_storage_in_one_database_are_refused(app: AuraApp) -> None:
    """Two catalogs (two teams) pointed at one database: the second may not write the
    first one's table."""
    with connect(app.database_url) as conn:
        catch_up(conn, debates("First", "shared"))
        second = debates("Second", "shared")
        with pytest.raises(ConfigurationError, match="belongs to projection 'First'"):
            BatchRunner(conn, second, build(second))


names = st.from_regex(r"[a-z][a-z0-9_]{0,70}", fullmatch=True)


@settings(max_examples=500, deadline=None)
@given(first=names, second=names, generations=st.integers(1, 10_000))
def test_valid_storage_names_never_derive_the_same_table(
    first: str, second: str, generations: int,
) -> None:
    """Identifiers near 63 bytes and with shared prefixes: every table derived from two
    distinct valid storage names is distinct and fits PostgreSQL's limit (no silent
    truncation, which is how two names become one)."""
    if first == second or storage_problem(first) or storage_problem(second):
        return

    def derived(storage: str) -> set[str]:
        out = set()
        for generation in (1, 2, generations):
            base = generation_table(storage, generation)
            out |= {base, aux_table(base, "windows"), aux_table(base, "calls")}
        return out

    a, b = derived(first), derived(second)
    assert not a & b
    assert all(len(name.encode()) <= MAX_IDENTIFIER_BYTES for name in a | b)


def test_the_shipped_catalog_passes_the_name_rules() -> None:
    for spec in load_catalog(CATALOG).projections:
        assert storage_problem(spec.storage) is None
