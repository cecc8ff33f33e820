"""Poison isolation around the batch runner: split a failing batch until the failing
event is alone, retry it, then dead-letter it (or pause the projection, visibly).

Transient failures are not handled here: they propagate to the worker, whose circuit
breaker and retry policy deal with them, so a sick database never fills the DLQ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aura_es.catalog.model import ProjectionSpec
from aura_es.errors import AuraError
from aura_es.projection.failures import is_transient, retry_delay, transient_types
from aura_es.projection.runner import BatchRunner, LostOwnership, Step
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
    split_to: int | None = None
    dead_lettered: int | None = None
    dead_lettered_type: str | None = None


class ResilientRunner:
    def __init__(self, runner: BatchRunner, spec: ProjectionSpec, log: Any = None) -> None:
        self.runner = runner
        self.spec = spec
        self.policy = spec.error_handling
        self.transient = transient_types(self.policy)
        self.log = log
        self.limit = spec.batch_size
        self.attempts = 0
        self.first_failed_at: datetime | None = None
        #: Told of every poison failure and what was done about it (the worker's hooks).
        self.on_poison: Callable[[Progress, BaseException], None] | None = None

    def advance(self) -> Progress:
        try:
            step = self.runner.step(limit=self.limit)
        except LostOwnership:
            raise
        except Exception as e:
            if is_transient(e, self.transient):
                raise
            progress = self._poison(e)
            if self.on_poison is not None:
                self.on_poison(progress, e)
            return progress
        # Grow back after an isolation, so one poison event costs O(log n) small batches.
        self.limit = min(self.spec.batch_size, self.limit * 2)
        self.attempts, self.first_failed_at = 0, None
        if step.dead_lettered_type is not None:
            self._log("error", "undecodable event dead-lettered; later events of its"
                      " aggregate are parked", event_position=step.position,
                      event_type=step.dead_lettered_type)
        return Progress(step=step, dead_lettered_type=step.dead_lettered_type)

    def _poison(self, error: BaseException) -> Progress:
        if self.limit > 1:
            self.limit = max(1, self.limit // 2)
            self._log("warning", "batch failed; splitting it to isolate the event",
                      error=_describe(error), limit=self.limit)
            return Progress(split_to=self.limit)
        self.attempts += 1
        self.first_failed_at = self.first_failed_at or datetime.now(UTC)
        if self.attempts <= self.policy.max_retries:
            wait = retry_delay(self.policy, self.attempts)
            self._log("warning", "event failed; retrying", error=_describe(error),
                      attempt=self.attempts, max_retries=self.policy.max_retries,
                      retry_in_seconds=round(wait, 3))
            return Progress(wait=wait)
        if not self.policy.dead_letter_queue:
            raise Paused(self.runner.position + 1, error)
        event = self.runner.peek()
        position = self.runner.dead_letter_next(error, self.attempts, self.first_failed_at)
        self._log("error", "event dead-lettered; later events of its aggregate are parked",
                  error=_describe(error), attempts=self.attempts, event=event)
        self.attempts, self.first_failed_at = 0, None
        return Progress(dead_lettered=position,
                        dead_lettered_type=event.topic if event else None)

    def _log(
        self, level: str, message: str, event: EventEnvelope | None = None, **fields: Any
    ) -> None:
        if self.log is None:
            return
        if self.limit == 1 and event is None:
            # The failing event is isolated: say which one, so its lines can be found.
            event = self.runner.peek()
        if event is not None:
            fields.update(event_position=event.position, event_id=event.event_id,
                          correlation_id=event.correlation_id, event_type=event.topic,
                          aggregate_id=str(event.aggregate_id))
        getattr(self.log, level)(message, position=self.runner.position, **fields)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
