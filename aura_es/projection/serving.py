"""The generation of a read model that serves its projection now, and a runner for it
(what a live worker, or a dead letter's retry, writes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from aura_es.catalog.model import ProjectionSpec
from aura_es.projection import checkpoints
from aura_es.projection.loading import build
from aura_es.projection.runner import BatchRunner, GenerationChanged
from aura_es.store.eventlog import ORIGIN, Cursor


@dataclass(frozen=True)
class Live:
    """The generation that serves a projection now, and its checkpoint."""

    generation: int
    storage: str
    position: int
    events_applied: int
    fingerprint: str | None
    exists: bool
    cursor: Cursor = ORIGIN


def current(cur: psycopg.Cursor[Any], spec: ProjectionSpec, *, lock: bool = False) -> Live:
    found = checkpoints.get(cur, spec.name, lock=lock)
    if found is None:
        return Live(1, spec.storage, 0, 0, None, exists=False)
    return Live(found.generation, found.storage or spec.storage, found.position,
                found.events_applied, found.fingerprint, True, found.cursor)


def attach(
    conn: psycopg.Connection[Any], spec: ProjectionSpec, *, fingerprint: str | None = None
) -> BatchRunner:
    """A runner that writes the generation serving ``spec`` now (the live read model)."""
    for _ in range(3):
        with conn.cursor() as cur:
            serving = current(cur, spec)
        try:
            return BatchRunner(
                conn, spec, build(spec, serving.storage), fingerprint=fingerprint,
                generation=serving.generation,
            )
        except GenerationChanged:
            continue  # a replay switched between the read and the runner's setup
    raise GenerationChanged(f"projection {spec.name!r}: generation keeps changing")
