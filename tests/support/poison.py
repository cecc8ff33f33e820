"""A DebateStateProjection with a bug: it raises on arguments whose text says POISON.

``fixed_up_to`` stands for deploying a fix: events at or below it no longer fail. In
worker processes the fix is the file named by AURA_TEST_POISON_FIXED existing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import ClassVar

import psycopg

from aura_es.catalog.model import ErrorHandling, ProjectionSpec
from aura_es.projection import EventEnvelope, Tx, side_effect_action
from projections.debate_state import ARGUED, DebateStateProjection


class PoisonError(ValueError):
    pass


class PoisonedDebates(DebateStateProjection):
    fixed_up_to: ClassVar[int] = 0
    fail_next_transiently: ClassVar[int] = 0

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        if PoisonedDebates.fail_next_transiently:
            PoisonedDebates.fail_next_transiently -= 1
            raise psycopg.OperationalError("injected: the database went away")
        marker = os.environ.get("AURA_TEST_POISON_FIXED")
        fixed = marker is not None and os.path.exists(marker)
        for event in batch:
            if (event.topic == ARGUED and "POISON" in event.payload["text"]
                    and event.position > self.fixed_up_to and not fixed):
                raise PoisonError(f"cannot project argument at position {event.position}")
        super().handle(batch, tx)


class CannotStart(DebateStateProjection):
    """A projection whose worker dies while setting up, every time."""

    def create(self, tx: Tx) -> None:
        raise RuntimeError("this read model cannot be created")


class DependencyDown(DebateStateProjection):
    """A projection whose dependency never answers: every batch is a transient failure."""

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        raise ConnectionError("the search index does not answer")


#: A projection of the poison-raising handler: small batches, one retry, then the DLQ.
POISONED_SPEC = ProjectionSpec(
    name="Poisoned", source_events=[
        "aura.debate.started.v1", "aura.debate.argument_added.v1",
        "aura.debate.consensus_reached.v1", "aura.debate.failed.v1",
    ],
    output_model="DebateState", storage="poisoned", batch_size=8,
    handler="tests.support.poison:PoisonedDebates",
    error_handling=ErrorHandling(retry_policy="none", max_retries=1),
)


#: Side effects the test action received, in this process: (idempotency key, payload).
RECEIVED: list[tuple[str, dict[str, object]]] = []
#: How many of the next calls of the test action fail (a flaky receiver).
FAIL_NEXT: list[int] = [0]


@side_effect_action("test.argument-webhook")
def argument_webhook(payload: dict[str, object], idempotency_key: str) -> None:
    if FAIL_NEXT[0]:
        FAIL_NEXT[0] -= 1
        raise ConnectionError("the receiver does not answer")
    log = os.environ.get("AURA_TEST_SIDE_EFFECT_LOG")
    gate = os.environ.get("AURA_TEST_SIDE_EFFECT_GATE")
    if log and gate:  # a slow receiver: held until the test opens the gate (a file)
        with open(log, "a") as f:
            f.write(f"started {idempotency_key}\n")
        while not os.path.exists(gate):
            time.sleep(0.05)
    if log:  # in a worker process: the test reads what was received from a file
        with open(log, "a") as f:
            f.write(idempotency_key + "\n")
    RECEIVED.append((idempotency_key, payload))


class NotifyingPoisonedDebates(PoisonedDebates):
    """The poisoned handler that also asks for a webhook per argument it projects."""

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        super().handle(batch, tx)
        for event in batch:
            if event.topic == ARGUED:
                tx.side_effect("test.argument-webhook", {"text": event.payload["text"]},
                               event=event)
