"""How long to wait before trying again: one backoff rule for every retry in aura-es
(projection batches, rebuilds, the mirror relay, worker restarts, racing commands,
side effects), and a small tracker of consecutive failures."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class Backoff:
    """``base * 2**(attempt-1)`` seconds, at most ``cap``.

    ``jitter``: "equal" waits between half and all of it (retries still back off, and
    racers spread out), "full" anywhere from 0 to all of it, "none" exactly it.
    """

    base: float
    cap: float
    jitter: str = "equal"
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(max(attempt, 1) - 1, 62))
        if self.jitter == "none":
            return ceiling
        if self.jitter == "full":
            return self.rng.uniform(0, ceiling)
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)


#: A fixed pause (the catalog's ``retry_policy: fixed``).
FIXED = Backoff(base=1.0, cap=1.0, jitter="none")
#: No pause at all (``retry_policy: none``).
IMMEDIATE = Backoff(base=0.0, cap=0.0, jitter="none")


class Retrier:
    """Counts consecutive failures of one operation and says how long to wait, or
    re-raises: when the error is not retryable, or after ``max_attempts`` retries."""

    def __init__(
        self, backoff: Backoff, retryable: Callable[[BaseException], bool],
        max_attempts: int | None = None,
    ) -> None:
        self.backoff = backoff
        self.retryable = retryable
        self.max_attempts = max_attempts
        self.failures = 0

    def failed(self, error: BaseException) -> float:
        """The wait before the next try; raises ``error`` when there is none."""
        self.failures += 1
        if not self.retryable(error) or (
            self.max_attempts is not None and self.failures > self.max_attempts
        ):
            raise error
        return self.backoff.delay(self.failures)

    def succeeded(self) -> None:
        self.failures = 0


def until_deadline(seconds: float, attempt: Callable[[], R],
                   retryable: Callable[[BaseException], bool], backoff: Backoff,
                   on_retry: Callable[[BaseException], None] | None = None) -> R:
    """``attempt`` again after each retryable failure, for up to ``seconds``; the last
    failure is raised when the time is up (``seconds`` 0: one attempt)."""
    deadline = time.monotonic() + seconds
    failures = 0
    while True:
        try:
            return attempt()
        except Exception as e:
            if not retryable(e) or time.monotonic() >= deadline:
                raise
            failures += 1
            if on_retry is not None:
                on_retry(e)
            time.sleep(min(backoff.delay(failures), max(0.0, deadline - time.monotonic())))
