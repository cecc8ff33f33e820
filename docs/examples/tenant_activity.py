"""A user-written projection, outside the aura-es packages, named only by a catalog.

Per-event methods (``@on``) keep it short; ``handle`` could instead take the whole batch.
"""

from __future__ import annotations

from psycopg import sql

from aura_es.projection import EventEnvelope, Projection, Tx, on


class TenantActivityProjection(Projection):
    version = "1"  # bump when the logic below changes: `aura-es status` then shows drift
    key_column = "tenant_id"

    def create(self, tx: Tx) -> None:
        tx.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} (tenant_id text PRIMARY KEY,"
            " debates_started bigint NOT NULL DEFAULT 0,"
            " llm_calls bigint NOT NULL DEFAULT 0, last_seen timestamptz)"
        ).format(t=self.table))

    def _bump(self, tx: Tx, event: EventEnvelope, column: str) -> None:
        tx.execute(sql.SQL(
            "INSERT INTO {t} AS t (tenant_id, {c}, last_seen) VALUES (%s, 1, %s)"
            " ON CONFLICT (tenant_id) DO UPDATE SET {c} = t.{c} + 1,"
            " last_seen = EXCLUDED.last_seen"
        ).format(t=self.table, c=sql.Identifier(column)), (event.tenant_id, event.occurred_at))

    @on("aura.debate.started.v1")
    def debate_started(self, event: EventEnvelope, tx: Tx) -> None:
        self._bump(tx, event, "debates_started")

    @on("aura.llm_call.requested.v1")
    def llm_call_requested(self, event: EventEnvelope, tx: Tx) -> None:
        self._bump(tx, event, "llm_calls")
