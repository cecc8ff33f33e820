"""Middleware: everything that watches a projection run, told before and after each step.

As in dramatiq, the engine's loop only runs steps and applies the failure policy; each
concern that watches it (log lines, metrics, tracing spans, the presence row, drift
warnings, running side effects) is one ``Middleware`` that overrides the signals it
cares about. A worker adds its own moments (its role, its idle waits, its stop) to the
same list. A middleware that fails is logged and skipped: watching never stops the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aura_es.db import first_line
from aura_es.projection.engine.failures import BreakerState

if TYPE_CHECKING:
    from aura_es.projection.engine.engine import Engine, Progress
    from aura_es.projection.engine.runner import Step


class Middleware:
    """Every signal, as a method that does nothing by default."""

    # -- the engine's ------------------------------------------------------------------

    def after_attach(self, engine: Engine) -> None:
        """The engine holds its read model and checkpoint (``engine.runner``)."""

    def before_step(self, engine: Engine) -> None:
        """A batch is about to be read."""

    def after_step(self, engine: Engine, step: Step) -> None:
        """A batch (read-model writes and checkpoint) committed."""

    def after_poison(self, engine: Engine, progress: Progress, error: BaseException) -> None:
        """A batch failed on an event: split, retried, or dead-lettered (``progress``)."""

    def after_transient_failure(self, error: BaseException, retry_in: float) -> None:
        """A transient failure (the breaker counted it); tried again in ``retry_in`` s."""

    def after_breaker_change(self, before: BreakerState, after: BreakerState) -> None:
        """The circuit breaker moved."""

    # -- a worker's ----------------------------------------------------------------------

    def after_role(self, role: str) -> None:
        """The worker became standby, active, paused or waiting."""

    def on_idle(self) -> None:
        """About every quarter second while the worker waits (for events, for its lock,
        for the breaker's probe)."""

    def before_stop(self) -> None:
        """The worker is leaving (a graceful stop, a takeover, a reload)."""


class Signals:
    """Tells each middleware of each signal, in order; a middleware's own failure is
    logged once per signal and never reaches the engine."""

    def __init__(self, middleware: Sequence[Middleware] = (), log: Any = None) -> None:
        self.middleware = list(middleware)
        self.log = log

    def emit(self, signal: str, *args: Any) -> None:
        for middleware in self.middleware:
            try:
                getattr(middleware, signal)(*args)
            except Exception as e:
                if self.log is not None:
                    self.log.warning("middleware failed", middleware=type(middleware).__name__,
                                     signal=signal,
                                     error=f"{type(e).__name__}: {first_line(e)}")
