"""Runs projections in this process until they reach the head of the log: what a test
needs after its commands, instead of sleeping and hoping the workers are done."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from aura_es.catalog.model import ProjectionSpec
from aura_es.db import connect
from aura_es.projection import serving
from aura_es.projection.dispatch import Dispatcher
from aura_es.projection.resilience import ResilientRunner
from aura_es.store import eventlog


class NotCaughtUp(AssertionError):
    """The projections did not reach the head in time (the message says how far they got)."""


@dataclass(frozen=True)
class CaughtUp:
    head: int
    applied: dict[str, int]
    dead_lettered: dict[str, int]


def caught_up(
    database_url: str, specs: Sequence[ProjectionSpec], *, timeout: float = 30.0,
    side_effects: bool = True,
) -> CaughtUp:
    """Applies every event up to the head as a worker would (poison events dead-lettered,
    batches and checkpoints in one transaction), then runs the recorded side effects.
    Transient failures are retried until ``timeout``, then raised."""
    deadline = time.monotonic() + timeout
    applied: dict[str, int] = {}
    dead: dict[str, int] = {}
    with connect(database_url) as conn:
        head = eventlog.head(conn)
        for spec in specs:
            resilient = ResilientRunner(serving.attach(conn, spec), spec)
            applied[spec.name] = dead[spec.name] = 0
            while True:
                if time.monotonic() > deadline:
                    raise NotCaughtUp(
                        f"projection {spec.name!r} reached position"
                        f" {resilient.runner.position} of {head} within {timeout:g} s")
                progress = resilient.advance()
                if progress.step is not None:
                    applied[spec.name] += progress.step.applied
                    if progress.step.caught_up and resilient.runner.position >= head:
                        break
                if progress.dead_lettered is not None or progress.dead_lettered_type:
                    dead[spec.name] += 1
            if side_effects:
                Dispatcher(spec.name, spec.error_handling).run_due(conn)
    return CaughtUp(head, applied, dead)
