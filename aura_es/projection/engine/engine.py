"""The engine: runs one projection's read model, step by step, with its failure policy.

Whoever drives a projection (a worker, a blue/green rebuild, a dead letter's retry, a
partial replay, the test kit's ``caught_up``) builds one ``Engine`` from the spec and
calls ``advance`` until it has what it wants. Each call is one step:

- the breaker is open: nothing runs; ``Progress.wait`` says until the probe.
- a batch commits (read-model writes and checkpoint in one transaction): ``after_step``.
- a transient failure (the database, a timeout, a listed exception): the breaker counts
  it, ``after_transient_failure``, and ``Progress.wait`` is the backoff; a connection
  that broke says so (``Progress.reconnect``): the driver opens a new one.
- any other failure is poison: the batch is split until the failing event is alone,
  retried ``max_retries`` times, then dead-lettered with its aggregate's later events
  parked behind it (or, with no dead-letter queue, ``Paused`` is raised): ``after_poison``.

Middleware (``middleware.py``) watch every step; the engine knows none of them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg

from aura_es.catalog.model import ProjectionSpec
from aura_es.errors import AuraError
from aura_es.projection.engine import serving
from aura_es.projection.engine.failures import BreakerState, CircuitBreaker, FailurePolicy
from aura_es.projection.engine.loading import build
from aura_es.projection.engine.middleware import Middleware, Signals
from aura_es.projection.engine.runner import (
    BatchRunner,
    GenerationChanged,
    Lease,
    LostOwnership,
    Step,
)
from aura_es.store.envelope import EventEnvelope


class Paused(AuraError):
    """A poison event and no dead-letter queue: the projection stops at it."""

    def __init__(self, position: int, error: BaseException) -> None:
        super().__init__(
            f"paused before position {position}: {type(error).__name__}: {error}"
            " (dead_letter_queue is off)"
        )
        self.error = error


@dataclass(frozen=True)
class Progress:
    """What one call of ``advance`` did; ``wait`` is how long to pause before the next."""

    step: Step | None = None
    wait: float = 0.0
    #: Poison isolation: the batch was split to this size.
    split_to: int | None = None
    #: Poison isolation: the isolated event is retried (attempt number).
    retry: int | None = None
    dead_lettered: int | None = None
    dead_lettered_type: str | None = None
    #: The event poison isolation is about (once it is alone), for log lines.
    event: EventEnvelope | None = None
    #: The transient failure this step met, if any.
    failure: BaseException | None = None
    #: The connection broke: the driver must open a new one (and a new engine).
    reconnect: bool = False


class Engine:
    def __init__(
        self, conn: psycopg.Connection[Any], spec: ProjectionSpec, *,
        storage: str | None = None, checkpoint_name: str | None = None,
        fingerprint: str | None = None, replaying: bool = False, generation: int = 1,
        batch_size: int | None = None, middleware: Sequence[Middleware] = (),
        signals: Signals | None = None, failures: FailurePolicy | None = None,
        log: Any = None, max_transient_failures: int | None = None,
        partition: int = 0, lease: Lease | None = None, partitions: int | None = None,
    ) -> None:
        self.conn = conn
        self.spec = spec
        self.batch_size = batch_size or spec.batch_size
        self.log = log
        # A worker passes its own signals and policy: its breaker outlives each
        # connection (and so each engine), and its middleware hear of both.
        self.signals = signals or Signals(middleware, log)
        self.failures = failures or wired_policy(spec, self.signals)
        #: None: transient failures are retried for ever (behind the breaker).
        self.max_transient_failures = max_transient_failures
        self.runner = BatchRunner(
            conn, spec, build(spec, storage), checkpoint_name=checkpoint_name,
            fingerprint=fingerprint, replaying=replaying, generation=generation,
            batch_size=self.batch_size, partition=partition, lease=lease,
            partitions=partitions,
        )
        self.limit = self.batch_size
        self.attempts = 0
        self.first_failed_at: datetime | None = None
        self._transient_in_a_row = 0
        self.signals.emit("after_attach", self)

    @classmethod
    def attach(
        cls, conn: psycopg.Connection[Any], spec: ProjectionSpec, **options: Any,
    ) -> Engine:
        """An engine of the generation that serves ``spec`` now (the live read model)."""
        for _ in range(3):
            with conn.cursor() as cur:
                live = serving.current(cur, spec)
            try:
                return cls(conn, spec, storage=live.storage, generation=live.generation,
                           **options)
            except GenerationChanged:
                continue  # a replay switched between the read and the runner's setup
        raise GenerationChanged(f"projection {spec.name!r}: generation keeps changing")

    @property
    def breaker(self) -> CircuitBreaker:
        return self.failures.breaker

    # -- one step --------------------------------------------------------------------------

    def advance(self) -> Progress:
        probe_in = self.failures.probe_wait()
        if probe_in is not None:
            return Progress(wait=min(probe_in, 1.0))
        self.signals.emit("before_step", self)
        try:
            step = self.runner.step(limit=self.limit)
        except LostOwnership:  # a takeover or a new generation: the driver decides
            raise
        except Exception as e:
            if self.conn.broken or self.failures.is_transient(e):
                return self._transient(e)
            progress = self._poison(e)
            self.signals.emit("after_poison", self, progress, e)
            return progress
        self._transient_in_a_row = 0
        self.failures.breaker.success()
        # Grow back after an isolation, so one poison event costs O(log n) small batches.
        self.limit = min(self.batch_size, self.limit * 2)
        self.attempts, self.first_failed_at = 0, None
        self.signals.emit("after_step", self, step)
        return Progress(step=step, dead_lettered_type=step.dead_lettered_type)

    def advance_or_raise(self) -> Progress:
        """``advance`` for a driver with nothing else to do meanwhile (a rebuild and its
        helpers): a lost connection is raised, a wait is slept through."""
        progress = self.advance()
        if progress.reconnect:
            assert progress.failure is not None
            raise progress.failure
        if progress.wait:
            time.sleep(progress.wait)
        return progress

    def refold(self, cur: psycopg.Cursor[Any], aggregate_ids: Sequence[UUID],
               events: Sequence[EventEnvelope]) -> None:
        """A partial replay's chunk, in ``cur``'s transaction: these aggregates' rows are
        deleted and their events folded again (see ``BatchRunner.refold``)."""
        self.runner.refold(cur, aggregate_ids, events)

    def retry_dead_letter(self, dead_letter_id: int) -> bool:
        """Re-applies a dead letter's events in order (see ``BatchRunner``)."""
        return self.runner.retry_dead_letter(dead_letter_id)

    # -- failures --------------------------------------------------------------------------

    def _transient(self, error: BaseException) -> Progress:
        wait = self.failures.transient_failure()
        self._transient_in_a_row += 1
        self.signals.emit("after_transient_failure", error, wait)
        limit = self.max_transient_failures
        if limit is not None and self._transient_in_a_row > limit:
            raise error  # the driver's patience is spent: the failure is its to report
        return Progress(wait=wait, failure=error, reconnect=self.conn.broken)

    def _poison(self, error: BaseException) -> Progress:
        if self.limit > 1:
            self.limit = max(1, self.limit // 2)
            return Progress(split_to=self.limit)
        event = self.runner.peek()
        self.attempts += 1
        self.first_failed_at = self.first_failed_at or datetime.now(UTC)
        if self.attempts <= self.failures.max_retries:
            return Progress(wait=self.failures.retry_delay(self.attempts), retry=self.attempts,
                            event=event)
        if not self.failures.dead_letter_queue:
            raise Paused(self.runner.position + 1, error)
        position = self.runner.dead_letter_next(error, self.attempts, self.first_failed_at)
        self.attempts, self.first_failed_at = 0, None
        return Progress(dead_lettered=position, event=event,
                        dead_lettered_type=event.topic if event else None)


def wired_policy(spec: ProjectionSpec, signals: Signals) -> FailurePolicy:
    """The spec's failure policy, its breaker's moves told to ``signals``."""
    failures = FailurePolicy(spec.error_handling)

    def moved(before: BreakerState, after: BreakerState) -> None:
        signals.emit("after_breaker_change", before, after)

    failures.breaker.on_change = moved
    return failures
