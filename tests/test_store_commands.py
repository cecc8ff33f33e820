"""Commands on the AURA aggregates: results, state, domain errors that store nothing."""

from __future__ import annotations

import select
from decimal import Decimal
from uuid import uuid4

import psycopg
import pytest

from aura_es import (
    AggregateNotFound,
    AuraApp,
    DomainError,
    IdempotencyKeyConflict,
    InvalidIdempotencyKey,
)
from aura_es.domain.debate import ArgumentAdded
from aura_es.store import liveness
from aura_es.testing import event, scenario
from tests.support.workers import wait_for


def test_debate_lifecycle_and_state(app: AuraApp) -> None:
    debate_id = app.start_debate("AI ethics", ["a", "b"], idempotency_key="s", tenant_id="acme")
    app.add_argument(debate_id, "a", "for", "yes", round=1, idempotency_key="a1")
    app.add_argument(debate_id, "b", "against", "no", round=2, idempotency_key="a2")
    result = app.reach_consensus(debate_id, "adopt", idempotency_key="c")
    debate = app.get_debate(debate_id)
    assert (debate.status, debate.rounds, debate.arguments, debate.decision) == (
        "consensus", 2, 2, "adopt",
    )
    assert debate.tenant_id == "acme"
    assert (result.from_version, result.to_version, result.duplicate) == (4, 4, False)
    assert result.positions == (4,)


def test_a_concluded_debate_refuses_arguments_as_a_spec(app: AuraApp) -> None:
    (scenario(app)
     .given(app.start_debate_command("AI", ["a"], idempotency_key="s"),
            lambda g: app.reach_consensus_command(g.last, "adopt", idempotency_key="c"))
     .when(lambda g: app.add_argument_command(g.ids[0], "a", "for", "late", round=1,
                                              idempotency_key="late"))
     .then_error(DomainError, match="it is consensus"))


def test_an_argument_records_its_round_as_a_spec(app: AuraApp) -> None:
    (scenario(app)
     .given(app.start_debate_command("AI", ["a"], idempotency_key="s"))
     .when(lambda g: app.add_argument_command(g.last, "a", "for", "yes", round=3,
                                              idempotency_key="a"))
     .then(event(ArgumentAdded, agent_id="a", position="for", text="yes", round=3)))


def test_retried_create_returns_the_same_id_and_stores_once(app: AuraApp) -> None:
    ids = {app.start_debate("t", ["a"], idempotency_key="same") for _ in range(5)}
    assert len(ids) == 1
    assert app.head_position() == 1


def test_retry_returns_the_original_result(app: AuraApp) -> None:
    call_id = app.request_llm_call("acme", "openai", "gpt-4o", 10, idempotency_key="r")
    first = app.complete_llm_call(call_id, 5, Decimal("0.01"), 12.5, idempotency_key="c")
    again = app.complete_llm_call(call_id, 5, Decimal("0.01"), 12.5, idempotency_key="c")
    assert again.duplicate and not first.duplicate
    assert (again.aggregate_id, again.from_version, again.to_version, again.positions) == (
        first.aggregate_id, first.from_version, first.to_version, first.positions,
    )


def test_same_key_other_payload_is_a_conflict_and_stores_nothing(app: AuraApp) -> None:
    debate_id = app.start_debate("t", ["a"], idempotency_key="s")
    app.add_argument(debate_id, "a", "for", "x", round=1, idempotency_key="k")
    head = app.head_position()
    with pytest.raises(IdempotencyKeyConflict):
        app.add_argument(debate_id, "a", "against", "x", round=1, idempotency_key="k")
    assert app.head_position() == head


@pytest.mark.parametrize(
    "command",
    [
        lambda app, d, c: app.start_debate("", ["a"], idempotency_key="new"),
        lambda app, d, c: app.start_debate("t", [], idempotency_key="new"),
        lambda app, d, c: app.add_argument(d, "a", "for", "x", round=0, idempotency_key="new"),
        lambda app, d, c: app.reach_consensus(d, "x", idempotency_key="new"),  # d has failed
        lambda app, d, c: app.request_llm_call("t", "p", "m", -1, idempotency_key="new"),
        lambda app, d, c: app.complete_llm_call(c, -5, Decimal(1), 1.0, idempotency_key="new"),
        lambda app, d, c: app.complete_llm_call(c, 5, Decimal(-1), 1.0, idempotency_key="new"),
        lambda app, d, c: app.approve_decision(d, "x", idempotency_key="new"),  # not a decision
        lambda app, d, c: app.add_argument(uuid4(), "a", "f", "x", round=1, idempotency_key="new"),
    ],
)
def test_invalid_commands_store_nothing(app: AuraApp, command: object) -> None:
    debate_id = app.start_debate("t", ["a"], idempotency_key="s")
    app.fail_debate(debate_id, "timeout", idempotency_key="f")
    call_id = app.request_llm_call("t", "p", "m", 1, idempotency_key="r")
    head = app.head_position()
    with pytest.raises((DomainError, AggregateNotFound)):
        command(app, debate_id, call_id)  # type: ignore[operator]
    assert app.head_position() == head
    with app.connect() as conn:
        assert conn.execute("SELECT count(*) FROM aura_idempotency").fetchone() == (3,)


@pytest.mark.parametrize("key", ["", "x" * 256])
def test_bad_idempotency_keys_are_refused(app: AuraApp, key: str) -> None:
    with pytest.raises(InvalidIdempotencyKey):
        app.start_debate("t", ["a"], idempotency_key=key)
    assert app.head_position() == 0


def test_key_of_255_characters_is_accepted(app: AuraApp) -> None:
    app.start_debate("t", ["a"], idempotency_key="x" * 255)
    assert app.head_position() == 1


def test_events_carry_metadata(app: AuraApp) -> None:
    debate_id = app.start_debate(
        "t", ["a"], idempotency_key="meta-1", tenant_id="acme",
        correlation_id="corr-1", causation_id="cause-1",
    )
    app.add_argument(debate_id, "a", "for", "x", round=1, idempotency_key="meta-2")
    events = list(app.events.get(debate_id))
    first, second = events
    assert first.meta["correlation_id"] == "corr-1"  # type: ignore[attr-defined]
    assert first.causation_id == "cause-1"  # type: ignore[attr-defined]
    assert first.idempotency_key == "meta-1"  # type: ignore[attr-defined]
    assert second.tenant_id == "acme"  # type: ignore[attr-defined]  # the debate's tenant
    assert first.event_id != second.event_id  # type: ignore[attr-defined]
    assert first.timestamp.tzinfo is not None  # type: ignore[attr-defined]


def test_prune_forgets_old_keys_only(app: AuraApp) -> None:
    from datetime import timedelta

    app.start_debate("t", ["a"], idempotency_key="old")
    app.start_debate("t", ["a"], idempotency_key="new")
    with app.connect() as conn:
        conn.execute(
            "UPDATE aura_idempotency SET created_at = now() - interval '40 days' "
            "WHERE idempotency_key = 'old'"
        )
    assert app.prune_idempotency_keys(timedelta(days=30)) == 1
    with app.connect() as conn:
        keys = [r[0] for r in conn.execute("SELECT idempotency_key FROM aura_idempotency")]
    assert keys == ["new"]


def test_the_pool_check_finds_a_session_its_server_ended_without_a_round_trip(
    db_url: str,
) -> None:
    """A live idle connection passes the pool's check at the cost of a poll(); one whose
    server ended it (a restart, a failover, pg_terminate_backend) fails it."""
    with psycopg.connect(db_url, autocommit=True) as admin, \
            psycopg.connect(db_url, autocommit=True) as pooled:
        before = pooled.pgconn.transaction_status
        liveness.check(pooled)  # alive: no query sent, nothing changed
        assert pooled.pgconn.transaction_status == before
        admin.execute("SELECT pg_terminate_backend(%s)", (pooled.info.backend_pid,))
        wait_for("the goodbye to arrive", lambda: select.select(
            [pooled.fileno()], [], [], 0)[0])
        with pytest.raises(psycopg.OperationalError):
            liveness.check(pooled)
