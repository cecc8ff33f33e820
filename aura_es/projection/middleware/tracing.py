"""Tracing: one OpenTelemetry span per step, ended with its outcome (a no-op unless
`opentelemetry-api` is installed and an SDK is configured). Workers name their spans
``aura.projection.batch``, rebuilds ``aura.replay.batch``."""

from __future__ import annotations

from aura_es.observability import tracing
from aura_es.projection.engine.engine import Engine, Progress
from aura_es.projection.engine.middleware import Middleware
from aura_es.projection.engine.runner import Step


class Tracing(Middleware):
    def __init__(self, name: str = "aura.projection.batch", **attributes: object) -> None:
        self.name = name
        self.attributes = attributes
        self._span: tracing.OpenSpan | None = None

    def before_step(self, engine: Engine) -> None:
        self._span = tracing.start(self.name, projection=engine.spec.name, **self.attributes)

    def after_step(self, engine: Engine, step: Step) -> None:
        self._end(None, applied=step.applied, position=step.position)

    def after_poison(self, engine: Engine, progress: Progress, error: BaseException) -> None:
        self._end(error)

    def after_transient_failure(self, error: BaseException, retry_in: float) -> None:
        self._end(error)

    def _end(self, error: BaseException | None, **attributes: object) -> None:
        if self._span is not None:
            self._span.end(error, **attributes)
            self._span = None
