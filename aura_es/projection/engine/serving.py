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
    """``lock``: every partition's row is held until the transaction ends, so no live
    batch of any partition interleaves (a replay's switch, a partial replay)."""
    if lock:
        checkpoints.rows_of(cur, spec.name, lock=True)
    found = checkpoints.get(cur, spec.name)
    if found is None:
        return Live(1, spec.storage, 0, 0, None, exists=False)
    return Live(found.generation, found.storage or spec.storage, found.position,
                found.events_applied, found.fingerprint, True, found.cursor)
