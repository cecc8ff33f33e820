"""Hostile input through the public API: every value is stored and projected exactly, or
refused with one clear error and nothing written; never changed on the way (NaN to null),
never a hang, never an exception that is not the library's own."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aura_es import AuraApp, AuraError, EventSourcedApp, InvalidPayload
from aura_es.application import outage_seconds
from aura_es.catalog import load_catalog
from aura_es.errors import ConfigurationError, InvalidIdempotencyKey
from aura_es.http.keys import InvalidKeyHeader, parse_key
from aura_es.payload import MAX_EVENT_BYTES, text_problem
from aura_es.projection.engine.loading import build
from aura_es.projection.engine.runner import BatchRunner
from aura_es.store.idempotency import check_key
from tests.support.hostile import hostile_numbers, hostile_text, json_like, write_note
from tests.support.workers import CATALOG

HOSTILE = settings(
    max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SPECS = {s.name: s for s in load_catalog(CATALOG).projections}


def written(app: EventSourcedApp) -> tuple[int, int]:
    with app.connect() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM aura_events), (SELECT count(*) FROM aura_idempotency)"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def project(app: EventSourcedApp, name: str) -> None:
    spec = SPECS[name]
    with app.connect() as conn:
        BatchRunner(conn, spec, build(spec)).run_until_caught_up()


def same_json(a: Any, b: Any) -> bool:
    """Equal as stored: 1 and 1.0, or 0.0 and -0.0, are different values."""
    return bool(orjson.dumps(a) == orjson.dumps(b))


@pytest.mark.timeout(600)
def test_a_debate_with_any_strings_is_stored_and_projected_exactly_or_refused(
    app: AuraApp,
) -> None:
    @HOSTILE
    @given(topic=hostile_text, agents=st.lists(hostile_text, min_size=1, max_size=3),
           key=hostile_text, tenant=hostile_text)
    def check(topic: str, agents: list[str], key: str, tenant: str) -> None:
        before = written(app)
        try:
            debate_id = app.start_debate(topic, agents, idempotency_key=key or "k",
                                         tenant_id=tenant or "t")
        except AuraError as e:
            assert "\n" not in str(e)
            assert written(app) == before, "a refused command wrote something"
            return
        debate = app.get_debate(debate_id)
        assert (debate.topic, debate.participants) == (topic, agents)
        project(app, "DebateStateProjection")
        with app.connect() as conn:
            row = conn.execute("SELECT topic, participants, tenant_id FROM debate_state"
                               " WHERE debate_id = %s", (debate_id,)).fetchone()
        assert row == (topic, agents, debate.tenant_id)

    check()


def test_nul_and_lone_surrogates_are_refused_naming_the_field(app: AuraApp) -> None:
    before = written(app)
    with pytest.raises(InvalidPayload, match="agent_id contains a NUL"):
        app.propose_decision("ag\x00ent", "title", idempotency_key="nul")
    with pytest.raises(InvalidPayload, match="title contains a lone surrogate"):
        app.propose_decision("agent", "t\udc80", idempotency_key="surrogate")
    assert written(app) == before


def test_a_commands_own_texts_are_taken_or_refused_naming_the_field(app: AuraApp) -> None:
    """A command's type, tenant, correlation and causation ids (checked inline when plain
    ASCII, issue 27): any text is taken, or refused naming its field with nothing
    written, exactly when it holds what PostgreSQL cannot store."""
    fields = ["type", "tenant_id", "correlation_id", "causation_id"]

    @HOSTILE
    @given(field=st.sampled_from(fields),
           text=hostile_text | st.text(st.characters(max_codepoint=127), max_size=8))
    @example(field="type", text="a\x00b")
    @example(field="tenant_id", text="\x00")
    @example(field="correlation_id", text="a\x00")
    @example(field="causation_id", text="\udc80")
    def check(field: str, text: str) -> None:
        changed: dict[str, Any] = {field: text or "x"}
        command = dataclasses.replace(
            app.start_debate_command("t", ["a"], idempotency_key=f"k{time.monotonic_ns()}"),
            **changed)
        before = written(app)
        if text_problem(text or "x") is None:
            app.execute(command)
            return
        with pytest.raises(InvalidPayload, match=f"^{field} "):
            app.execute(command)
        assert written(app) == before

    check()


@pytest.mark.timeout(600)
def test_any_latency_is_stored_and_projected_exactly_or_refused(app: AuraApp) -> None:
    @HOSTILE
    @given(latency=hostile_numbers, tokens=hostile_numbers)
    def check(latency: Any, tokens: Any) -> None:
        call = app.request_llm_call("acme", "openai", "gpt", 5,
                                    idempotency_key=f"r{time.monotonic_ns()}")
        before = written(app)
        try:
            app.complete_llm_call(call, tokens, Decimal("0.25"), latency,
                                  idempotency_key=f"c{time.monotonic_ns()}")
        except AuraError as e:
            assert "\n" not in str(e)
            assert written(app) == before
            return
        stored = app.get_llm_call(call)
        assert stored.latency_ms == float(latency) and stored.completion_tokens == tokens
        assert math.copysign(1, stored.latency_ms) == math.copysign(1, float(latency))
        project(app, "LLMSpendProjection")
        with app.connect() as conn:
            row = conn.execute("SELECT completion_tokens FROM llm_spend").fetchone()
        assert row is not None

    check()


def test_infinity_is_refused_at_the_command_not_stored_as_null(app: AuraApp) -> None:
    call = app.request_llm_call("acme", "openai", "gpt", 5, idempotency_key="r")
    for value in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(AuraError, match="latency_ms"):
            app.complete_llm_call(call, 1, Decimal("0.1"), value, idempotency_key=f"c{value}")
    with pytest.raises(AuraError, match="cost_usd"):
        app.complete_llm_call(call, 1, Decimal("Infinity"), 1.0, idempotency_key="inf-cost")
    assert app.get_llm_call(call).status == "requested"


@pytest.mark.timeout(600)
def test_a_users_event_with_any_json_value_round_trips_exactly_or_is_refused(
    db_url: str,
) -> None:
    app = EventSourcedApp(db_url, pool_size=2)

    @HOSTILE
    @given(body=json_like)
    def check(body: Any) -> None:
        before = written(app)
        try:
            result = app.execute(write_note(body, f"n{time.monotonic_ns()}"))
        except InvalidPayload as e:
            assert "\n" not in str(e)
            assert written(app) == before
            return
        with app.connect() as conn:
            row = conn.execute("SELECT state FROM aura_events WHERE originator_id = %s",
                               (result.aggregate_id,)).fetchone()
        assert row is not None
        assert same_json(orjson.loads(row[0])["body"], body)

    try:
        check()
    finally:
        app.close()


@pytest.mark.timeout(120)
def test_a_large_event_is_stored_without_a_hang_and_a_too_large_one_refused(
    app: AuraApp,
) -> None:
    # 900 KB hung for ever over a Unix socket (psycopg's pipeline mode), holding the
    # events table's lock: every other writer hung with it.
    big = "x" * 900_000
    done: list[Any] = []
    writer = threading.Thread(target=lambda: done.append(
        app.start_debate(big, ["a"], idempotency_key="big")), daemon=True)
    writer.start()
    writer.join(30)
    assert done, "a 900 KB event did not return within 30 s"
    assert app.get_debate(done[0]).topic == big
    other = app.start_debate("small", ["a"], idempotency_key="small")  # the lock is free
    assert app.get_debate(other).topic == "small"
    before = written(app)
    with pytest.raises(InvalidPayload, match=f"{MAX_EVENT_BYTES:,} bytes"):
        app.start_debate("x" * MAX_EVENT_BYTES, ["a"], idempotency_key="too-big")
    assert written(app) == before


def test_a_create_retried_after_its_key_was_pruned_returns_the_original_id(
    app: AuraApp,
) -> None:
    first = app.start_debate("pruned", ["a"], idempotency_key="p")
    with app.connect() as conn:
        conn.execute("DELETE FROM aura_idempotency")
    assert app.start_debate("pruned", ["a"], idempotency_key="p") == first
    assert written(app)[0] == 1


WHITESPACE = st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x0c\u00a0\u2003\u3000"),
                     min_size=1, max_size=20)


@HOSTILE
@given(key=WHITESPACE)
def test_a_key_of_whitespace_only_is_refused_and_nothing_written(app: AuraApp,
                                                                   key: str) -> None:
    before = written(app)
    with pytest.raises(InvalidIdempotencyKey, match="idempotency_key is only whitespace"):
        app.start_debate("blank key", ["a"], idempotency_key=key)
    assert written(app) == before


HEADER_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\')


@given(st.one_of(st.text(alphabet=HEADER_CHARS, max_size=300),
                 st.text(alphabet=st.sampled_from(" a"), max_size=6)))
def test_the_api_and_the_http_header_accept_the_same_keys(key: str) -> None:
    """One rule for both doors: a key the header takes, the command takes, and back."""
    try:
        parse_key(f'"{key}"')
        by_header = True
    except InvalidKeyHeader:
        by_header = False
    try:
        check_key(key)
        by_api = True
    except InvalidIdempotencyKey:
        by_api = False
    assert by_header == by_api


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(max_size=12), st.floats().map(str), st.integers().map(str),
                       st.just("x" * 100_000), st.just("1\x005")))
def test_any_outage_setting_is_used_as_given_or_refused_in_one_line(value: str) -> None:
    """AURA_ES_OUTAGE_SECONDS: seconds from 0 to 3600, or one line naming it (never NaN,
    infinity or a negative wait taken as given)."""
    try:
        seconds = outage_seconds(value, 30.0)
    except ConfigurationError as e:
        message = str(e)
        assert message.startswith("AURA_ES_OUTAGE_SECONDS=") and "\n" not in message
        assert len(message) < 200  # a huge value is not echoed whole
        return
    if value.strip():
        assert seconds == float(value) and 0 <= seconds <= 3600
    else:
        assert seconds == 30.0
