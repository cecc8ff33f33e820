"""Gauges read from PostgreSQL at scrape time: lag, DLQ, breakers, mirror, health, and
whatever gauges the projections define for their read models.

Computed from the database rather than kept by worker processes, so a scrape is right
even when a worker just died or runs on another host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from aura_es.catalog.model import ProjectionSpec
from aura_es.ops.health import Health, assess, database_down
from aura_es.ops.status import horizon_status, mirror_status, projection_status
from aura_es.projection.engine.loading import build

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class DatabaseCollector(Collector):
    def __init__(
        self, connect: Callable[[], psycopg.Connection[Any]], specs: Sequence[ProjectionSpec],
        max_lag_seconds: float,
    ) -> None:
        self.connect = connect
        self.specs = list(specs)
        self.max_lag_seconds = max_lag_seconds
        self._horizon: dict[str, Any] = {}

    def health(self) -> Health:
        health, _, _, conn = self._observe()
        if conn is not None:
            conn.close()
        return health

    def _observe(self) -> tuple[Health, list[dict[str, Any]], list[dict[str, Any]], Any]:
        """Health, projection rows, mirror rows and the open connection (or None)."""
        try:
            conn = self.connect()
        except Exception as e:
            return database_down(e), [], [], None
        try:
            rows = projection_status(conn, self.specs)
            mirrors = mirror_status(conn)
            self._horizon = horizon_status(conn, at_least_seconds=0)
        except Exception as e:
            conn.close()
            return database_down(e), [], [], None
        return assess(rows, self.max_lag_seconds, self._horizon), rows, mirrors, conn

    def collect(self) -> Iterator[GaugeMetricFamily]:
        health, rows, mirrors, conn = self._observe()
        yield _gauge("aura_database_up", "1 when PostgreSQL answers.", [], [([], conn is not None)])
        yield _gauge("aura_system_health_score", "Overall health, 0 to 100.", [],
                     [([], health.score)])
        if conn is None:
            return
        try:
            held = self._horizon.get("held_back")
            yield _gauge("aura_read_horizon_held_back_seconds",
                         "Age of the oldest writing transaction on the server: readers read"
                         " nothing it could precede until it ends.", [],
                         [([], held["seconds"] if held else 0.0)])
            yield from self._projections(rows)
            yield from self._mirror(mirrors)
            yield from self._read_models(conn)
        finally:
            conn.close()

    def _projections(self, rows: list[dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
        by = "projection_name"
        families: list[tuple[str, str, Callable[[dict[str, Any]], float]]] = [
            ("aura_projection_lag_seconds", "Age of the oldest event not yet projected.",
             lambda r: r["lag_seconds"]),
            ("aura_projection_lag_events", "Events of its topics after the checkpoint.",
             lambda r: r["lag_events"]),
            ("aura_projection_checkpoint_position", "The checkpoint's log position.",
             lambda r: r["checkpoint"]),
            ("aura_projection_up", "1 when a live worker is active for the projection.",
             lambda r: r["state"] in ("running", "paused")),
            ("aura_projection_paused", "1 when the projection is paused at a poison event.",
             lambda r: r["state"] == "paused"),
            ("aura_projection_drift", "1 when the read model was built by another definition.",
             lambda r: r["drift"]),
            ("aura_projection_generation", "The read model's generation (replays add one).",
             lambda r: r["generation"]),
            ("aura_projection_partitions", "Partitions the read model is split into.",
             lambda r: r["partitions"]),
            ("aura_projection_partitions_unowned",
             "Partitions no live worker holds (waiting for a claim).",
             lambda r: r["partitions_unowned"]),
            ("aura_projection_active_workers", "Live workers holding partitions.",
             lambda r: r["active_workers"]),
            ("aura_circuit_breaker_state", "0 closed, 1 half-open, 2 open.",
             lambda r: BREAKER_STATES.get(r["breaker"] or "closed", 0)),
            ("aura_dlq_depth", "Open dead letters.", lambda r: r["dead_letters"]),
            ("aura_dlq_parked_events", "Events parked behind open dead letters.",
             lambda r: r["parked_events"]),
            ("aura_dlq_oldest_age_seconds", "Age of the oldest open dead letter.",
             lambda r: r["oldest_dead_letter_seconds"] or 0.0),
        ]
        for name, help_text, value in families:
            yield _gauge(name, help_text, [by], [([r["projection"]], value(r)) for r in rows])
        if rows:
            yield _gauge("aura_event_store_head_position", "The last event's log position.", [],
                         [([], rows[0]["head"])])

    def _mirror(self, mirrors: list[dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
        yield _gauge("aura_mirror_lag_events", "Stored events not yet on the stream.",
                     ["stream"], [([m["stream"]], m["lag_events"]) for m in mirrors])
        yield _gauge("aura_mirror_lag_seconds", "Age of the oldest event not yet mirrored.",
                     ["stream"], [([m["stream"]], m["lag_seconds"]) for m in mirrors])

    def _read_models(self, conn: psycopg.Connection[Any]) -> Iterator[GaugeMetricFamily]:
        """Gauges the projections themselves define (``Projection.gauges``): a domain's
        own metrics, such as the AURA debates', come with its read model."""
        families: dict[str, GaugeMetricFamily] = {}
        for spec in self.specs:
            for family in build(spec).gauges(conn):
                if family.name in families:
                    families[family.name].samples.extend(family.samples)
                else:
                    families[family.name] = family
        yield from families.values()


def _gauge(
    name: str, help_text: str, labels: list[str], samples: list[tuple[list[str], Any]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=labels)
    for values, value in samples:
        family.add_metric(values, float(value))
    return family
