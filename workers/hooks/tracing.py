"""The tracing hook: one OpenTelemetry span per batch, ended with its outcome (a no-op
unless `opentelemetry-api` is installed and an SDK is configured)."""

from __future__ import annotations

from aura_es.observability import tracing
from aura_es.projection.resilience import Progress
from aura_es.projection.runner import Step
from workers.hooks import Hook, WorkerView


class Tracing(Hook):
    def __init__(self) -> None:
        self._span: tracing.OpenSpan | None = None

    def on_batch_start(self, worker: WorkerView) -> None:
        self._span = tracing.start("aura.projection.batch", projection=worker.spec.name)

    def on_batch_committed(self, worker: WorkerView, step: Step) -> None:
        self._end(None, applied=step.applied, position=step.position)

    def on_poison(self, worker: WorkerView, progress: Progress, error: BaseException) -> None:
        self._end(error)

    def on_transient_failure(
        self, worker: WorkerView, error: BaseException, retry_in: float,
    ) -> None:
        self._end(error)

    def _end(self, error: BaseException | None, **attributes: object) -> None:
        if self._span is not None:
            self._span.end(error, **attributes)
            self._span = None
