"""G12 in one process, on a real PostgreSQL: the deal, the hash, splits and the fence."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es import AuraApp
from aura_es.catalog import load_catalog
from aura_es.catalog.model import ProjectionSpec
from aura_es.db import connect
from aura_es.projection.engine.engine import Engine
from aura_es.projection.engine.runner import LostOwnership
from aura_es.projection.state import checkpoints, leases
from aura_es.replay import Rebuild
from aura_es.store import partitioning
from aura_es.store.partitioning import Partition
from aura_es.worker.deal import deal
from tests.support import partitions as parts
from tests.support.cli import assert_one_line_error, aura

# -- the deal ----------------------------------------------------------------------------

@given(st.lists(st.sampled_from(["join", "leave", "kill"]), max_size=40),
       st.integers(1, 64), st.randoms())
def test_for_any_joins_leaves_and_kills_the_deal_covers_every_partition_once(
    moves: list[str], partitions: int, rng: Any,
) -> None:
    members: list[str] = []
    born = 0
    for move in moves:
        if move == "join":
            members.append(f"w{born}")  # the youngest joins last
            born += 1
        elif members:
            members.pop(rng.randrange(len(members)))  # a leave and a kill look alike
        shares = deal(members, partitions)
        dealt = [p for share in shares.values() for p in share]
        if not members:
            assert shares == {}
            continue
        assert sorted(dealt) == list(range(partitions))  # each exactly once
        sizes = [len(s) for s in shares.values()]
        assert max(sizes) - min(sizes) <= 1
        assert deal(list(members), partitions) == shares  # the same on every host


def test_one_partition_stays_with_the_oldest_worker_when_a_younger_one_joins() -> None:
    assert deal(["old"], 1) == {"old": frozenset({0})}
    assert deal(["old", "new"], 1) == {"old": frozenset({0}), "new": frozenset()}


# -- the hash ----------------------------------------------------------------------------

@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # it only reads
@given(st.lists(st.uuids(), min_size=1, max_size=50), st.integers(1, 1024))
def test_postgres_and_python_put_an_aggregate_in_the_same_partition(
    db_url: str, ids: list[uuid.UUID], count: int,
) -> None:
    with connect(db_url) as conn:
        rows = conn.execute(
            psycopg.sql.SQL("SELECT {k} %% %s FROM unnest(%s::uuid[]) AS x(originator_id)")
            .format(k=partitioning.key_sql("originator_id")), (count, ids)).fetchall()
    assert [r[0] for r in rows] == [partitioning.partition_of(i, count) for i in ids]


def test_the_documented_hash_of_a_known_id() -> None:
    # docs/partitions.md gives this example: a change here moves every aggregate.
    known = uuid.UUID("6f1c2b8e-5a4d-4c3b-9e2f-1a2b3c4d5e6f")
    assert partitioning.key_of(known) == 215093688054262657
    assert partitioning.partition_of(known, 16) == 1


# -- the fence ---------------------------------------------------------------------------

def _spec(tmp_path: Path, partitions: int) -> ProjectionSpec:
    return load_catalog(parts.catalog(tmp_path, partitions)).get(parts.NAME)


def _write(db_url: str, debates: int, events: int) -> None:
    app = AuraApp(db_url)
    try:
        for d in range(debates):
            debate = app.start_debate("fence", ["a", "b"], idempotency_key=f"f{d}")
            for n in range(1, events):
                app.add_argument(debate, "a", "for", f"p{n}", round=n,
                                 idempotency_key=f"f{d}:{n}")
    finally:
        app.close()


def _step_until_caught_up(engine: Engine) -> None:
    while not (progress := engine.advance()).step or not progress.step.caught_up:
        pass


def _catch_up(conn: psycopg.Connection[Any], spec: ProjectionSpec) -> None:
    """Every partition applied up to the head, in this process."""
    for partition in range(spec.partitions):
        _step_until_caught_up(Engine.attach(conn, spec, partition=partition))


def test_a_worker_that_lost_its_lease_commits_nothing(db_url: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, 2)
    _write(db_url, 6, 3)
    with connect(db_url) as first, connect(db_url) as second:
        Engine.attach(first, spec)  # lays the two partitions out
        epoch = leases.claim(first, spec.name, 0, "first", live=[])
        assert epoch is not None
        old = Engine.attach(first, spec, partition=0, lease=("first", epoch))
        # "first" is taken for dead (not among the live): "second" claims partition 0.
        taken = leases.claim(second, spec.name, 0, "second", live=["second"])
        assert taken == epoch + 1
        with first.cursor() as cur:
            before = checkpoints.get(cur, spec.name, 0)
            rows_before = first.execute(f"SELECT count(*) FROM {parts.STORAGE}").fetchone()
        with pytest.raises(LostOwnership, match="taken it over"):
            old.advance()
        with first.cursor() as cur:
            assert checkpoints.get(cur, spec.name, 0) == before
        assert first.execute(f"SELECT count(*) FROM {parts.STORAGE}").fetchone() == rows_before
        # The new owner applies exactly partition 0's aggregates.
        _step_until_caught_up(Engine.attach(second, spec, partition=0, lease=("second", taken)))
        ids = [r[0] for r in second.execute(f"SELECT aggregate_id FROM {parts.STORAGE}")]
        assert ids and all(Partition(0, 2).holds(i) for i in ids)


def test_a_claim_never_takes_a_partition_from_a_live_owner(db_url: str, tmp_path: Path) -> None:
    spec = _spec(tmp_path, 2)
    with connect(db_url) as conn:
        Engine.attach(conn, spec)
        assert leases.claim(conn, spec.name, 1, "a", live=["a"]) == 1
        assert leases.claim(conn, spec.name, 1, "b", live=["a", "b"]) is None
        leases.release(conn, spec.name, 1, "a", 1)
        assert leases.claim(conn, spec.name, 1, "b", live=["a", "b"]) == 2


def test_a_split_goes_on_from_the_checkpoints_and_other_changes_are_refused(
    db_url: str, tmp_path: Path,
) -> None:
    _write(db_url, 8, 4)
    with connect(db_url) as conn:
        _catch_up(conn, _spec(tmp_path, 2))
        applied = parts.applied(conn)
        assert applied == 32
        with pytest.raises(checkpoints.PartitionsChanged, match="partitions is 3 in this"):
            Engine.attach(conn, _spec(tmp_path, 3), partition=0)
        with conn.cursor() as cur:
            assert [r.partitions for r in checkpoints.rows_of(cur, parts.NAME)] == [2, 2]
        split = _spec(tmp_path, 4)
        engines = [Engine.attach(conn, split, partition=p) for p in range(4)]
        with conn.cursor() as cur:
            rows = checkpoints.rows_of(cur, parts.NAME)
        assert [r.partitions for r in rows] == [4] * 4
        assert rows[2].cursor == rows[0].cursor and rows[3].cursor == rows[1].cursor
        for engine in engines:  # nothing new: the split applies nothing twice
            step = engine.advance().step
            assert step is not None and step.applied == 0
        assert parts.applied(conn) == applied


# -- the command line --------------------------------------------------------------------

def test_workers_run_refuses_a_catalog_that_is_not_a_split_and_changes_nothing(
    db_url: str, tmp_path: Path, cli_env: dict[str, str],
) -> None:
    with connect(db_url) as conn:
        Engine.attach(conn, _spec(tmp_path, 4))
        before = conn.execute("SELECT * FROM aura_projection_checkpoints").fetchall()
        other = tmp_path / "other"
        other.mkdir()
        env = cli_env | {"PYTHONPATH": str(parts.ROOT)}
        for count in (2, 6):
            result = aura("workers", "run", "--catalog", str(parts.catalog(other, count)),
                          env=env)
            assert_one_line_error(result, repr(parts.NAME), f"partitions is {count}",
                                  "but 4 in the read model", "aura-es replay")
        assert conn.execute("SELECT * FROM aura_projection_checkpoints").fetchall() == before


@pytest.mark.parametrize("value", ["0", "soon", "nan", "-5", "1e9"])
def test_workers_run_refuses_a_bad_lease_in_one_line(
    value: str, cli_env: dict[str, str],
) -> None:
    result = aura("workers", "run", env=cli_env | {"AURA_ES_LEASE_SECONDS": value})
    assert_one_line_error(result, f"AURA_ES_LEASE_SECONDS={value!r}")


def test_status_partitions_shows_each_partition_with_its_owner_and_lag(
    db_url: str, tmp_path: Path, cli_env: dict[str, str],
) -> None:
    _write(db_url, 6, 2)
    spec = _spec(tmp_path, 3)
    with connect(db_url) as conn:
        Engine.attach(conn, spec)
        assert leases.claim(conn, spec.name, 1, "someone", live=[]) == 1
        engine = Engine.attach(conn, spec, partition=1, lease=("someone", 1))
        engine.advance()
    env = cli_env | {"PYTHONPATH": str(parts.ROOT)}
    catalog = str(tmp_path / "catalog.yaml")
    result = aura("status", "--partitions", "--json", "--catalog", catalog, env=env)
    assert result.returncode == 0, result.stderr
    shown = orjson.loads(result.stdout)
    rows = {r["partition"]: r for r in shown["partitions"]}
    assert sorted(rows) == [0, 1, 2]
    assert rows[1]["owner"] == "someone" and rows[1]["epoch"] == 1
    assert not rows[1]["owner_alive"]  # no such worker is alive
    assert rows[1]["lag_events"] == 0 and rows[0]["lag_events"] + rows[2]["lag_events"] > 0
    (summary,) = shown["projections"]
    assert summary["partitions"] == 3
    assert summary["partitions_unowned"] == 3  # two free, one held by a worker that is gone
    assert summary["lag_events"] == rows[0]["lag_events"] + rows[2]["lag_events"]
    table = aura("status", "--partitions", "--catalog", catalog, env=env)
    assert table.returncode == 0, table.stderr
    assert "ExactlyOnce (3 partitions)" in table.stdout and "gone" in table.stdout


def test_a_replay_with_another_count_rebuilds_and_switches_every_partition_at_once(
    db_url: str, tmp_path: Path,
) -> None:
    _write(db_url, 10, 3)
    with connect(db_url) as conn:
        _catch_up(conn, _spec(tmp_path, 2))
        live = sorted(conn.execute(f"SELECT * FROM {parts.STORAGE}").fetchall())
        result = Rebuild(conn, _spec(tmp_path, 3)).run()
        assert result.generation == 2
        with conn.cursor() as cur:
            rows = checkpoints.rows_of(cur, parts.NAME)
        assert [r.partition for r in rows] == [0, 1, 2]
        assert {r.partitions for r in rows} == {3} and len({r.cursor for r in rows}) == 1
        assert sorted(conn.execute(f"SELECT * FROM {parts.STORAGE}").fetchall()) == live
        # The old count's workers meet the new layout: refused, nothing written.
        with pytest.raises(checkpoints.PartitionsChanged):
            Engine.attach(conn, _spec(tmp_path, 2), partition=0)


def test_a_partitioned_replay_builds_its_partitions_in_parallel_and_switches_once(
    db_url: str, tmp_path: Path,
) -> None:
    _write(db_url, 12, 3)
    spec = _spec(tmp_path, 4)
    with connect(db_url) as conn:
        _catch_up(conn, spec)
        live = sorted(conn.execute(f"SELECT * FROM {parts.STORAGE}").fetchall())
        rebuild = Rebuild(conn, spec, processes=2, database_url=db_url)
        try:
            assert rebuild.partitions == 4  # the shadow is split like the projection
            done: list[int] = []
            result = rebuild.run(lambda p: done.append(p.done))
        finally:
            rebuild.close()
        assert result.events == 36 and done[-1] == 36
        with conn.cursor() as cur:
            rows = checkpoints.rows_of(cur, parts.NAME)
            assert checkpoints.rows_of(cur, rebuild.shadow) == []
        assert [(r.partition, r.partitions, r.generation) for r in rows] == [
            (p, 4, 2) for p in range(4)]
        assert sum(r.events_applied for r in rows) == 36
        assert sorted(conn.execute(f"SELECT * FROM {parts.STORAGE}").fetchall()) == live
        assert parts.applied(conn) == 36  # once each: a second application breaks the key


def test_replay_of_a_partitioned_projection_from_the_command_line(
    db_url: str, tmp_path: Path, cli_env: dict[str, str],
) -> None:
    _write(db_url, 6, 2)
    spec = _spec(tmp_path, 2)
    with connect(db_url) as conn:
        _catch_up(conn, spec)
    env = cli_env | {"PYTHONPATH": str(parts.ROOT)}
    result = aura("replay", parts.NAME, "--processes", "2", "--json", "--catalog",
                  str(tmp_path / "catalog.yaml"), env=env)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["events"] == 12
    with connect(db_url) as conn:
        assert parts.applied(conn) == 12
