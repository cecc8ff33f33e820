"""The kit for users' own tests: the plugin works in a user's project (the docs' example
tests pass under it), specs fail with diffs, and servers it cannot have are a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aura_es import AuraApp, DomainError
from aura_es.testing import NotCaughtUp, caught_up, event, scenario
from aura_es.testing.servers import PostgresServer
from tests.support.poison import POISONED_SPEC, PoisonedDebates
from tests.support.workers import ROOT

EXAMPLES = ROOT / "docs" / "examples"


def pytest_in_a_users_project(
    args: list[str], pg_server: PostgresServer, cwd: Path,
) -> subprocess.CompletedProcess[str]:
    """pytest as a user runs it: the plugin comes from the installed package's entry
    point; the project's own conftest is not there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_ES_")}
    env["AURA_ES_DATABASE_URL"] = pg_server.admin_url  # reuse this session's server
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_the_docs_example_tests_pass_with_the_plugin(
    pg_server: PostgresServer, tmp_path: Path,
) -> None:
    result = pytest_in_a_users_project(
        [str(EXAMPLES / "test_tenant_activity.py"), "--aura-catalog",
         str(EXAMPLES / "catalog.yaml"), f"--rootdir={tmp_path}"], pg_server, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "5 passed" in result.stdout


@pytest.mark.slow
def test_servers_that_cannot_be_had_are_a_skip_with_the_reason(
    pg_server: PostgresServer, tmp_path: Path,
) -> None:
    (tmp_path / "test_needs_a_db.py").write_text(
        "def test_needs_a_database(aura_database_url):\n    assert aura_database_url\n")
    result = pytest_in_a_users_project(
        ["-rs", "--aura-servers=testcontainers", str(tmp_path / "test_needs_a_db.py")],
        pg_server, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 skipped" in result.stdout
    assert "no PostgreSQL for aura-es tests" in result.stdout
    assert "Docker" in result.stdout or "testcontainers" in result.stdout


def test_a_spec_expecting_other_events_fails_with_a_diff(app: AuraApp) -> None:
    spec = (scenario(app)
            .given(app.start_debate_command("t", ["a"], idempotency_key="d"))
            .when(lambda g: app.reach_consensus_command(g.last, "adopt", idempotency_key="c")))
    with pytest.raises(AssertionError) as failure:
        spec.then(event("aura.debate.consensus_reached.v1", decision="reject"))
    message = str(failure.value)
    assert "- aura.debate.consensus_reached.v1 {\"decision\":\"reject\"}" in message
    assert "+ aura.debate.consensus_reached.v1 {\"decision\":\"adopt\"}" in message
    # The command did run: the spec is about what it stored.
    assert app.get_debate(spec.scene.given_so_far.last).status == "consensus"


def test_a_spec_expecting_an_error_fails_when_the_command_stores(app: AuraApp) -> None:
    with pytest.raises(AssertionError, match="expected to raise DomainError, but it stored"):
        (scenario(app)
         .when(app.start_debate_command("t", ["a"], idempotency_key="d"))
         .then_error(DomainError))
    with pytest.raises(AssertionError, match="does not match"):
        (scenario(app)
         .when(app.start_debate_command("", ["a"], idempotency_key="e"))
         .then_error(DomainError, match="participants"))


def test_a_projection_spec_shows_the_rows_that_differ(app: AuraApp) -> None:
    spec = scenario(app).given(
        app.start_debate_command("one", ["a"], idempotency_key="d1"),
        app.start_debate_command("two", ["a"], idempotency_key="d2"))
    rows = spec.then_rows("DebateStateProjection", [
        {"topic": "one", "status": "open"}, {"topic": "two", "status": "open"}])
    assert len(rows) == 2
    with pytest.raises(AssertionError) as failure:
        spec.then_rows("DebateStateProjection", [
            {"topic": "one", "status": "open"}, {"topic": "three", "status": "open"}])
    assert '- {"status":"open","topic":"three"}' in str(failure.value)
    assert '+ {"status":"open","topic":"two"}' in str(failure.value)


def test_commands_of_the_aura_domain_as_specs(app: AuraApp) -> None:
    """The project's own commands, written as a user would test theirs."""
    call = scenario(app).given(
        app.request_llm_call_command("acme", "openai", "gpt-4o", 10, idempotency_key="r"))
    call.when(lambda g: app.complete_llm_call_command(
        g.last, 5, __import__("decimal").Decimal("0.25"), 12.5, idempotency_key="c"),
    ).then(event("aura.llm_call.completed.v1", completion_tokens=5, cost_usd="0.25",
                 latency_ms=12.5))
    call.when(lambda g: app.fail_llm_call_command(g.last, "x", idempotency_key="f")) \
        .then_error(DomainError, match="it is completed")
    call.when(lambda g: app.complete_llm_call_command(
        g.last, 5, __import__("decimal").Decimal("0.25"), 12.5, idempotency_key="c"),
    ).then_once()


def test_caught_up_retries_transient_failures_as_its_docstring_says(app: AuraApp) -> None:
    """The kit drives the same engine as a worker: a database that fails twice is waited
    out with the projection's backoff, not raised (it was re-raised before)."""
    debate = app.start_debate("flaky", ["a"], idempotency_key="flaky")
    app.add_argument(debate, "a", "for", "fine", round=1, idempotency_key="flaky-1")
    PoisonedDebates.fixed_up_to = 0
    PoisonedDebates.fail_next_transiently = 2
    try:
        done = caught_up(app.database_url, [POISONED_SPEC], timeout=60)
    finally:
        PoisonedDebates.fail_next_transiently = 0
    assert done.applied[POISONED_SPEC.name] == 2 and done.dead_lettered == {
        POISONED_SPEC.name: 0}
    with app.connect() as conn:
        assert conn.execute("SELECT arguments FROM poisoned").fetchall() == [(1,)]


def test_caught_up_gives_up_at_its_timeout_naming_the_failure(app: AuraApp) -> None:
    app.start_debate("down", ["a"], idempotency_key="down")
    PoisonedDebates.fail_next_transiently = 10**6
    try:
        with pytest.raises(NotCaughtUp, match="its last failure: OperationalError"):
            caught_up(app.database_url, [POISONED_SPEC], timeout=2)
    finally:
        PoisonedDebates.fail_next_transiently = 0
