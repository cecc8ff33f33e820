"""What a worker tells the world, as hooks around its loop (like dramatiq's middleware).

The loop (``workers.worker``) only reads batches and handles failures; each concern
that watches it is one ``Hook`` in its own module: the presence row (heartbeat), the
log lines, Prometheus metrics, tracing spans, drift warnings, and running side effects.
A hook overrides the moments it cares about; the others do nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import psycopg

from aura_es.catalog.model import ProjectionSpec
from aura_es.projection.failures import BreakerState, CircuitBreaker
from aura_es.projection.resilience import Progress
from aura_es.projection.runner import BatchRunner, Step


class WorkerView(Protocol):
    """What hooks may read of the worker."""

    spec: ProjectionSpec
    worker_id: str
    role: str
    breaker: CircuitBreaker
    log: Any

    @property
    def connection(self) -> psycopg.Connection[Any] | None: ...


class Hook:
    """Every moment of a worker's loop, as a method that does nothing by default."""

    def on_role(self, worker: WorkerView) -> None:
        """The worker became standby, active, paused or waiting (``worker.role``)."""

    def on_attached(self, worker: WorkerView, runner: BatchRunner) -> None:
        """It holds the projection's lock and writes ``runner``'s read model."""

    def on_batch_start(self, worker: WorkerView) -> None:
        """A batch is about to be read."""

    def on_batch_committed(self, worker: WorkerView, step: Step) -> None:
        """A batch (read-model writes and checkpoint) committed."""

    def on_poison(self, worker: WorkerView, progress: Progress, error: BaseException) -> None:
        """A batch failed on an event: split, retried, or dead-lettered (``progress``)."""

    def on_transient_failure(
        self, worker: WorkerView, error: BaseException, retry_in: float,
    ) -> None:
        """A transient failure (the breaker counted it); retried in ``retry_in`` s."""

    def on_breaker_change(
        self, worker: WorkerView, before: BreakerState, after: BreakerState,
    ) -> None:
        """The circuit breaker moved."""

    def on_idle(self, worker: WorkerView) -> None:
        """Called about every quarter second while the worker waits (for events, for its
        lock, for the breaker's probe)."""

    def on_stop(self, worker: WorkerView) -> None:
        """The worker is leaving (a graceful stop, a takeover, a reload)."""


class Hooks(Hook):
    """Several hooks as one: each moment is told to each hook, in order."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = list(hooks)

    def on_role(self, worker: WorkerView) -> None:
        for hook in self.hooks:
            hook.on_role(worker)

    def on_attached(self, worker: WorkerView, runner: BatchRunner) -> None:
        for hook in self.hooks:
            hook.on_attached(worker, runner)

    def on_batch_start(self, worker: WorkerView) -> None:
        for hook in self.hooks:
            hook.on_batch_start(worker)

    def on_batch_committed(self, worker: WorkerView, step: Step) -> None:
        for hook in self.hooks:
            hook.on_batch_committed(worker, step)

    def on_poison(self, worker: WorkerView, progress: Progress, error: BaseException) -> None:
        for hook in self.hooks:
            hook.on_poison(worker, progress, error)

    def on_transient_failure(
        self, worker: WorkerView, error: BaseException, retry_in: float,
    ) -> None:
        for hook in self.hooks:
            hook.on_transient_failure(worker, error, retry_in)

    def on_breaker_change(
        self, worker: WorkerView, before: BreakerState, after: BreakerState,
    ) -> None:
        for hook in self.hooks:
            hook.on_breaker_change(worker, before, after)

    def on_idle(self, worker: WorkerView) -> None:
        for hook in self.hooks:
            hook.on_idle(worker)

    def on_stop(self, worker: WorkerView) -> None:
        for hook in self.hooks:
            hook.on_stop(worker)
