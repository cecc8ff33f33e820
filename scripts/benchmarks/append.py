"""`scripts/bench append`: idempotent appends next to the plain `eventsourcing` library.

Each row runs the same saves twice in one process against one server: once with the
plain library (no keys) or raw psycopg, once through aura-es with idempotency keys.
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from statistics import median
from typing import Any
from uuid import uuid4

import orjson
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from aura_es import AuraAggregate, AuraCreated, AuraEvent, Create, payload
from aura_es.app import AuraApp
from aura_es.dsn import parse_database_url
from scripts.benchmarks import writers
from scripts.benchmarks._common import fresh_database, percentile, postgres, report


class PlainDebate(Aggregate):
    @event("Started")
    def __init__(self, topic: str, participants: list[str]) -> None:
        self.topic = topic
        self.participants = participants


class UsageImported(AuraCreated):
    """A batch of LLM usage records imported under one idempotency key (the bulk case)."""

    TOPIC = "bench.usage.imported.v1"
    source: str

    def apply(self, batch: Any) -> None:
        batch.source = self.source


class UsageRecorded(AuraEvent):
    TOPIC = "bench.usage.recorded.v1"
    model: str
    tokens: int

    def apply(self, batch: Any) -> None:
        batch.tokens += self.tokens


class UsageBatch(AuraAggregate):
    TYPE = "bench.usage_batch"

    def __init__(self) -> None:
        self.source = ""
        self.tokens = 0

    @classmethod
    def imported(cls, batch_id: Any, source: str, records: int) -> UsageBatch:
        batch = cls._create(UsageImported, id=batch_id, source=source)
        for i in range(records - 1):
            batch.trigger_event(UsageRecorded, model="gpt-x", tokens=100 + i)
        return batch


def plain_app(url: str, pool_size: int, *, create_table: bool = True) -> Application[Any]:
    pg = parse_database_url(url)
    return Application(env={
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": pg.dbname, "POSTGRES_HOST": pg.host, "POSTGRES_PORT": pg.port,
        "POSTGRES_USER": pg.user, "POSTGRES_PASSWORD": pg.password,
        "POSTGRES_POOL_SIZE": str(pool_size), "POSTGRES_MAX_OVERFLOW": str(pool_size),
        "CREATE_TABLE": "y" if create_table else "n",
    })


def timed(n: int, threads: int, one: Callable[[int], object]) -> float:
    """Events per second of ``one(i)`` for i in range(n), spread over ``threads``."""
    started = time.perf_counter()
    if threads == 1:
        for i in range(n):
            one(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(n)))
    return n / (time.perf_counter() - started)


def single_and_concurrent(admin: str, n: int, threads: int) -> dict[str, Any]:
    with fresh_database(admin) as url:
        plain = plain_app(url, threads)
        ours = AuraApp(url, pool_size=threads)
        run = uuid4().hex
        base = timed(n, threads, lambda i: plain.save(PlainDebate(f"t{i}", ["a", "b"])))
        keyed = timed(n, threads, lambda i: ours.start_debate(
            f"t{i}", ["a", "b"], idempotency_key=f"{run}:{i}"))
        plain.close()
        ours.close()
    return {
        "case": f"1 event per transaction, {threads} writer{'s' if threads > 1 else ''}",
        "baseline": "eventsourcing app.save, no keys",
        "baseline events/s": round(base),
        "aura-es events/s": round(keyed),
        "ratio": round(keyed / base, 2),
    }


def batches(admin: str, n: int, size: int, *, one_command: bool = False) -> dict[str, Any]:
    with fresh_database(admin) as url:
        ours = AuraApp(url, pool_size=2)
        with psycopg.connect(parse_database_url(url).conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE raw_events (id bigserial PRIMARY KEY, originator_id uuid,"
                         " originator_version int, topic text, state bytea)")
            payload = b'{"topic": "t", "participants": ["a", "b"]}'

            def raw_batch(_: int) -> None:
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO raw_events (originator_id, originator_version, topic, state)"
                        " VALUES (%s, 1, 'aura.debate.started.v1', %s)",
                        [(uuid4(), payload) for _ in range(size)],
                    )

            base = timed(n // size, 1, raw_batch) * size
        run = uuid4().hex

        def our_batch(b: int) -> None:
            ours.execute_many([
                ours.start_debate_command(f"t{i}", ["a", "b"], idempotency_key=f"{run}:{b}:{i}")
                for i in range(size)
            ])

        def our_bulk_command(b: int) -> None:
            ours.execute(Create("import_usage", f"{run}:{b}", {"source": f"s{b}"},
                                lambda batch_id: UsageBatch.imported(batch_id, f"s{b}", size)))


        keyed = timed(n // size, 1, our_bulk_command if one_command else our_batch) * size
        ours.close()
    return {
        "case": f"{size} events per transaction, 1 writer: " + (
            "one command (one key)" if one_command else f"{size} commands ({size} keys)"),
        "baseline": "raw psycopg executemany, no keys",
        "baseline events/s": round(base),
        "aura-es events/s": round(keyed),
        "ratio": round(keyed / base, 2),
    }


def duplicates(admin: str, n: int) -> dict[str, Any]:
    with fresh_database(admin) as url:
        ours = AuraApp(url, pool_size=2)
        for i in range(n):
            ours.start_debate(f"t{i}", ["a"], idempotency_key=f"k{i}")
        absorbed, fresh = [], []
        for i in range(n):
            started = time.perf_counter()
            ours.start_debate(f"t{i}", ["a"], idempotency_key=f"k{i}")
            absorbed.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            ours.start_debate(f"t{i}", ["a"], idempotency_key=f"new{i}")
            fresh.append((time.perf_counter() - started) * 1000)
        ours.close()
    return _retry_row("a retried command (duplicate absorbed), ms", fresh, absorbed)


def update_duplicates(admin: str, n: int) -> dict[str, Any]:
    """A retried update: it goes straight to the save like a first one (no lookup
    first), and is answered from its key row when the insert's key collides."""
    with fresh_database(admin) as url:
        ours = AuraApp(url, pool_size=2)
        calls = [ours.request_llm_call("acme", "openai", "gpt-4o", 10, idempotency_key=f"r{i}")
                 for i in range(n)]
        stored: list[float] = []
        absorbed: list[float] = []
        for i, call in enumerate(calls):
            for spent in (stored, absorbed):  # the first call, then its retry
                started = time.perf_counter()
                ours.complete_llm_call(call, 5, Decimal("0.01"), 12.0, idempotency_key=f"c{i}")
                spent.append((time.perf_counter() - started) * 1000)
        ours.close()
    return _retry_row("a retried update command (duplicate absorbed), ms", stored, absorbed)


def batch_duplicates(admin: str, n: int, size: int = 100) -> dict[str, Any]:
    """A batch sent again whole (a bulk loader that timed out): it goes straight to its
    save like a first one, and is answered from the key table when its keys collide."""
    with fresh_database(admin) as url:
        ours = AuraApp(url, pool_size=2)
        stored: list[float] = []
        absorbed: list[float] = []
        for b in range(n):
            batch = [ours.start_debate_command(f"t{i}", ["a", "b"], idempotency_key=f"b{b}:{i}")
                     for i in range(size)]
            for spent in (stored, absorbed):  # the first send, then the whole batch again
                started = time.perf_counter()
                ours.execute_many(batch)
                spent.append((time.perf_counter() - started) * 1000)
        ours.close()
    return _retry_row(f"a retried batch of {size} commands (all duplicates absorbed), ms",
                      stored, absorbed)


def batch_ways(admin: str, rounds: int, size: int = 100) -> list[dict[str, Any]]:
    """A batch saved at once (``execute_many``) next to the careful way it takes when a
    key is stored (keys looked up first, the rest saved together: every batch's way
    before issue 27's eighth step), in one process, taking turns; wall time and client
    CPU a command, medians of the rounds. Pin the process (``taskset -c 1``) to keep the
    client's figures steady; the server runs where it will."""
    with fresh_database(admin) as url:
        ours = AuraApp(url, pool_size=2)
        pipeline = ours.commands

        def carefully(commands: list[Any]) -> object:
            prepared = [pipeline._prepare(c) for c in commands]
            return pipeline._execute_carefully(prepared, prepared)  # each key once here

        ways: dict[str, Callable[[list[Any]], object]] = {
            "the careful way (keys looked up first)": carefully,
            "at once (one round trip)": pipeline._execute_many,
        }
        run = uuid4().hex
        made = iter(range(10**9))

        def batch() -> list[Any]:
            b = next(made)
            return [ours.start_debate_command("t", ["a", "b"], idempotency_key=f"{run}:{b}:{i}")
                    for i in range(size)]

        for way in ways.values():  # warm: statements prepared, caches filled
            for _ in range(10):
                way(batch())
        wall: dict[str, list[float]] = {name: [] for name in ways}
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        for r in range(rounds):
            for name, way in (list(ways.items()) if r % 2 else list(ways.items())[::-1]):
                batches = [batch() for _ in range(20)]
                started, cpu_started = time.perf_counter(), time.process_time()
                for commands in batches:
                    way(commands)
                wall[name].append((time.perf_counter() - started) / (20 * size) * 1e6)
                cpu[name].append((time.process_time() - cpu_started) / (20 * size) * 1e6)
        ours.close()
    careful, at_once = ways
    return [{"case": f"{size} keyed commands in one transaction, {what} a command",
             "baseline": careful, "baseline events/s": round(median(values[careful]), 1),
             "aura-es events/s": round(median(values[at_once]), 1),
             "ratio": round(median(values[at_once]) / median(values[careful]), 2)}
            for what, values in (("wall µs", wall), ("client CPU µs", cpu))]


def _retry_row(case: str, first: list[float], retried: list[float]) -> dict[str, Any]:
    """Latencies (ms) of retries next to their first, storing calls."""
    def shown(ms: list[float]) -> str:
        return f"p50 {percentile(ms, 50):.2f} / p99 {percentile(ms, 99):.2f}"

    return {"case": case, "baseline": "the first, storing call",
            "baseline events/s": shown(first), "aura-es events/s": shown(retried),
            "ratio": round(percentile(retried, 50) / percentile(first, 50), 2)}


def _seconds_per_call(call: Callable[[], object], n: int) -> float:
    """The best of five timings of ``n`` calls, per call."""
    return min(timeit.repeat(call, number=n, repeat=5)) / n


def _microseconds_row(case: str, baseline: str, reference: float, ours: float) -> dict[str, Any]:
    """A row of per-call costs (the columns keep their names across benchmarks)."""
    return {
        "case": case,
        "baseline": baseline,
        "baseline events/s": round(reference * 1e6, 2),
        "aura-es events/s": round(ours * 1e6, 2),
        "ratio": round(ours / reference, 2),
    }


def payload_check(n: int) -> dict[str, Any]:
    """What refusing NUL, NaN, surrogates and oversized events costs per event: the
    checked encoding next to the plain one, on a typical debate event's state."""
    state = {
        "topic": "AI ethics policy", "participants": ["agent-1", "agent-2", "agent-3"],
        "timestamp": datetime.now(UTC), "originator_topic": "aura.debate",
        "meta": {"event_id": str(uuid4()), "tenant_id": "default",
                 "correlation_id": str(uuid4()), "causation_id": None,
                 "idempotency_key": "req-42"},
    }
    return _microseconds_row(
        "encode one event (checked: NUL, surrogates, NaN, 64-bit, size), µs",
        "orjson.dumps, unchecked",
        _seconds_per_call(lambda: orjson.dumps(state, default=payload.json_default), n),
        _seconds_per_call(lambda: payload.encode(state, "event"), n),
    )


def schema_check(n: int) -> dict[str, Any]:
    """What checking an event against its JSON Schema costs on a write: the mapper's
    checked encoding, next to the same plus the schema check it now makes."""
    from aura_es.domain.debate import DebateStarted
    from aura_es.schemas.validate import check_payload

    state = {
        "topic": "AI ethics policy", "participants": ["agent-1", "agent-2", "agent-3"],
        "tenant_id": "default", "timestamp": datetime.now(UTC),
        "originator_topic": "aura.debate",
        "meta": {"event_id": str(uuid4()), "tenant_id": "default"},
    }

    def encoded_and_checked() -> None:
        check_payload(DebateStarted, payload.encode(state, "event"), "event")

    encoded_and_checked()  # the validator is built once per class, not per event
    return _microseconds_row(
        "encode one event and check it against its JSON Schema, µs",
        "encode (checked) without the schema",
        _seconds_per_call(lambda: payload.encode(state, "event"), n),
        _seconds_per_call(encoded_and_checked, n),
    )


def schema_validators(n: int) -> dict[str, Any]:
    """The write check (pydantic, strict, over the stored JSON) next to a JSON Schema
    interpreter (jsonschema) on the same event and the same schema."""
    from jsonschema import Draft202012Validator

    from aura_es.domain.debate import DebateStarted
    from aura_es.schemas.generate import current_schema
    from aura_es.schemas.validate import check_payload

    state = payload.encode({"topic": "AI ethics policy", "tenant_id": "default",
                            "participants": ["agent-1", "agent-2", "agent-3"]}, "event")
    interpreter = Draft202012Validator(current_schema(DebateStarted))
    check_payload(DebateStarted, state, "event")  # built once per class
    return _microseconds_row(
        "check one event against its schema, µs",
        "jsonschema Draft202012Validator",
        _seconds_per_call(lambda: interpreter.is_valid(orjson.loads(state)), n),
        _seconds_per_call(lambda: check_payload(DebateStarted, state, "event"), n),
    )


def writer_processes(admin: str, n: int, pgbench_seconds: int) -> list[dict[str, Any]]:
    with fresh_database(admin) as url:
        plain_app(url, 1).close()  # its table, before the writer processes race to make it
        return writers.rows(url, n, pgbench_seconds)


def main(*, quick: bool, as_json: bool, argv: list[str]) -> None:
    n = 300 if quick else 3000
    if "--batch-ways" in argv:
        with postgres() as admin:
            rows = batch_ways(admin, 6 if quick else 24)
        report("append: a batch at once next to the careful way (one process, taking turns)",
               rows, as_json=as_json)
        return
    with postgres() as admin:
        rows = [
            single_and_concurrent(admin, n, 1),
            *writer_processes(admin, n * 2, 2 if quick else 8),
            batches(admin, n * 10, 100, one_command=True),
            batches(admin, n * 10, 100),
            duplicates(admin, n // 3),
            update_duplicates(admin, n // 3),
            batch_duplicates(admin, n // 30),
            payload_check(n * 10),
            schema_check(n * 10),
            schema_validators(n * 10),
        ]
    report("append: aura-es next to its baselines (same run, same server)", rows, as_json=as_json)
