"""Runs the side effects batches recorded (``tx.side_effect``), after their commit.

One dispatcher per projection: the worker that holds the projection's lock runs it after
every batch that recorded some, and while idle. An action that fails is retried with the
projection's retry policy; after its last retry the side effect is dead (shown and
retried with `aura-es dlq`). A crash between an action and its "done" runs the action
again: at least once, never lost; the idempotency key lets the receiver drop the repeat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from aura_es.catalog.model import ErrorHandling
from aura_es.db import first_line
from aura_es.projection.engine.failures import backoff
from aura_es.projection.handlers import actions
from aura_es.projection.state import outbox
from aura_es.retry import Backoff

DONE, RETRY, DEAD = "done", "retry", "dead"
#: Called once per attempt: (action, outcome, error or None).
Outcome = Callable[[str, str, BaseException | None], None]


@dataclass(frozen=True)
class Dispatched:
    done: int = 0
    retried: int = 0
    dead: int = 0


class Dispatcher:
    def __init__(
        self, projection: str, policy: ErrorHandling, *, on_outcome: Outcome | None = None,
        batch: int = 100,
    ) -> None:
        self.projection = projection
        self.max_retries = policy.max_retries
        self.backoff: Backoff = backoff(policy)
        self.on_outcome = on_outcome
        self.batch = batch

    def run_due(self, conn: psycopg.Connection[Any]) -> Dispatched:
        """Runs every side effect whose time has come; each outcome is stored at once."""
        done = retried = dead = 0
        for effect in outbox.due(conn, self.projection, self.batch):
            try:
                actions.get(effect.action)(effect.payload, effect.idempotency_key)
            except Exception as e:
                attempt = effect.attempts + 1
                retry_in = (self.backoff.delay(attempt)
                            if attempt <= self.max_retries else None)
                outbox.failed(conn, effect.id, f"{type(e).__name__}: {first_line(e)}",
                              retry_in)
                retried, dead = retried + (retry_in is not None), dead + (retry_in is None)
                self._tell(effect.action, RETRY if retry_in is not None else DEAD, e)
                continue
            outbox.done(conn, effect.id)
            done += 1
            self._tell(effect.action, DONE, None)
        return Dispatched(done, retried, dead)

    def _tell(self, action: str, outcome: str, error: BaseException | None) -> None:
        if self.on_outcome is not None:
            self.on_outcome(action, outcome, error)
