"""Which failures are transient, how long to wait before a retry, and the circuit breaker.

Transient: the database or a dependency is unwell (connection lost, serialization
failure, deadlock, lock or statement timeout, or an exception class the catalog lists).
Those are retried and counted by the breaker; they never dead-letter an event (G6).
Anything else the handler raises may be a poison event: the batch is split to find it.
"""

from __future__ import annotations

import enum
import importlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from aura_es.catalog.model import ErrorHandling
from aura_es.errors import ConfigurationError

MAX_DELAY_SECONDS = 30.0


def transient_types(policy: ErrorHandling) -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [psycopg.OperationalError, ConnectionError, TimeoutError]
    for path in policy.transient_exceptions:
        module_name, _, name = path.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as e:
            raise ConfigurationError(f"transient_exceptions: cannot import {path!r}: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ConfigurationError(f"transient_exceptions: {path!r} is not an exception class")
        types.append(cls)
    return tuple(types)


# SQLSTATE classes that fail every event alike: a missing table or column, a permission,
# resources, an administrator, the server itself. Dead-lettering events one by one for
# them would flood the DLQ, so they count as systemic: retried behind the breaker.
SYSTEMIC_SQLSTATE_CLASSES = frozenset({"42", "53", "57", "58", "XX"})


def is_transient(error: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    """Transient or systemic (retry behind the breaker), as opposed to a poison event."""
    seen: BaseException | None = error
    while seen is not None:  # a handler may wrap the database error in its own
        if isinstance(seen, types):
            return True
        sqlstate = getattr(seen, "sqlstate", None) if isinstance(seen, psycopg.Error) else None
        if sqlstate and sqlstate[:2] in SYSTEMIC_SQLSTATE_CLASSES:
            return True
        seen = seen.__cause__
    return False


def retry_delay(policy: ErrorHandling, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    if policy.retry_policy == "none":
        return 0.0
    if policy.retry_policy == "fixed":
        return 1.0
    ceiling = min(MAX_DELAY_SECONDS, 0.2 * 2.0 ** (attempt - 1))
    # "Equal jitter": at least half the ceiling, so retries still back off.
    jitter: float = (rng or random.Random()).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive transient failures; after
    ``recovery_timeout`` seconds one probe runs (half-open); success closes it."""

    failure_threshold: int
    recovery_timeout: float
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    transitions: list[tuple[BreakerState, BreakerState]] = field(default_factory=list)

    def allow(self) -> bool:
        """May a batch run now? Moves an open breaker to half-open when its time is up."""
        if self.state is BreakerState.OPEN and self.seconds_until_probe() <= 0:
            self._move(BreakerState.HALF_OPEN)
        return self.state is not BreakerState.OPEN

    def seconds_until_probe(self) -> float:
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.recovery_timeout - self.clock())

    def success(self) -> None:
        self.failures = 0
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    def failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.failures >= self.failure_threshold
        ):
            self.opened_at = self.clock()
            self._move(BreakerState.OPEN)

    def _move(self, to: BreakerState) -> None:
        self.transitions.append((self.state, to))
        self.state = to
