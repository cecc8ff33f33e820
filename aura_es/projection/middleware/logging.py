"""Log lines: a worker's role and failures, its breaker, and every step of poison
isolation with the failing event's identity (the one place these lines come from)."""

from __future__ import annotations

from typing import Any

from aura_es.db import first_line
from aura_es.projection.engine.engine import Engine, Progress
from aura_es.projection.engine.failures import BreakerState, CircuitBreaker
from aura_es.projection.engine.middleware import Middleware
from aura_es.projection.engine.runner import Step
from aura_es.store.envelope import EventEnvelope


class LogLines(Middleware):
    def __init__(self, log: Any, breaker: CircuitBreaker | None = None) -> None:
        self.log = log
        self.breaker = breaker

    def after_role(self, role: str) -> None:
        if role == "standby":
            self.log.info("standing by for the projection lock")

    def after_attach(self, engine: Engine) -> None:
        runner = engine.runner
        self.log.info("active", position=runner.position, generation=runner.generation,
                      storage=runner.projection.storage)

    def after_step(self, engine: Engine, step: Step) -> None:
        if step.dead_lettered_type is not None:
            self.log.error("undecodable event dead-lettered; later events of its aggregate"
                           " are parked", position=step.position, event_position=step.position,
                           event_type=step.dead_lettered_type)

    def after_poison(self, engine: Engine, progress: Progress, error: BaseException) -> None:
        described = f"{type(error).__name__}: {error}"
        position = engine.runner.position
        if progress.split_to is not None:
            self.log.warning("batch failed; splitting it to isolate the event",
                             error=described, limit=progress.split_to, position=position)
        elif progress.dead_lettered is not None:
            self.log.error("event dead-lettered; later events of its aggregate are parked",
                           error=described, attempts=engine.failures.max_retries + 1,
                           position=position, **_identity(progress.event))
        elif progress.retry is not None:
            self.log.warning("event failed; retrying", error=described, attempt=progress.retry,
                             max_retries=engine.failures.max_retries,
                             retry_in_seconds=round(progress.wait, 3), position=position,
                             **_identity(progress.event))

    def after_transient_failure(self, error: BaseException, retry_in: float) -> None:
        breaker = self.breaker
        self.log.warning(
            "transient failure", error=f"{type(error).__name__}: {first_line(error)}",
            breaker=str(breaker.state) if breaker else None,
            consecutive=breaker.failures if breaker else None,
            retry_in_seconds=round(retry_in, 3),
        )

    def after_breaker_change(self, before: BreakerState, after: BreakerState) -> None:
        level = "error" if after == BreakerState.OPEN else "info"
        getattr(self.log, level)("circuit breaker", before=str(before), after=str(after),
                                 recovery_timeout=self.breaker.recovery_timeout
                                 if self.breaker else None)


def _identity(event: EventEnvelope | None) -> dict[str, Any]:
    if event is None:
        return {}
    return {"event_position": event.position, "event_id": event.event_id,
            "correlation_id": event.correlation_id, "event_type": event.topic,
            "aggregate_id": str(event.aggregate_id)}
