"""Metrics: Prometheus counters of events processed, parked and dead-lettered, batch
durations and errors (only when the supervisor serves `/metrics`)."""

from __future__ import annotations

from aura_es.observability import metrics
from aura_es.projection.engine.engine import Engine, Progress
from aura_es.projection.engine.middleware import Middleware
from aura_es.projection.engine.runner import Step


class Metrics(Middleware):
    def __init__(self, projection: str) -> None:
        self.projection = projection

    def after_step(self, engine: Engine, step: Step) -> None:
        name = self.projection
        metrics.record_batch(name, step.by_type, step.seconds)
        metrics.record_batch(name, step.parked_by_type, 0.0, metrics.PARKED)
        if step.dead_lettered_type:  # an event whose bytes do not decode
            metrics.EVENTS_PROCESSED.labels(
                name, step.dead_lettered_type, metrics.DEAD_LETTERED).inc()

    def after_poison(self, engine: Engine, progress: Progress, error: BaseException) -> None:
        metrics.PROJECTION_ERRORS.labels(self.projection, type(error).__name__).inc()
        if progress.dead_lettered_type:
            metrics.EVENTS_PROCESSED.labels(
                self.projection, progress.dead_lettered_type, metrics.DEAD_LETTERED).inc()

    def after_transient_failure(self, error: BaseException, retry_in: float) -> None:
        metrics.PROJECTION_ERRORS.labels(self.projection, type(error).__name__).inc()
