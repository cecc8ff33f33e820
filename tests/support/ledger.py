"""A ledger: an aggregate whose one command records as many events as it is given (the
long appends' tests, and any test that wants a command of many events)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aura_es import AuraAggregate, AuraCreated, AuraEvent, Create


class Opened(AuraCreated):
    TOPIC = "test.ledger.opened.v1"
    name: str

    def apply(self, ledger: Any) -> None:
        ledger.name = self.name


class Booked(AuraEvent):
    TOPIC = "test.ledger.booked.v1"
    amount: float

    def apply(self, ledger: Any) -> None:
        ledger.total += self.amount


class Ledger(AuraAggregate):
    TYPE = "test.ledger"

    def __init__(self) -> None:
        self.name = ""
        self.total = 0.0

    @classmethod
    def opened(cls, ledger_id: UUID, amounts: list[float]) -> Ledger:
        ledger = cls._create(Opened, id=ledger_id, name="books")
        for amount in amounts:
            ledger.trigger_event(Booked, amount=amount)
        return ledger


def open_ledger(key: str, amounts: list[float]) -> Create[Ledger]:
    # The amounts as text in the request: a NaN reaches the events' mapping (a request
    # holding one is refused before anything is sent).
    return Create("open_ledger", key, {"amounts": repr(amounts)},
                  lambda id_: Ledger.opened(id_, amounts))
