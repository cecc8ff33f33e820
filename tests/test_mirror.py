"""G8: the stream holds every stored event exactly once, in global order, across relay
SIGKILLs and a nats-server restart; both publish paths; verify names what is wrong."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import sys
import time
from pathlib import Path
from uuid import uuid4

import nats
import pytest

from aura_es import AuraApp, embedded
from aura_es.db import connect
from aura_es.mirror.cloudevents import CONTENT_TYPE, aggregate_and_event, to_message
from aura_es.store.envelope import EventEnvelope
from tests.support.chaos import stored_count, writer
from tests.support.cli import assert_one_line_error, aura
from tests.support.logs import LogLines
from tests.support.mirror import start_relay, verify
from tests.support.workers import ROOT, env_for, wait_for


def mirrored_up_to(db_url: str, since: object = None) -> int:
    """The relay's last recorded position; -1 until a relay reports after ``since``."""
    with connect(db_url) as conn:
        row = conn.execute(
            "SELECT max(position) FROM aura_mirror_progress"
            " WHERE updated_at > coalesce(%s, '-infinity'::timestamptz)", (since,)
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else -1


def db_now(db_url: str) -> object:
    with connect(db_url) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        return row[0]


def head(db_url: str) -> int:
    with connect(db_url) as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM aura_events").fetchone()
        assert row is not None
        return int(row[0])


def kill_relay_repeatedly_under_load(
    db_url: str, nats_url: str, stream: str, *extra: str, nats_dir: Path | None = None,
) -> None:
    rng = random.Random(8)
    writers = [writer(db_url, seed, 80) for seed in (5, 6)]
    for round_no in range(5):
        relay = start_relay(db_url, nats_url, stream, *extra)
        time.sleep(rng.uniform(0.5, 1.5))
        relay.kill()
        relay.communicate()
        if nats_dir is not None and round_no == 2:
            port = int(nats_url.rsplit(":", 1)[1])
            embedded.stop_nats(nats_dir)
            assert embedded.start_nats(nats_dir, port) == nats_url
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    since = db_now(db_url)
    relay = start_relay(db_url, nats_url, stream, *extra)
    wait_for("the mirror to catch up", lambda: mirrored_up_to(db_url, since) == head(db_url), 60)
    relay.send_signal(signal.SIGTERM)
    _, stderr = relay.communicate(timeout=30)
    assert relay.returncode == 0, stderr[-2000:]
    report = verify(db_url, nats_url, stream)
    assert report["ok"], report
    assert report["stream_messages"] == report["stored_events"] == stored_count(db_url)
    assert report["not_yet_mirrored"] == 0
    status = json.loads(aura("status", "--json", "--catalog", str(ROOT / "catalog" /
                                                                 "projection-catalog.yaml"),
                             env=env_for(db_url)).stdout)
    assert [(m["stream"], m["lag_events"]) for m in status["mirror"]] == [(stream, 0)]


@pytest.mark.slow
def test_atomic_batches_survive_relay_kills_and_a_broker_restart(
    db_url: str, private_nats: tuple[str, Path]
) -> None:
    url, nats_dir = private_nats
    kill_relay_repeatedly_under_load(db_url, url, "G8_ATOMIC", nats_dir=nats_dir)


@pytest.mark.slow
def test_pipelined_publishing_survives_relay_kills(
    db_url: str, private_nats: tuple[str, Path]
) -> None:
    kill_relay_repeatedly_under_load(db_url, private_nats[0], "G8_PIPELINED", "--force-pipelined")


def machine_nats_answers() -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", 4222)) == 0


@pytest.mark.skipif(not machine_nats_answers(), reason="no nats-server on 127.0.0.1:4222")
def test_the_machines_older_nats_server_gets_the_pipelined_path(app: AuraApp) -> None:
    for i in range(30):
        app.start_debate(f"t{i}", ["a"], idempotency_key=f"k{i}")
    stream, url = f"AURA_T_{uuid4().hex[:8].upper()}", "nats://127.0.0.1:4222"
    try:
        relay = start_relay(app.database_url, url, stream)
        wait_for("the mirror", lambda: mirrored_up_to(app.database_url) == head(
            app.database_url), 30)
        relay.send_signal(signal.SIGTERM)
        _, stderr = relay.communicate(timeout=30)
        # Atomic batches need nats-server 2.12.1 or later; the machine's is older.
        expected = "atomic-batch" if server_version(url) >= (2, 12, 1) else "publish-async"
        assert f'"publisher": "{expected}"' in stderr, stderr[-2000:]
        assert verify(app.database_url, url, stream)["ok"]
    finally:
        asyncio.run(delete_stream(url, stream))


def server_version(url: str) -> tuple[int, int, int]:
    """Compared as numbers: as strings, "2.9" >= "2.12" holds."""
    async def read() -> tuple[int, int, int]:
        nc = await nats.connect(url)
        v = nc.connected_server_version
        await nc.close()
        return (v.major, v.minor, v.patch)
    return asyncio.run(read())


async def delete_stream(url: str, stream: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


def test_verify_names_duplicated_and_missing_events(
    app: AuraApp, private_nats: tuple[str, Path]
) -> None:
    url = private_nats[0]
    for i in range(5):
        app.start_debate(f"t{i}", ["a"], idempotency_key=f"k{i}")
    relay = start_relay(app.database_url, url, "BROKEN")
    wait_for("the mirror", lambda: mirrored_up_to(app.database_url) == head(app.database_url), 30)
    relay.send_signal(signal.SIGTERM)
    relay.communicate(timeout=30)

    async def damage() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        third = await js.get_msg("BROKEN", 3)
        assert third.subject is not None and third.data is not None
        await js.publish(third.subject, third.data, headers={"Aura-Position": "3"})
        await js.delete_msg("BROKEN", 4)
        await nc.close()

    asyncio.run(damage())
    report = verify(app.database_url, url, "BROKEN")
    assert report["ok"] is False
    assert report["duplicated"] == [3] and report["missing"] == [4]
    assert report["out_of_order"] == [3]
    assert aura("mirror", "verify", "--nats-url", url, "--stream", "BROKEN", "--subject-prefix",
                "broken", env=env_for(app.database_url)).returncode == 1


def test_cloud_event_is_structured_with_the_store_s_identity(app: AuraApp) -> None:
    debate = app.start_debate("t", ["a"], idempotency_key="k", tenant_id="acme",
                              correlation_id="corr-1")
    with connect(app.database_url) as conn:
        row = conn.execute("SELECT notification_id, originator_id, originator_version, topic,"
                           " state FROM aura_events").fetchone()
    assert row is not None
    event = EventEnvelope.from_row(row)
    message = to_message(event, "aura.events")
    body = json.loads(message.body)
    assert message.subject == "aura.events.debate.started"
    assert message.headers()["Content-Type"] == CONTENT_TYPE
    assert message.headers()["Nats-Msg-Id"] == body["id"] == event.event_id
    assert (body["specversion"], body["type"], body["source"], body["subject"]) == (
        "1.0", "aura.debate.started.v1", "/aura/debate", str(debate))
    assert (body["auraposition"], body["auratenant"], body["auracorrelation"]) == (
        1, "acme", "corr-1")
    assert body["data"] == {"topic": "t", "participants": ["a"]}
    assert aggregate_and_event("bank.account.opened.v2") == ("account", "opened")


def test_bad_mirror_input_is_exit_2(
    app: AuraApp, cli_env: dict[str, str], private_nats: tuple[str, Path]
) -> None:
    url = private_nats[0]
    assert_one_line_error(aura("mirror", "run", "--stream", "bad name!", "--nats-url", url,
                               env=cli_env), "stream name 'bad name!' is invalid")
    assert_one_line_error(aura("mirror", "verify", "--nats-url", "nats://127.0.0.1:1",
                               env=cli_env), "cannot read stream")
    relay = start_relay(app.database_url, url, "TAKEN")
    wait_for("the stream", lambda: mirrored_up_to(app.database_url) >= 0, 30)
    relay.send_signal(signal.SIGTERM)
    relay.communicate(timeout=30)
    result = aura("mirror", "run", "--nats-url", url, "--stream", "TAKEN", "--subject-prefix",
                  "other", env=cli_env)
    assert_one_line_error(result, "exists with another configuration", "subjects")
    # A new stream on subjects another stream takes: a configuration error, not a retry.
    overlapping = aura("mirror", "run", "--nats-url", url, "--stream", "NEW",
                       "--subject-prefix", "taken", env=cli_env, timeout=60)
    assert_one_line_error(overlapping, "cannot create stream 'NEW'", "taken.>",
                          "stream 'TAKEN'",
                          "--subject-prefix")
    assert not stream_exists(url, "NEW")
    # Verify with a prefix the stream does not take names the prefix, not a broker error.
    wrong_prefix = aura("mirror", "verify", "--nats-url", url, "--stream", "TAKEN",
                        "--subject-prefix", "other", env=cli_env)
    assert_one_line_error(wrong_prefix, "takes subjects taken.>", "--subject-prefix")
    # More replicas than the servers can hold (one server here): a wrong setting.
    too_many = aura("mirror", "run", "--nats-url", url, "--stream", "R3", "--subject-prefix",
                    "r3", "--replicas", "3", env=cli_env, timeout=60)
    assert_one_line_error(too_many, "cannot create stream 'R3' with 3 replicas", "--replicas")


def stream_exists(url: str, stream: str) -> bool:
    async def check() -> bool:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().stream_info(stream)
            return True
        except Exception:
            return False
        finally:
            await nc.close()
    return asyncio.run(check())


def test_an_unreachable_broker_is_one_line_then_an_outage_is_retried(
    app: AuraApp, cli_env: dict[str, str], private_nats: tuple[str, Path],
) -> None:
    """No server of the list answering at the start is a wrong URL (exit 2, one line);
    a broker that goes away once the relay runs is an outage, retried until it is back."""
    refused = aura("mirror", "run", "--nats-url", "nats://127.0.0.1:1,nats://127.0.0.1:2",
                   env=cli_env, timeout=60)
    assert_one_line_error(refused, "no NATS server answers at nats://127.0.0.1:1")
    url, nats_dir = private_nats
    port = int(url.rsplit(":", 1)[1])
    app.start_debate("t", ["a"], idempotency_key="k1")
    relay = start_relay(app.database_url, url, "OUTAGE")
    lines = LogLines(relay)
    try:
        wait_for("the first event", lambda: mirrored_up_to(app.database_url) > 0, 30)
        embedded.stop_nats(nats_dir)
        lines.wait_for("the relay to notice", lambda text: "nats connection" in text)
        assert relay.poll() is None
        assert embedded.start_nats(nats_dir, port) == url
        app.start_debate("u", ["a"], idempotency_key="k2")
        wait_for("the mirror after the outage", lambda: mirrored_up_to(
            app.database_url) == head(app.database_url), 60)
    finally:
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=60) == 0




def test_the_documented_durable_consumer_reads_what_was_mirrored(
    app: AuraApp, private_nats: tuple[str, Path]
) -> None:
    sys.path.insert(0, str(ROOT / "docs" / "examples"))
    try:
        from mirror_consumer import consume  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    url = private_nats[0]
    call = app.request_llm_call("acme", "openai", "gpt-4o", 10, idempotency_key="c")
    app.complete_llm_call(call, 5, __import__("decimal").Decimal("0.01"), 12.5,
                          idempotency_key="d")
    app.start_debate("not billing", ["a"], idempotency_key="x")
    relay = start_relay(app.database_url, url, "AURA_EVENTS")
    wait_for("the mirror", lambda: mirrored_up_to(app.database_url) == head(app.database_url), 30)
    relay.send_signal(signal.SIGTERM)
    relay.communicate(timeout=30)
    first = asyncio.run(consume(url, subject="aura_events.llm_call.>", limit=10))
    assert [(e["type"], e["auraposition"]) for e in first] == [
        ("aura.llm_call.requested.v1", 1), ("aura.llm_call.completed.v1", 2)]
    # Durable: a second run of the service gets nothing it already acknowledged.
    assert asyncio.run(consume(url, subject="aura_events.llm_call.>", limit=10)) == []
