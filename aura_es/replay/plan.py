"""``aura-es replay --dry-run``: what a rebuild would do and how long it would take.

The estimate comes from the projection's last rebuild when there is one, otherwise
from a trial: the first events are folded into scratch tables inside a transaction
that is rolled back, so nothing changes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from aura_es import identifiers
from aura_es.catalog.model import ProjectionSpec
from aura_es.projection.engine import serving
from aura_es.projection.engine.engine import Engine
from aura_es.projection.engine.loading import build, fingerprint
from aura_es.projection.state import checkpoints
from aura_es.replay import generations
from aura_es.replay.rebuild import MIN_REBUILD_BATCH, kept_aside_name, old_generation_tables
from aura_es.store import eventlog

TRIAL_EVENTS = 5000


@dataclass(frozen=True)
class Plan:
    projection: str
    live_generation: int
    generation: int
    resume_from: int | None
    abandons_generation: int | None
    events: int
    create: list[str]
    views: list[str]
    drop: list[str]
    keep: list[str]
    events_per_second: float | None
    estimate_basis: str

    @property
    def estimated_seconds(self) -> float | None:
        if not self.events_per_second:
            return None
        return self.events / self.events_per_second

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        seconds = self.estimated_seconds
        data["estimated_seconds"] = None if seconds is None else round(seconds, 1)
        return data


def plan_rebuild(
    conn: psycopg.Connection[Any], spec: ProjectionSpec, *, keep_old: bool = False
) -> Plan:
    current = fingerprint(spec)
    with conn.cursor() as cur:
        live = serving.current(cur, spec)
        unfinished = generations.building(cur, spec)
        resume = unfinished if unfinished and unfinished[2] == current else None
        generation = resume[0] if resume else generations.next_generation(cur, spec)
        storage = resume[1] if resume else generations.physical_storage(spec, generation)
        resume_cursor = _shadow_cursor(cur, spec, generation) if resume else None
        resume_from = resume_cursor.position if resume_cursor else None
        old_tables = old_generation_tables(cur, spec, live)
        rate = generations.last_rate(cur, spec)
    events = eventlog.pending(conn, spec.source_events, resume_cursor or eventlog.ORIGIN)
    basis = "the last rebuild of this projection"
    if rate is None:
        rate = _trial_rate(conn, spec)
        basis = f"a trial of the first {TRIAL_EVENTS:,} events, rolled back"
    kept = old_tables if keep_old else []
    if keep_old and live.generation == 1:
        kept = [kept_aside_name(t, spec.storage) for t in old_tables]
    return Plan(
        projection=spec.name, live_generation=live.generation, generation=generation,
        resume_from=resume_from,
        abandons_generation=unfinished[0] if unfinished and not resume else None,
        events=events, create=build(spec, storage).tables(), views=build(spec).tables(),
        drop=[] if keep_old else old_tables, keep=kept,
        events_per_second=rate, estimate_basis=basis,
    )


def _shadow_cursor(
    cur: psycopg.Cursor[Any], spec: ProjectionSpec, generation: int,
) -> eventlog.Cursor:
    found = checkpoints.get(cur, generations.shadow_checkpoint(spec, generation))
    return found.cursor if found else eventlog.ORIGIN


def _trial_rate(conn: psycopg.Connection[Any], spec: ProjectionSpec) -> float | None:
    # Generation 0 is never used, so the scratch name is nobody's table.
    scratch = identifiers.generation_table(spec.storage, 0)
    with conn.transaction(force_rollback=True):
        engine = Engine(conn, spec, storage=scratch, checkpoint_name=f"{spec.name}@trial",
                        replaying=True, batch_size=max(spec.batch_size, MIN_REBUILD_BATCH))
        started = time.perf_counter()
        # One step and no failure policy: a trial that fails says nothing of the rate.
        step = engine.runner.step(limit=TRIAL_EVENTS)
        seconds = time.perf_counter() - started
    if step.applied < 100:
        return None
    return step.applied / seconds
