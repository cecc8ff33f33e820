"""DebateStateProjection: every debate's status, topic, participants and progress.

A batch is folded per debate in memory, then written with one INSERT for the debates
it starts and one UPDATE for the debates it changes: two statements per batch however
many events, which is what makes catch-up fast.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from prometheus_client.core import GaugeMetricFamily
from psycopg import sql
from psycopg.types.json import Jsonb

from aura_es.projection import EventEnvelope, Projection, Tx

STARTED = "aura.debate.started.v1"
ARGUED = "aura.debate.argument_added.v1"
CONSENSUS = "aura.debate.consensus_reached.v1"
FAILED = "aura.debate.failed.v1"
CONSENSUS_WINDOWS = {"1h": "1 hour", "24h": "24 hours", "7d": "7 days"}


@dataclass
class _Change:
    """What one batch did to one debate."""

    started: EventEnvelope | None = None
    arguments: int = 0
    rounds: int = 0
    status: str | None = None
    decision: str | None = None
    failure_reason: str | None = None
    updated_at: datetime | None = None
    participants: list[str] = field(default_factory=list)


class DebateStateProjection(Projection):
    version = "1"
    key_column = "debate_id"

    def create(self, tx: Tx) -> None:
        tx.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            " debate_id uuid PRIMARY KEY,"
            " tenant_id text NOT NULL,"
            " topic text NOT NULL,"
            " participants text[] NOT NULL,"
            " status text NOT NULL,"
            " rounds integer NOT NULL,"
            " arguments integer NOT NULL,"
            " decision text,"
            " failure_reason text,"
            " started_at timestamptz NOT NULL,"
            " updated_at timestamptz NOT NULL)"
        ).format(t=self.table))

    def gauges(self, conn: psycopg.Connection[Any]) -> Iterator[GaugeMetricFamily]:
        """The AURA debate gauges of the hardening plan, read from this read model."""
        if conn.execute("SELECT to_regclass(%s)", (self.spec.storage,)).fetchone() == (None,):
            return
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE status = 'open'").format(
            self.table)).fetchone()
        active = GaugeMetricFamily("aura_active_debates", "Debates started and not yet"
                                   " concluded.", value=float(row[0]) if row else 0.0)
        yield active
        rate = GaugeMetricFamily(
            "aura_debate_consensus_rate",
            "Share of debates concluded in the window that reached consensus.",
            labels=["time_window"])
        for label, interval in CONSENSUS_WINDOWS.items():
            row = conn.execute(sql.SQL(
                "SELECT count(*) FILTER (WHERE status = 'consensus'),"
                " count(*) FILTER (WHERE status IN ('consensus', 'failed'))"
                " FROM {} WHERE updated_at > now() - %s::interval").format(self.table),
                (interval,),
            ).fetchone()
            if row and row[1]:
                rate.add_metric([label], row[0] / row[1])
        yield rate

    def forget(self, tx: Tx, aggregate_ids: Sequence[UUID]) -> None:
        tx.execute(sql.SQL("DELETE FROM {t} WHERE debate_id = ANY(%s)").format(t=self.table),
                   [list(aggregate_ids)])

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        changes: dict[UUID, _Change] = {}
        for event in batch:
            change = changes.setdefault(event.aggregate_id, _Change())
            change.updated_at = event.occurred_at
            payload = event.payload
            if event.topic == STARTED:
                change.started = event
            elif event.topic == ARGUED:
                change.arguments += 1
                change.rounds = max(change.rounds, int(payload["round"]))
            elif event.topic == CONSENSUS:
                change.status, change.decision = "consensus", payload["decision"]
            elif event.topic == FAILED:
                change.status, change.failure_reason = "failed", payload["reason"]
        new = {k: c for k, c in changes.items() if c.started is not None}
        updated = {k: c for k, c in changes.items() if c.started is None}
        if new:
            self._insert(tx, new)
        if updated:
            self._update(tx, updated)

    def _insert(self, tx: Tx, new: dict[UUID, _Change]) -> None:
        rows: list[list[Any]] = [[] for _ in range(11)]
        for debate_id, c in new.items():
            assert c.started is not None
            p = c.started.payload
            values = [
                debate_id, c.started.tenant_id, p["topic"], Jsonb(p["participants"]),
                c.status or "open", c.rounds, c.arguments, c.decision, c.failure_reason,
                c.started.occurred_at, c.updated_at,
            ]
            for column, value in zip(rows, values, strict=True):
                column.append(value)
        tx.execute(sql.SQL(
            "INSERT INTO {t} (debate_id, tenant_id, topic, participants, status, rounds,"
            " arguments, decision, failure_reason, started_at, updated_at)"
            " SELECT d, te, tp, ARRAY(SELECT jsonb_array_elements_text(p)), s, r, a, de, f,"
            " sa, ua FROM unnest("
            " %s::uuid[], %s::text[], %s::text[], %s::jsonb[], %s::text[], %s::int[],"
            " %s::int[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])"
            " AS x(d, te, tp, p, s, r, a, de, f, sa, ua)"
        ).format(t=self.table), rows)

    def _update(self, tx: Tx, updated: dict[UUID, _Change]) -> None:
        changes = list(updated.items())
        tx.execute(sql.SQL(
            "UPDATE {t} AS t SET"
            " arguments = t.arguments + x.a,"
            " rounds = greatest(t.rounds, x.r),"
            " status = coalesce(x.s, t.status),"
            " decision = coalesce(x.de, t.decision),"
            " failure_reason = coalesce(x.f, t.failure_reason),"
            " updated_at = x.ua"
            " FROM unnest(%s::uuid[], %s::int[], %s::int[], %s::text[], %s::text[],"
            " %s::text[], %s::timestamptz[]) AS x(d, a, r, s, de, f, ua)"
            " WHERE t.debate_id = x.d"
        ).format(t=self.table), [
            [k for k, _ in changes],
            [c.arguments for _, c in changes],
            [c.rounds for _, c in changes],
            [c.status for _, c in changes],
            [c.decision for _, c in changes],
            [c.failure_reason for _, c in changes],
            [c.updated_at for _, c in changes],
        ])
        if tx.cursor.rowcount != len(changes):
            raise LookupError(
                f"{len(changes) - tx.cursor.rowcount} debate(s) changed before they started"
            )

