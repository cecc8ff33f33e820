"""Which failures are transient, how long to wait before a retry, and the circuit breaker.

Transient: the database or a dependency is unwell (connection lost, serialization
failure, deadlock, lock or statement timeout, a configuration that cannot work, or an
exception class the catalog lists). Those are retried and counted by the breaker; they
never dead-letter an event (G6). Anything else the handler raises may be a poison event:
the batch is split to find it.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from aura_es.catalog.model import ErrorHandling
from aura_es.errors import ConfigurationError, EventVersionUnknown, ServiceUnavailable
from aura_es.imports import import_named, shown
from aura_es.retry import FIXED, IMMEDIATE, Backoff

MAX_DELAY_SECONDS = 30.0
#: ``retry_policy: exponential_backoff``: 0.2 s, 0.4 s, … up to 30 s, with equal jitter.
EXPONENTIAL = Backoff(base=0.2, cap=MAX_DELAY_SECONDS)
_ALWAYS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError, ConnectionError, TimeoutError, ServiceUnavailable,
    # Every event fails alike on a configuration that cannot work (an unregistered
    # side-effect action): dead-lettering them one by one would flood the queue.
    ConfigurationError,
    # An event written by a newer version of its class: every one fails alike until the
    # newer code is deployed.
    EventVersionUnknown,
)


def transient_types(policy: ErrorHandling) -> tuple[type[BaseException], ...]:
    return _transient_types(tuple(policy.transient_exceptions))


@functools.cache
def _transient_types(paths: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    types = list(_ALWAYS)
    for path in paths:
        module_name, _, name = path.partition(":")
        module = import_named(module_name, f"transient_exceptions: {shown(path)!r}")
        cls = getattr(module, name, None)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ConfigurationError(
                f"transient_exceptions: {shown(path)!r} is not an exception class")
        types.append(cls)
    return tuple(types)


# SQLSTATE classes that fail every event alike: a missing table or column, a permission,
# resources, an administrator, the server itself. Dead-lettering events one by one for
# them would flood the DLQ, so they count as systemic: retried behind the breaker.
SYSTEMIC_SQLSTATE_CLASSES = frozenset({"42", "53", "57", "58", "XX"})
#: A read-only transaction (a standby, a server in recovery): every write fails alike.
SYSTEMIC_SQLSTATES = frozenset({"25006"})


def is_transient(error: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    """Transient or systemic (retry behind the breaker), as opposed to a poison event."""
    seen: BaseException | None = error
    while seen is not None:  # a handler may wrap the database error in its own
        if isinstance(seen, types):
            return True
        sqlstate = getattr(seen, "sqlstate", None) if isinstance(seen, psycopg.Error) else None
        if sqlstate and (sqlstate[:2] in SYSTEMIC_SQLSTATE_CLASSES
                         or sqlstate in SYSTEMIC_SQLSTATES):
            return True
        seen = seen.__cause__
    return False


def backoff(policy: ErrorHandling) -> Backoff:
    """The catalog's ``retry_policy`` as a backoff rule."""
    if policy.retry_policy == "none":
        return IMMEDIATE
    if policy.retry_policy == "fixed":
        return FIXED
    return EXPONENTIAL


def retry_delay(policy: ErrorHandling, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    return backoff(policy).delay(attempt)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


Listener = Callable[[BreakerState, BreakerState], None]


@dataclass
class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive transient failures; after
    ``recovery_timeout`` seconds one probe runs (half-open); success closes it.

    Keeps no history: each change is told to ``on_change`` (its owner passes it on to
    the middleware as ``after_breaker_change``), so a breaker that flaps for months holds
    constant state."""

    failure_threshold: int
    recovery_timeout: float
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    on_change: Listener | None = field(default=None, repr=False)

    @classmethod
    def of(cls, policy: ErrorHandling) -> CircuitBreaker:
        limits = policy.circuit_breaker
        return cls(limits.failure_threshold, limits.recovery_timeout)

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
        before, self.state = self.state, to
        if self.on_change is not None:
            self.on_change(before, to)


class FailurePolicy:
    """A projection's ``error_handling`` made executable, once: which failures are
    transient, how long to wait before each retry, and the breaker that counts them."""

    def __init__(self, policy: ErrorHandling, breaker: CircuitBreaker | None = None) -> None:
        self.policy = policy
        self.transient = transient_types(policy)
        self.backoff = backoff(policy)
        self.breaker = breaker or CircuitBreaker.of(policy)

    @property
    def max_retries(self) -> int:
        return self.policy.max_retries

    @property
    def dead_letter_queue(self) -> bool:
        return self.policy.dead_letter_queue

    def is_transient(self, error: BaseException) -> bool:
        return is_transient(error, self.transient)

    def transient_failure(self) -> float:
        """Counts one transient failure; the seconds to wait before trying again."""
        self.breaker.failure()
        return self.backoff.delay(self.breaker.failures)

    def retry_delay(self, attempt: int) -> float:
        """Before retry number ``attempt`` (1-based) of one failing event."""
        return self.backoff.delay(attempt)

    def probe_wait(self) -> float | None:
        """None when a step may run now; else how long until the breaker's probe."""
        if self.breaker.allow():
            return None
        return self.breaker.seconds_until_probe()
