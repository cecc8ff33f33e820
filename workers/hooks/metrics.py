"""The metrics hook: Prometheus counters of events processed, parked and dead-lettered,
batch durations and errors (only when the supervisor serves `/metrics`)."""

from __future__ import annotations

from aura_es.observability import metrics
from aura_es.projection.resilience import Progress
from aura_es.projection.runner import Step
from workers.hooks import Hook, WorkerView


class Metrics(Hook):
    def on_batch_committed(self, worker: WorkerView, step: Step) -> None:
        name = worker.spec.name
        metrics.record_batch(name, step.by_type, step.seconds)
        metrics.record_batch(name, step.parked_by_type, 0.0, metrics.PARKED)
        if step.dead_lettered_type:  # an event whose bytes do not decode
            metrics.EVENTS_PROCESSED.labels(
                name, step.dead_lettered_type, metrics.DEAD_LETTERED).inc()

    def on_poison(self, worker: WorkerView, progress: Progress, error: BaseException) -> None:
        metrics.PROJECTION_ERRORS.labels(worker.spec.name, type(error).__name__).inc()
        if progress.dead_lettered_type:
            metrics.EVENTS_PROCESSED.labels(
                worker.spec.name, progress.dead_lettered_type, metrics.DEAD_LETTERED).inc()

    def on_transient_failure(
        self, worker: WorkerView, error: BaseException, retry_in: float,
    ) -> None:
        metrics.PROJECTION_ERRORS.labels(worker.spec.name, type(error).__name__).inc()
