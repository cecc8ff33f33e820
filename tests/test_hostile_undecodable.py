"""Rows that do not decode (written by another program, or damaged) are poison like any
other event: dead-lettered with their raw bytes, their aggregate's later events parked,
everything else flowing; no reader (status, workers, mirror, replay) stops on them."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es import AuraApp
from aura_es.catalog import load_catalog
from aura_es.db import connect
from aura_es.projection.engine.engine import Engine
from aura_es.replay import replay_aggregates
from aura_es.store.envelope import EventEnvelope
from tests.support.cli import aura
from tests.support.mirror import head, mirrored, start_relay, stop, verify
from tests.support.workers import CATALOG, env_for, start_worker, wait_for

SPEC = load_catalog(CATALOG).get("DebateStateProjection")
STARTED = "aura.debate.started.v1"
ARGUED = "aura.debate.argument_added.v1"

garbage = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\x00not an event", b"[1, 2]", b'"text"', b"{}", b'{"timestamp": 5}',
                     b'{"timestamp": "yesterday"}', b'{"timestamp": "2026-01-01T00:00:00"}',
                     b'{"timestamp": "2026-01-01T00:00:00+00:00", "meta": []}', b"\xff\xfe"]),
)


def insert_raw(conn: Any, aggregate: uuid.UUID, version: int, topic: str, state: bytes) -> int:
    row = conn.execute(
        "INSERT INTO aura_events (originator_id, originator_version, topic, state)"
        " VALUES (%s, %s, %s, %s) RETURNING notification_id",
        (aggregate, version, topic, state),
    ).fetchone()
    return int(row[0])


def a_valid_argument(app: AuraApp) -> bytes:
    """The stored JSON of a real argument_added event, to copy behind a bad one."""
    debate = app.start_debate("donor", ["a"], idempotency_key="donor")
    app.add_argument(debate, "a", "for", "x", round=1, idempotency_key="donor-arg")
    with app.connect() as conn:
        row = conn.execute("SELECT state FROM aura_events WHERE topic = %s", (ARGUED,)).fetchone()
    assert row is not None
    return bytes(row[0])


def debates(app: AuraApp, count: int, prefix: str) -> list[uuid.UUID]:
    return [app.start_debate(f"{prefix} {i}", ["a", "b"], idempotency_key=f"{prefix}{i}")
            for i in range(count)]


@pytest.mark.timeout(300)
def test_any_undecodable_row_is_dead_lettered_and_everything_else_flows(app: AuraApp) -> None:
    argument = a_valid_argument(app)

    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(state=garbage, topic=st.sampled_from([STARTED, ARGUED]), before=st.integers(0, 3))
    def check(state: bytes, topic: str, before: int) -> None:
        with app.connect() as conn:
            conn.execute("TRUNCATE aura_events, aura_idempotency, aura_dead_letters,"
                         " aura_dead_letter_parked, aura_projection_checkpoints RESTART IDENTITY")
            conn.execute("DROP TABLE IF EXISTS debate_state")
        ids = debates(app, before, "before")
        bad = uuid.uuid4()
        with app.connect() as conn:
            bad_position = insert_raw(conn, bad, 1, topic, state)
            parked_position = insert_raw(conn, bad, 2, ARGUED, argument)
        ids += debates(app, 3, "after")
        with connect(app.database_url) as conn:
            engine = Engine(conn, SPEC)
            for _ in range(50):
                step = engine.advance().step
                if step is not None and step.caught_up:
                    break
            letters = conn.execute(
                "SELECT d.position, d.aggregate_id, d.error_type, array_agg(p.position)"
                " FROM aura_dead_letters d LEFT JOIN aura_dead_letter_parked p"
                " ON p.dead_letter_id = d.id GROUP BY d.id").fetchall()
            shown = {row[0] for row in conn.execute("SELECT debate_id FROM debate_state")}
        # Bytes that are no event at all are EventUndecodable at once; an object that
        # decodes but lacks the topic's fields fails in the handler, like any poison.
        undecodable = EventEnvelope.from_row((0, bad, 1, topic, state)).undecodable
        assert len(letters) == 1
        position, aggregate, error_type, parked = letters[0]
        assert (position, aggregate, parked) == (bad_position, bad, [parked_position])
        assert (error_type == "aura_es.errors.EventUndecodable") == (undecodable is not None)
        assert shown == set(ids)

    check()


def test_an_envelope_never_raises_on_a_row(app: AuraApp) -> None:
    @settings(max_examples=200, deadline=None)
    @given(state=garbage)
    def check(state: bytes) -> None:
        event = EventEnvelope.from_row((1, uuid.uuid4(), 1, STARTED, state))
        if event.undecodable is None:
            assert isinstance(orjson.loads(state), dict)
        assert event.raw == state

    check()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_status_and_dlq_show_survive_an_undecodable_row(app: AuraApp) -> None:
    first = debates(app, 25, "first")
    bad = uuid.uuid4()
    with app.connect() as conn:
        bad_position = insert_raw(conn, bad, 1, STARTED, b"\x00not an event")
    second = debates(app, 25, "second")
    env = env_for(app.database_url)
    status = aura("status", "--json", "--catalog", str(CATALOG), env=env)
    assert status.returncode == 0, status.stderr
    worker = start_worker(app.database_url, "DebateStateProjection")
    try:
        with app.connect() as conn:
            wait_for("all 50 debates", lambda: conn.execute(
                "SELECT to_regclass('debate_state') IS NOT NULL AND"
                " (SELECT count(*) FROM aura_projection_checkpoints) > 0").fetchone() == (True,)
                and conn.execute("SELECT count(*) FROM debate_state").fetchone() == (50,), 60)
            rows = {r[0] for r in conn.execute("SELECT debate_id FROM debate_state")}
        assert rows == set(first + second)
        assert worker.poll() is None, "the worker exited"
        listed = json.loads(aura("dlq", "list", "--json", env=env).stdout)
        assert [(d["position"], d["aggregate_id"]) for d in listed] == [(bad_position, str(bad))]
        shown = json.loads(aura("dlq", "show", str(listed[0]["id"]), "--json", env=env).stdout)
        assert "not an event" in shown["raw_state"] and "\\x00" in shown["raw_state"]
        status = aura("status", "--json", "--catalog", str(CATALOG), env=env)
        assert status.returncode == 0, status.stderr
        row = next(p for p in json.loads(status.stdout)["projections"]
                   if p["projection"] == "DebateStateProjection")
        assert (row["dead_letters"], row["lag_events"]) == (1, 0)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_partial_replay_leaves_an_aggregate_with_an_undecodable_event_as_it_was(
    app: AuraApp,
) -> None:
    argument = a_valid_argument(app)
    good = debates(app, 3, "good")
    bad = uuid.uuid4()
    with app.connect() as conn:
        insert_raw(conn, bad, 1, STARTED, b"{broken")
        insert_raw(conn, bad, 2, ARGUED, argument)
    with connect(app.database_url) as conn:
        engine = Engine(conn, SPEC)
        while not ((step := engine.advance().step) and step.caught_up):
            pass
        result = replay_aggregates(conn, SPEC, [*good, bad])
        assert (result.aggregates, result.skipped_undecodable) == (3, 1)
        assert conn.execute("SELECT count(*) FROM aura_dead_letters WHERE status = 'parked'"
                            ).fetchone() == (1,)


def test_status_works_with_a_nul_in_a_stored_event(app: AuraApp) -> None:
    """A NUL escaped in stored JSON (\\u0000) made every jsonb read of the log fail."""
    call = app.request_llm_call("acme", "p", "m", 1, idempotency_key="c")
    with app.connect() as conn:
        insert_raw(conn, call, 2, "aura.llm_call.failed.v1",
                   b'{"timestamp": "2026-01-01T00:00:00+00:00", "error": "x\\u0000y"}')
    result = aura("status", "--json", "--catalog", str(CATALOG), env=env_for(app.database_url))
    assert result.returncode == 0, result.stderr
    lag = {p["projection"]: p["lag_events"] for p in json.loads(result.stdout)["projections"]}
    assert lag["LLMSpendProjection"] == 2


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_mirror_publishes_an_undecodable_row_in_its_place_and_verify_agrees(
    app: AuraApp, private_nats: tuple[str, Path],
) -> None:
    url, _ = private_nats
    debates(app, 5, "before")
    with app.connect() as conn:
        bad_position = insert_raw(conn, uuid.uuid4(), 1, STARTED, b"\x00\xffnot an event")
    debates(app, 5, "after")
    relay = start_relay(app.database_url, url, "RAW")
    wait_for("the mirror", lambda: mirrored(app.database_url) == head(app.database_url))
    stop(relay)
    report = verify(app.database_url, url, "RAW")
    assert report["ok"] and report["stored_events"] == report["stream_messages"] == 11

    async def message_at(position: int) -> dict[str, Any]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for seq in range(1, 12):
                msg = await js.get_msg("RAW", seq)
                if (msg.headers or {}).get("Aura-Position") == str(position):
                    return dict(json.loads(msg.data or b"{}"))
            raise AssertionError("not on the stream")
        finally:
            await nc.close()

    event = asyncio.run(message_at(bad_position))
    assert event["datacontenttype"] == "application/octet-stream"
    assert base64.b64decode(event["data_base64"]) == b"\x00\xffnot an event"
