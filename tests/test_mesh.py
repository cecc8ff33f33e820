"""The consumer kit for services on the mesh (aura_es.mesh): every event applied to the
service's own table exactly once, in order per aggregate, across a consumer killed
between its commit and its acknowledgements, one killed at random, redeliveries and a
broker restart; data validated against the registry on JetStream and upcast (or, newer,
handed over as FULL compatibility allows) to the version the service was built for."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import nats
import psycopg
import pytest

from aura_es import AuraApp, embedded
from aura_es.db import connect
from aura_es.mesh import Delivery, MeshConsumer, Subscription
from aura_es.mirror import schema_registry
from aura_es.schemas.generate import schema_uri
from aura_es.store import identity
from tests.support.chaos import writer
from tests.support.cli import aura
from tests.support.mesh_consumer import TOPICS
from tests.support.mirror import start_relay, verify
from tests.support.workers import ROOT, env_for, wait_for

#: What a foreign publisher can put in a CloudEvent that names a subscribed type.
HOSTILE: list[dict[str, Any]] = [
    {"dataschema": "urn:somebody-else:schema:x:v1"},  # not our URI
    {"dataschema": "urn:aura-es:schema:aura.llm_call.completed.v1:v99"},  # not registered
    {"dataschema": "urn:aura-es:schema:aura.debate.failed.v1:v1"},  # another type's
    {"data": [1, 2]},  # not an object
    {"data": None, "data_base64": "AAE="},  # how an undecodable event is mirrored
    {"subject": "not-a-uuid"},
    {"auraposition": "1e999"},
    {"auraposition": 2**70},  # beyond bigint, and not the header's position
    {"data": {"completion_tokens": "\u0000", "cost_usd": "0.1"}},  # a NUL
    {"data": {"completion_tokens": 1, "cost_usd": "x" * 100_000}},  # huge, not a decimal
]


def billing_example() -> Any:
    """docs/examples/mesh_billing.py, imported as a user would run it."""
    sys.path.insert(0, str(ROOT / "docs" / "examples"))
    try:
        return importlib.import_module("mesh_billing")
    finally:
        sys.path.pop(0)


def start_consumer(service_db: str, nats_url: str, stream: str, name: str,
                   die_after: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.mesh_consumer", service_db, nats_url, stream,
         name, str(die_after)],
        env=env_for(service_db), cwd=ROOT, text=True, stderr=subprocess.PIPE)


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        return list(conn.execute(query).fetchall())


def stream_last_seq(nats_url: str, stream: str) -> int:
    async def last() -> int:
        nc = await nats.connect(nats_url)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.last_seq)
        finally:
            await nc.close()
    return asyncio.run(last())


def checkpoint_seq(service_db: str, consumer: str) -> int:
    try:
        found = rows(service_db, "SELECT stream_seq FROM aura_mesh_checkpoints"
                                 f" WHERE consumer = '{consumer}'")
    except psycopg.errors.UndefinedTable:
        return 0
    return int(found[0][0]) if found else 0


def applied_count(service_db: str) -> int:
    try:
        return int(rows(service_db, "SELECT count(*) FROM mesh_applied")[0][0])
    except psycopg.errors.UndefinedTable:
        return 0


@pytest.mark.slow
def test_each_event_is_applied_once_in_order_across_kills_and_a_broker_restart(
        db_url: str, empty_db_url: str, private_nats: tuple[str, Path]) -> None:
    nats_url, nats_dir = private_nats
    stream = f"MESH_{uuid4().hex[:6].upper()}"
    writers = [writer(db_url, seed, 40) for seed in (11, 12)]
    relay = start_relay(db_url, nats_url, stream)
    # Killed after its second commit, before acknowledging it: those come back.
    died = start_consumer(empty_db_url, nats_url, stream, "billing", die_after=2)
    assert died.wait(timeout=60) == 9, died.stderr.read() if died.stderr else ""
    # Killed at a random moment.
    killed = start_consumer(empty_db_url, nats_url, stream, "billing")
    time.sleep(1.5)
    killed.kill()
    killed.wait()
    consumer = start_consumer(empty_db_url, nats_url, stream, "billing")
    time.sleep(1.0)
    port = int(nats_url.rsplit(":", 1)[1])
    embedded.stop_nats(nats_dir)
    time.sleep(1.0)
    assert embedded.start_nats(nats_dir, port) == nats_url
    assert [w.wait(timeout=180) for w in writers] == [0, 0]
    expected = rows(db_url, "SELECT convert_from(state, 'UTF8')::jsonb -> 'meta' ->> 'event_id',"
                            " originator_id, originator_version FROM aura_events"
                            f" WHERE topic IN ({', '.join(repr(t) for t in TOPICS)})")
    wait_for("every debate event applied", lambda: applied_count(empty_db_url) >= len(expected),
             timeout=120)
    # Read to the stream's end: anything it would apply twice it has applied by now.
    last = stream_last_seq(nats_url, stream)
    wait_for("the consumer at the stream's end",
             lambda: checkpoint_seq(empty_db_url, "billing") >= last, timeout=60)
    for process in (consumer, relay):
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert verify(db_url, nats_url, stream)["ok"]
    applied = rows(empty_db_url, "SELECT event_id, aggregate_id, stream_seq FROM mesh_applied")
    assert len(applied) == len(expected)  # none twice
    assert {r[0] for r in applied} == {r[0] for r in expected}  # none missing
    version = {r[0]: r[2] for r in expected}
    by_aggregate: dict[Any, list[tuple[int, int]]] = {}
    for event_id, aggregate_id, seq in applied:
        by_aggregate.setdefault(aggregate_id, []).append((seq, version[event_id]))
    for events in by_aggregate.values():  # applied in stream order = version order
        assert [v for _, v in sorted(events)] == sorted(v for _, v in events)


def test_data_is_validated_and_brought_to_the_services_version(
        app: AuraApp, db_url: str, empty_db_url: str, nats_url: str) -> None:
    stream = f"MESH_{uuid4().hex[:6].upper()}"
    prefix = stream.lower()
    call = app.request_llm_call("acme", "openai", "gpt-4o", 10, idempotency_key=str(uuid4()))
    app.complete_llm_call(call, 7, Decimal("0.5"), 120.0, idempotency_key=str(uuid4()))
    relay = start_relay(db_url, nats_url, stream)

    def mirrored() -> bool:
        result = aura("mirror", "verify", "--nats-url", nats_url, "--stream", stream,
                      "--subject-prefix", prefix, "--json", env=env_for(db_url))
        return result.returncode == 0 and json.loads(result.stdout)["not_yet_mirrored"] == 0

    wait_for("the mirror", mirrored, timeout=60)
    relay.send_signal(signal.SIGTERM)
    relay.communicate(timeout=30)
    completed = "aura.llm_call.completed.v1"

    with connect(db_url) as conn:
        store = str(identity.store_id(conn))
    published = itertools.count(1)

    def ours(**overrides: str) -> dict[str, str]:
        """Headers as this store's relay sets them, after every event it published."""
        n = next(published)
        return {"Aura-Store": store, "Aura-Position": str(10**12 + n),
                "Aura-Transaction": str(10**12 + n), "Nats-Msg-Id": str(uuid4()), **overrides}

    def cloud_event(version: int, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"specversion": "1.0", "id": str(uuid4()), "type": completed,
                "source": "/aura/llm_call", "subject": str(call),
                "dataschema": schema_uri(completed, version), "data": data, **extra}

    async def scenario() -> dict[str, list[Delivery]]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        subject = f"{prefix}.llm_call.completed"

        async def publish(body: dict[str, Any] | bytes, headers: dict[str, str]) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            await js.publish(subject, data, headers=headers)

        # First messages no consumer may apply, with this store's headers: each is
        # recorded as rejected and the consumer goes on (none may stall it in retries).
        good_v1 = cloud_event(1, {"completion_tokens": 3, "cost_usd": "0.1"})
        for hostile in HOSTILE:
            await publish({**good_v1, **hostile}, ours())
        await publish(b"\x00 not json", ours())
        # Headers no store writes: a position beyond 64 bits (it stalled the consumer).
        await publish(good_v1, ours(**{"Aura-Position": str(2**70)}))
        # A schema-valid CloudEvent that no store published: foreign, never applied.
        await publish(good_v1, {})
        # Then a v1 event (upcast for v2 readers) and one whose data does not fit its
        # schema (rejected, recorded, never applied).
        await publish(good_v1, ours())
        await publish(cloud_event(2, {"completion_tokens": "x", "cost_usd": "0.1",
                                      "latency_ms": 1.0}), ours())
        registered = await schema_registry.fetch(js, schema_uri(completed, 2))
        assert registered is not None and registered["$id"] == schema_uri(completed, 2)
        assert await schema_registry.fetch(js, schema_uri(completed, 9)) is None
        await nc.close()
        got: dict[str, list[Delivery]] = {"v1": [], "v2": []}

        def keep(into: str) -> Any:
            return lambda cur, delivery: got[into].append(delivery)

        consumers = [
            MeshConsumer("built_for_v1", empty_db_url, nats_url,
                         [Subscription(completed, 1, keep("v1"))], stream=stream,
                         subject_prefix=prefix),
            MeshConsumer("built_for_v2", empty_db_url, nats_url,
                         [Subscription(completed, 2, keep("v2"),
                                       {1: lambda d: d.update(latency_ms=0.0)})],
                         stream=stream, subject_prefix=prefix),
        ]
        example = billing_example()
        example.ensure_tables(empty_db_url)
        consumers.append(example.consumer(empty_db_url, nats_url, stream=stream,
                                          subject_prefix=prefix))
        tasks = [asyncio.create_task(c.run()) for c in consumers]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(got["v1"]) < 2 or len(got["v2"]) < 2
                                               or consumers[-1].applied < 3):
            await asyncio.sleep(0.1)
        for c in consumers:
            c.stop.set()
        await asyncio.gather(*tasks)
        return got

    got = asyncio.run(scenario())
    # The relay's v2 event reaches the v1 service as it is (FULL: v1 readers read v2).
    assert [(d.version, d.data) for d in got["v1"]] == [
        (1, {"completion_tokens": 7, "cost_usd": "0.5", "latency_ms": 120.0}),
        (1, {"completion_tokens": 3, "cost_usd": "0.1"})]
    assert [(d.version, d.data) for d in got["v2"]] == [
        (2, {"completion_tokens": 7, "cost_usd": "0.5", "latency_ms": 120.0}),
        (2, {"completion_tokens": 3, "cost_usd": "0.1", "latency_ms": 0.0})]
    rejected = rows(empty_db_url, "SELECT consumer, reason FROM aura_mesh_rejected"
                                  " ORDER BY consumer, stream_seq")
    # The hostile ones, the non-JSON one, the bad header, the foreign one, the misfit.
    per_consumer = len(HOSTILE) + 4
    assert [r[0] for r in rejected] == [
        name for name in ("billing", "built_for_v1", "built_for_v2")
        for _ in range(per_consumer)]
    # The documented example: the relay's v2 event and the upcast v1 one, once each.
    assert rows(empty_db_url, "SELECT tenant, calls, tokens, cost_usd::text, latency_ms"
                              " FROM billing_spend") == [("acme", 2, 10, "0.6", 120.0)]
    misfits = rejected[per_consumer - 1::per_consumer]
    assert all("field completion_tokens" in r[1] for r in misfits)
    kinds = rows(empty_db_url, "SELECT kind, reason FROM aura_mesh_rejected"
                               " WHERE consumer = 'billing' ORDER BY stream_seq")
    assert kinds[len(HOSTILE) + 1][1].startswith("its Aura-Position header")
    assert kinds[len(HOSTILE) + 2][0] == "foreign"
    assert [k for k, _ in kinds].count("foreign") == 1
