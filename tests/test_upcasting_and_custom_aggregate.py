"""Old stored events still load; a user's own aggregate gets the same idempotent appends."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson

from aura_es import AuraAggregate, AuraCreated, AuraEvent, Create, EventSourcedApp, Update
from aura_es.app import AuraApp


def test_v1_completed_event_loads_with_default_latency(app: AuraApp) -> None:
    call_id = app.request_llm_call("acme", "openai", "gpt-4o", 10, idempotency_key="r")
    requested = next(iter(app.events.get(call_id)))
    v1_state = {
        "timestamp": requested.timestamp.isoformat(),  # type: ignore[attr-defined]
        "meta": {"event_id": "00000000-0000-0000-0000-000000000001"},
        "completion_tokens": 7,
        "cost_usd": "0.5",
    }
    with app.connect() as conn:
        conn.execute(
            "INSERT INTO aura_events (originator_id, originator_version, topic, state)"
            " VALUES (%s, 2, 'aura.llm_call.completed.v1', %s)",
            (call_id, orjson.dumps(v1_state)),
        )
    call = app.get_llm_call(call_id)
    assert (call.status, call.completion_tokens, str(call.cost_usd), call.latency_ms) == (
        "completed", 7, "0.5", 0.0,
    )


def test_aggregate_defined_only_in_this_test(db_url: str) -> None:
    class Opened(AuraCreated):
        TOPIC = "test.account.opened.v1"
        owner: str

        def apply(self, account: Any) -> None:
            account.owner = self.owner

    class Deposited(AuraEvent):
        TOPIC = "test.account.deposited.v1"
        amount: int

        def apply(self, account: Any) -> None:
            account.balance += self.amount

    class Account(AuraAggregate):
        TYPE = "test.account"

        def __init__(self) -> None:
            self.owner = ""
            self.balance = 0

        @classmethod
        def open(cls, account_id: UUID, owner: str) -> Account:
            return cls._create(Opened, id=account_id, owner=owner)

        def deposit(self, amount: int) -> None:
            self.trigger_event(Deposited, amount=amount)

    app = EventSourcedApp(db_url)
    try:
        opened = [
            app.execute(
                Create("open", "acct-1", {"owner": "ann"}, lambda i: Account.open(i, "ann"))
            )
            for _ in range(3)
        ]
        account_id = opened[0].aggregate_id
        assert {r.aggregate_id for r in opened} == {account_id}
        for _ in range(3):
            app.execute(
                Update("deposit", "dep-1", account_id, {"amount": 5}, lambda a: a.deposit(5))
            )
        account = app.get(account_id, Account)
        assert (account.owner, account.balance, account.version) == ("ann", 5, 2)
        with app.connect() as conn:  # two events; a duplicate create may leave a gap
            assert conn.execute("SELECT count(*) FROM aura_events").fetchone() == (2,)
    finally:
        app.close()
