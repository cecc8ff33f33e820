"""LLMSpendProjection: per tenant, provider, model and day: calls, failures, tokens, cost,
mean and p95 latency.

Every column is order-independent (sums, and latencies kept sorted), so a batch applied
late, as a DLQ retry does, gives the same row as the log's order would.

Completions and failures do not repeat the call's tenant, provider and model, so the
projection keeps each call's row key in an auxiliary table it writes in the same
transaction. The day is the UTC day the call was requested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date
from decimal import Decimal
from typing import Any
from uuid import UUID

from psycopg import sql
from psycopg.types.json import Jsonb

from aura_es.projection import EventEnvelope, Projection, Tx

REQUESTED = "aura.llm_call.requested.v1"
COMPLETED = "aura.llm_call.completed.v1"
FAILED = "aura.llm_call.failed.v1"

RowKey = tuple[str, str, str, date]


@dataclass
class _Delta:
    calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    latencies: list[float] = field(default_factory=list)


class LLMSpendProjection(Projection):
    version = "1"
    key_column = "tenant_id"

    @property
    def calls_table(self) -> sql.Identifier:
        return self.aux_table("calls")

    def tables(self) -> list[str]:
        return [self.storage, self.aux_name("calls")]

    def create(self, tx: Tx) -> None:
        tx.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " tenant_id text NOT NULL, provider text NOT NULL, model text NOT NULL,"
            " day date NOT NULL,"
            " calls bigint NOT NULL, failures bigint NOT NULL,"
            " prompt_tokens bigint NOT NULL, completion_tokens bigint NOT NULL,"
            " cost_usd numeric NOT NULL,"
            " latencies double precision[] NOT NULL,"
            " latency_sum_ms numeric NOT NULL,"
            " latency_mean_ms double precision GENERATED ALWAYS AS (CASE WHEN"
            "   cardinality(latencies) = 0 THEN NULL ELSE"
            "   (latency_sum_ms / cardinality(latencies))::double precision END) STORED,"
            " latency_p95_ms double precision,"
            " PRIMARY KEY (tenant_id, provider, model, day))"
        ).format(t=self.table))
        tx.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} (call_id uuid PRIMARY KEY, tenant_id text NOT NULL,"
            " provider text NOT NULL, model text NOT NULL, day date NOT NULL)"
        ).format(t=self.calls_table))

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        requested = {e.aggregate_id: e for e in batch if e.topic == REQUESTED}
        keys: dict[UUID, RowKey] = {
            call_id: (e.tenant_id, e.payload["provider"], e.payload["model"],
                      e.occurred_at.astimezone(UTC).date())
            for call_id, e in requested.items()
        }
        if requested:
            self._remember_calls(tx, keys)
        keys.update(self._known_calls(tx, {e.aggregate_id for e in batch} - keys.keys()))
        deltas: dict[RowKey, _Delta] = {}
        for event in batch:
            delta = deltas.setdefault(keys[event.aggregate_id], _Delta())
            if event.topic == REQUESTED:
                delta.calls += 1
                delta.prompt_tokens += int(event.payload["prompt_tokens"])
            elif event.topic == COMPLETED:
                delta.completion_tokens += int(event.payload["completion_tokens"])
                delta.cost_usd += Decimal(str(event.payload["cost_usd"]))
                delta.latencies.append(float(event.payload.get("latency_ms", 0.0)))
            elif event.topic == FAILED:
                delta.failures += 1
        self._merge(tx, deltas)

    def _remember_calls(self, tx: Tx, keys: dict[UUID, RowKey]) -> None:
        items = list(keys.items())
        tx.execute(sql.SQL(
            "INSERT INTO {t} (call_id, tenant_id, provider, model, day)"
            " SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::date[])"
        ).format(t=self.calls_table), [
            [k for k, _ in items], *([key[i] for _, key in items] for i in range(4)),
        ])

    def _known_calls(self, tx: Tx, call_ids: set[UUID]) -> dict[UUID, RowKey]:
        if not call_ids:
            return {}
        rows = tx.execute(sql.SQL(
            "SELECT call_id, tenant_id, provider, model, day FROM {t} WHERE call_id = ANY(%s)"
        ).format(t=self.calls_table), (list(call_ids),)).fetchall()
        found = {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}
        missing = call_ids - found.keys()
        if missing:
            raise LookupError(f"LLM call(s) completed or failed before requested: {missing}")
        return found

    def _merge(self, tx: Tx, deltas: dict[RowKey, _Delta]) -> None:
        items = list(deltas.items())
        columns: list[list[Any]] = [[key[i] for key, _ in items] for i in range(4)]
        columns += [
            [d.calls for _, d in items], [d.failures for _, d in items],
            [d.prompt_tokens for _, d in items], [d.completion_tokens for _, d in items],
            [d.cost_usd for _, d in items], [Jsonb(d.latencies) for _, d in items],
            [sum((Decimal(str(x)) for x in d.latencies), Decimal(0)) for _, d in items],
        ]
        p95 = "(SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY v) FROM unnest({}) v)"
        tx.execute(sql.SQL(
            "INSERT INTO {t} AS t (tenant_id, provider, model, day, calls, failures,"
            " prompt_tokens, completion_tokens, cost_usd, latencies, latency_sum_ms,"
            " latency_p95_ms)"
            " SELECT te, pr, mo, da, ca, fa, pt, ct, co, l, ls, " + p95.format("l") +
            " FROM (SELECT te, pr, mo, da, ca, fa, pt, ct, co, ls,"
            "   ARRAY(SELECT jsonb_array_elements_text(lj)::float8 ORDER BY 1) AS l FROM unnest("
            "   %s::text[], %s::text[], %s::text[], %s::date[], %s::bigint[], %s::bigint[],"
            "   %s::bigint[], %s::bigint[], %s::numeric[], %s::jsonb[], %s::numeric[])"
            "   AS x(te, pr, mo, da, ca, fa, pt, ct, co, lj, ls)) AS x"
            " ON CONFLICT (tenant_id, provider, model, day) DO UPDATE SET"
            " calls = t.calls + EXCLUDED.calls, failures = t.failures + EXCLUDED.failures,"
            " prompt_tokens = t.prompt_tokens + EXCLUDED.prompt_tokens,"
            " completion_tokens = t.completion_tokens + EXCLUDED.completion_tokens,"
            " cost_usd = t.cost_usd + EXCLUDED.cost_usd,"
            " latencies = ARRAY(SELECT unnest(t.latencies || EXCLUDED.latencies) ORDER BY 1),"
            " latency_sum_ms = t.latency_sum_ms + EXCLUDED.latency_sum_ms,"
            " latency_p95_ms = " + p95.format("t.latencies || EXCLUDED.latencies")
        ).format(t=self.table), columns)
