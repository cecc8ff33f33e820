"""AuraApp: the AURA commands (debates, decisions, LLM calls) as idempotent methods.

Every command takes an ``idempotency_key``; retrying it returns the original result.
Creating commands return the new aggregate's id; the others return a CommandResult
(aggregate id, versions and global positions of the events stored, and whether this
call was a duplicate). Optional ``correlation_id`` / ``causation_id`` keywords go into
the metadata of every event the command stores.

Each command also has a ``*_command`` builder returning the unexecuted command, for
``execute_many`` (many commands, one transaction).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

from aura_es.aggregate import AuraAggregate
from aura_es.application import EventSourcedApp
from aura_es.commands import CommandResult, Create, Update
from aura_es.domain import Debate, Decision, LLMCall
from aura_es.errors import AggregateNotFound

A = TypeVar("A", bound=AuraAggregate)
Trace = str | None


def _update(
    command_type: str, key: str, aggregate_id: UUID, request: dict[str, Any],
    expected: type[A], change: Callable[[A], None], trace: dict[str, Trace],
    subject: str | None = None,
) -> Update[A]:
    def checked(aggregate: A) -> None:
        # An id of another aggregate type is "not found" for this command, not a crash.
        if not isinstance(aggregate, expected):
            raise AggregateNotFound(aggregate_id)
        change(aggregate)

    return Update(
        command_type, key, aggregate_id, request, checked,
        correlation_id=trace.get("correlation_id"), causation_id=trace.get("causation_id"),
        subject=subject,
    )


class AuraApp(EventSourcedApp):
    # -- debates --------------------------------------------------------------------------

    def start_debate(
        self, topic: str, participants: list[str], *, idempotency_key: str,
        tenant_id: str = "default", **trace: Trace,
    ) -> UUID:
        return self.execute(self.start_debate_command(
            topic, participants, idempotency_key=idempotency_key, tenant_id=tenant_id, **trace
        )).aggregate_id

    def start_debate_command(
        self, topic: str, participants: list[str], *, idempotency_key: str,
        tenant_id: str = "default", **trace: Trace,
    ) -> Create[Debate]:
        people = list(participants)
        return Create(
            "start_debate", idempotency_key,
            {"topic": topic, "participants": people, "tenant_id": tenant_id},
            lambda id_: Debate.start(id_, topic, people), tenant_id=tenant_id, **trace,
        )

    def add_argument(
        self, debate_id: UUID, agent_id: str, position: str, text: str, *,
        round: int, idempotency_key: str, subject: str | None = None, **trace: Trace,
    ) -> CommandResult:
        """``text`` is personal data: sealed with ``subject``'s key (the person it is
        about; the agent by default), and gone for good after `aura-es erase`."""
        return self.execute(self.add_argument_command(
            debate_id, agent_id, position, text, round=round,
            idempotency_key=idempotency_key, subject=subject, **trace,
        ))

    def add_argument_command(
        self, debate_id: UUID, agent_id: str, position: str, text: str, *,
        round: int, idempotency_key: str, subject: str | None = None, **trace: Trace,
    ) -> Update[Debate]:
        return _update(
            "add_argument", idempotency_key, debate_id,
            {"agent_id": agent_id, "position": position, "text": text, "round": round},
            Debate, lambda d: d.add_argument(agent_id, position, text, round), trace,
            subject=subject,
        )

    def reach_consensus(
        self, debate_id: UUID, decision: str, *, idempotency_key: str, **trace: Trace
    ) -> CommandResult:
        return self.execute(self.reach_consensus_command(
            debate_id, decision, idempotency_key=idempotency_key, **trace
        ))

    def reach_consensus_command(
        self, debate_id: UUID, decision: str, *, idempotency_key: str, **trace: Trace
    ) -> Update[Debate]:
        return _update(
            "reach_consensus", idempotency_key, debate_id, {"decision": decision},
            Debate, lambda d: d.reach_consensus(decision), trace,
        )

    def fail_debate(
        self, debate_id: UUID, reason: str, *, idempotency_key: str, **trace: Trace
    ) -> CommandResult:
        return self.execute(self.fail_debate_command(
            debate_id, reason, idempotency_key=idempotency_key, **trace
        ))

    def fail_debate_command(
        self, debate_id: UUID, reason: str, *, idempotency_key: str, **trace: Trace
    ) -> Update[Debate]:
        return _update(
            "fail_debate", idempotency_key, debate_id, {"reason": reason},
            Debate, lambda d: d.fail(reason), trace,
        )

    def get_debate(self, debate_id: UUID) -> Debate:
        return self.get(debate_id, Debate)

    # -- decisions ------------------------------------------------------------------------

    def propose_decision(
        self, agent_id: str, title: str, *, debate_id: UUID | None = None,
        idempotency_key: str, tenant_id: str = "default", **trace: Trace,
    ) -> UUID:
        return self.execute(self.propose_decision_command(
            agent_id, title, debate_id=debate_id, idempotency_key=idempotency_key,
            tenant_id=tenant_id, **trace,
        )).aggregate_id

    def propose_decision_command(
        self, agent_id: str, title: str, *, debate_id: UUID | None = None,
        idempotency_key: str, tenant_id: str = "default", **trace: Trace,
    ) -> Create[Decision]:
        return Create(
            "propose_decision", idempotency_key,
            {"agent_id": agent_id, "title": title, "debate_id": debate_id, "tenant_id": tenant_id},
            lambda id_: Decision.propose(id_, agent_id, title, debate_id),
            tenant_id=tenant_id, **trace,
        )

    def approve_decision(
        self, decision_id: UUID, approver: str, *, idempotency_key: str, **trace: Trace
    ) -> CommandResult:
        return self.execute(self.approve_decision_command(
            decision_id, approver, idempotency_key=idempotency_key, **trace
        ))

    def approve_decision_command(
        self, decision_id: UUID, approver: str, *, idempotency_key: str, **trace: Trace
    ) -> Update[Decision]:
        return _update(
            "approve_decision", idempotency_key, decision_id, {"approver": approver},
            Decision, lambda d: d.approve(approver), trace,
        )

    def reject_decision(
        self, decision_id: UUID, approver: str, reason: str, *,
        idempotency_key: str, **trace: Trace,
    ) -> CommandResult:
        return self.execute(self.reject_decision_command(
            decision_id, approver, reason, idempotency_key=idempotency_key, **trace
        ))

    def reject_decision_command(
        self, decision_id: UUID, approver: str, reason: str, *,
        idempotency_key: str, **trace: Trace,
    ) -> Update[Decision]:
        return _update(
            "reject_decision", idempotency_key, decision_id,
            {"approver": approver, "reason": reason},
            Decision, lambda d: d.reject(approver, reason), trace,
        )

    def get_decision(self, decision_id: UUID) -> Decision:
        return self.get(decision_id, Decision)

    # -- LLM calls ------------------------------------------------------------------------

    def request_llm_call(
        self, tenant_id: str, provider: str, model: str, prompt_tokens: int, *,
        idempotency_key: str, **trace: Trace,
    ) -> UUID:
        return self.execute(self.request_llm_call_command(
            tenant_id, provider, model, prompt_tokens, idempotency_key=idempotency_key, **trace
        )).aggregate_id

    def request_llm_call_command(
        self, tenant_id: str, provider: str, model: str, prompt_tokens: int, *,
        idempotency_key: str, **trace: Trace,
    ) -> Create[LLMCall]:
        return Create(
            "request_llm_call", idempotency_key,
            {"tenant_id": tenant_id, "provider": provider, "model": model,
             "prompt_tokens": prompt_tokens},
            lambda id_: LLMCall.request(id_, provider, model, prompt_tokens),
            tenant_id=tenant_id, **trace,
        )

    def complete_llm_call(
        self, call_id: UUID, completion_tokens: int, cost_usd: Decimal, latency_ms: float, *,
        idempotency_key: str, **trace: Trace,
    ) -> CommandResult:
        return self.execute(self.complete_llm_call_command(
            call_id, completion_tokens, cost_usd, latency_ms,
            idempotency_key=idempotency_key, **trace,
        ))

    def complete_llm_call_command(
        self, call_id: UUID, completion_tokens: int, cost_usd: Decimal, latency_ms: float, *,
        idempotency_key: str, **trace: Trace,
    ) -> Update[LLMCall]:
        return _update(
            "complete_llm_call", idempotency_key, call_id,
            {"completion_tokens": completion_tokens, "cost_usd": str(cost_usd),
             "latency_ms": latency_ms},
            LLMCall, lambda c: c.complete(completion_tokens, cost_usd, latency_ms), trace,
        )

    def fail_llm_call(
        self, call_id: UUID, error: str, *, idempotency_key: str, **trace: Trace
    ) -> CommandResult:
        return self.execute(self.fail_llm_call_command(
            call_id, error, idempotency_key=idempotency_key, **trace
        ))

    def fail_llm_call_command(
        self, call_id: UUID, error: str, *, idempotency_key: str, **trace: Trace
    ) -> Update[LLMCall]:
        return _update(
            "fail_llm_call", idempotency_key, call_id, {"error": error},
            LLMCall, lambda c: c.fail(error), trace,
        )

    def get_llm_call(self, call_id: UUID) -> LLMCall:
        return self.get(call_id, LLMCall)
