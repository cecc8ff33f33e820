"""The middleware a worker runs its engine with: the presence row (heartbeat), log lines,
Prometheus metrics, tracing spans, drift warnings and running side effects, one module
each (``aura_es.projection.engine.middleware`` says how signals work)."""

from __future__ import annotations

from typing import Any, Protocol

import psycopg

from aura_es.catalog.model import ProjectionSpec
from aura_es.projection.engine.failures import CircuitBreaker


class WorkerView(Protocol):
    """What a worker's middleware may read of the worker they watch."""

    spec: ProjectionSpec
    worker_id: str
    role: str
    log: Any

    @property
    def breaker(self) -> CircuitBreaker: ...

    @property
    def connection(self) -> psycopg.Connection[Any] | None: ...

    @property
    def dispatches_side_effects(self) -> bool: ...
