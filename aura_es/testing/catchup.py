"""Runs projections in this process until they reach the head of the log: what a test
needs after its commands, instead of sleeping and hoping the workers are done."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aura_es.catalog.model import ProjectionSpec
from aura_es.db import connect
from aura_es.projection.engine.dispatch import Dispatcher
from aura_es.projection.engine.engine import Engine
from aura_es.store import eventlog


class NotCaughtUp(AssertionError):
    """The projections did not reach the head in time (the message says how far they got)."""


@dataclass(frozen=True)
class CaughtUp:
    head: int
    applied: dict[str, int]
    dead_lettered: dict[str, int]


#: The ``aura_caught_up`` fixture's type: ``caught_up`` with the test's database and catalog.
CatchUp = Callable[..., CaughtUp]


def caught_up(
    database_url: str, specs: Sequence[ProjectionSpec], *, timeout: float = 30.0,
    side_effects: bool = True,
) -> CaughtUp:
    """Applies every event up to the head as a worker would (the same engine: poison
    events dead-lettered, batches and checkpoints in one transaction), then runs the
    recorded side effects. Transient failures are retried with the projection's backoff
    until ``timeout``, then raised."""
    deadline = time.monotonic() + timeout
    applied: dict[str, int] = {}
    dead: dict[str, int] = {}
    with connect(database_url) as conn:
        head = eventlog.head(conn)
        for spec in specs:
            applied[spec.name] = dead[spec.name] = 0
            for partition in range(spec.partitions):
                engine = Engine.attach(conn, spec, partition=partition)
                done, lettered = _run(engine, head, deadline, timeout)
                applied[spec.name] += done
                dead[spec.name] += lettered
            if side_effects:
                Dispatcher(spec.name, spec.error_handling).run_due(conn)
    return CaughtUp(head, applied, dead)


def _run(engine: Engine, head: int, deadline: float, timeout: float) -> tuple[int, int]:
    """Steps one partition's engine to ``head``; returns events applied and dead-lettered."""
    applied = dead = 0
    last_failure: BaseException | None = None
    while True:
        if time.monotonic() > deadline:
            failed = (f"; its last failure: {type(last_failure).__name__}:"
                      f" {last_failure}" if last_failure else "")
            where = (f" partition {engine.runner.partition}"
                     if engine.runner.partition.count > 1 else "")
            raise NotCaughtUp(
                f"projection {engine.spec.name!r}{where} reached position"
                f" {engine.runner.position} of {head} within {timeout:g} s{failed}")
        progress = engine.advance()
        if progress.reconnect:
            assert progress.failure is not None
            raise progress.failure
        last_failure = progress.failure or last_failure
        if progress.wait:
            time.sleep(min(progress.wait, max(0.0, deadline - time.monotonic())))
        if progress.step is not None:
            applied += progress.step.applied
            if progress.step.caught_up and engine.runner.position >= head:
                return applied, dead
        if progress.dead_lettered is not None or progress.dead_lettered_type:
            dead += 1
