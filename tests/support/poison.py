"""A DebateStateProjection with a bug: it raises on arguments whose text says POISON.

``fixed_up_to`` stands for deploying a fix: events at or below it no longer fail. In
worker processes the fix is the file named by AURA_TEST_POISON_FIXED existing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar

import psycopg

from aura_es.projection import EventEnvelope, Tx
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
