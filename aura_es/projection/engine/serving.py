"""The generation of a read model that serves its projection now (what a live worker, or
a dead letter's retry, writes: ``Engine.attach``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from aura_es.catalog.model import ProjectionSpec
from aura_es.projection.state import checkpoints
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
