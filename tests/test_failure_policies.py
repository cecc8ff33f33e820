"""Pure logic: the circuit breaker's transitions, retry delays, transient classification."""

from __future__ import annotations

import random

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aura_es.catalog.model import ErrorHandling
from aura_es.errors import ConfigurationError
from aura_es.projection.engine.failures import (
    BreakerState,
    CircuitBreaker,
    is_transient,
    retry_delay,
    transient_types,
)
from aura_es.retry import Backoff, Retrier


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read fresh (not narrowed by an earlier check)."""
    return breaker.state


def test_breaker_opens_at_the_threshold_probes_after_the_timeout_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=10, clock=clock)
    transitions: list[tuple[str, str]] = []
    breaker.on_change = lambda before, after: transitions.append((before, after))
    for _ in range(2):
        breaker.failure()
        assert breaker.allow()
    breaker.failure()
    assert state(breaker) is BreakerState.OPEN and not breaker.allow()
    clock.now = 9.9
    assert not breaker.allow() and breaker.seconds_until_probe() == pytest.approx(0.1)
    clock.now = 10
    assert breaker.allow() and state(breaker) is BreakerState.HALF_OPEN
    breaker.failure()  # the probe failed: open again for a full timeout
    assert state(breaker) is BreakerState.OPEN and breaker.seconds_until_probe() == 10
    clock.now = 20
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.failures == 0
    assert transitions == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "open"),
        ("open", "half_open"), ("half_open", "closed"),
    ]


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 6))
def test_breaker_is_open_exactly_after_threshold_consecutive_failures(
    outcomes: list[bool], threshold: int
) -> None:
    breaker = CircuitBreaker(failure_threshold=threshold, recovery_timeout=1e9, clock=Clock())
    run = 0
    for ok in outcomes:
        if breaker.state is BreakerState.OPEN:
            break
        if ok:
            breaker.success()
            run = 0
        else:
            breaker.failure()
            run += 1
        assert (state(breaker) is BreakerState.OPEN) == (run >= threshold)


@given(st.integers(1, 40), st.integers(0, 2**32))
def test_exponential_backoff_grows_with_jitter_and_is_capped(attempt: int, seed: int) -> None:
    delay = Backoff(base=0.2, cap=30.0, rng=random.Random(seed)).delay(attempt)
    ceiling = min(30.0, 0.2 * 2.0 ** (attempt - 1))
    assert ceiling / 2 <= delay <= ceiling
    assert retry_delay(ErrorHandling(retry_policy="fixed"), attempt) == 1.0
    assert retry_delay(ErrorHandling(retry_policy="none"), attempt) == 0.0


class Flaky(Exception):
    pass


def test_transient_classification_follows_causes_and_the_catalog() -> None:
    policy = ErrorHandling(transient_exceptions=["tests.test_failure_policies:Flaky"])
    types = transient_types(policy)
    assert is_transient(psycopg.errors.SerializationFailure("x"), types)
    assert is_transient(psycopg.OperationalError("connection lost"), types)
    assert is_transient(Flaky(), types)
    wrapped = RuntimeError("handler")
    wrapped.__cause__ = psycopg.errors.LockNotAvailable("x")
    assert is_transient(wrapped, types)
    assert not is_transient(ValueError("bad payload"), types)
    assert not is_transient(psycopg.errors.UniqueViolation("x"), types)


@pytest.mark.parametrize("path", ["nowhere:Thing", "", ":Thing", ".relative:Thing",
                                  "os:", "os:path", "m" * 500])
def test_an_unknown_transient_exception_is_a_configuration_error(path: str) -> None:
    """Any name that is not an importable exception class is one line naming it (the
    catalog fuzzer found an empty name raising Python's own ValueError)."""
    with pytest.raises(ConfigurationError, match="transient_exceptions") as refused:
        transient_types(ErrorHandling(transient_exceptions=[path]))
    # The entry and the module each shown to 100 characters, the reason to 200.
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 600


def test_schema_and_server_errors_are_systemic_not_poison() -> None:
    """A missing column fails every event alike: behind the breaker, never a DLQ flood."""
    types = transient_types(ErrorHandling())
    assert is_transient(psycopg.errors.UndefinedColumn("column x does not exist"), types)
    assert is_transient(psycopg.errors.InsufficientPrivilege("denied"), types)
    assert is_transient(psycopg.errors.InternalError_("oops"), types)
    assert not is_transient(psycopg.errors.InvalidTextRepresentation("bad input"), types)
    assert not is_transient(psycopg.errors.CheckViolation("check"), types)


def test_a_retrier_waits_longer_each_time_and_gives_up_on_what_it_cannot_retry() -> None:
    retrier = Retrier(Backoff(base=1.0, cap=8.0, jitter="none"),
                      lambda e: isinstance(e, TimeoutError), max_attempts=4)
    assert [retrier.failed(TimeoutError()) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    with pytest.raises(TimeoutError):
        retrier.failed(TimeoutError())  # the fifth: no more
    retrier.succeeded()
    assert retrier.failed(TimeoutError()) == 1.0
    with pytest.raises(ValueError):
        retrier.failed(ValueError("not retryable"))


@given(st.integers(1, 10_000), st.floats(0.001, 10), st.floats(0.001, 100))
def test_backoff_never_exceeds_its_cap_even_for_huge_attempt_numbers(
    attempt: int, base: float, cap: float,
) -> None:
    for jitter in ("equal", "full", "none"):
        assert 0 <= Backoff(base=base, cap=cap, jitter=jitter).delay(attempt) <= cap
