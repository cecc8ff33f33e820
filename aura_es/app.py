"""AuraApp: the AURA commands (debates, decisions, LLM calls) as idempotent methods."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

from aura_es.application import CommandResult, Create, EventSourcedApp, Update
from aura_es.domain import Debate, Decision, LLMCall
from aura_es.errors import AggregateNotFound


class AuraApp(EventSourcedApp):
    """Every command takes an ``idempotency_key``; retrying it returns the original result.

    Creating commands return the new aggregate's id; the others return a CommandResult
    (aggregate id, versions and global positions of the events stored, and whether this
    call was a duplicate). Optional ``correlation_id`` / ``causation_id`` go into the
    metadata of every event the command stores.
    """

    # -- debates --------------------------------------------------------------------------

    def start_debate(
        self,
        topic: str,
        participants: list[str],
        *,
        idempotency_key: str,
        tenant_id: str = "default",
        **trace: str | None,
    ) -> UUID:
        return self.execute(self.start_debate_command(
            topic, participants, idempotency_key=idempotency_key, tenant_id=tenant_id, **trace
        )).aggregate_id

    def start_debate_command(
        self, topic: str, participants: list[str], *, idempotency_key: str,
        tenant_id: str = "default", **trace: str | None,
    ) -> Create[Debate]:
        return Create(
            "start_debate", idempotency_key,
            {"topic": topic, "participants": list(participants), "tenant_id": tenant_id},
            lambda id_: Debate.start(id_, topic, list(participants)),
            tenant_id=tenant_id, **trace,
        )

    def add_argument(
        self, debate_id: UUID, agent_id: str, position: str, text: str, *,
        round: int, idempotency_key: str, **trace: str | None,  # noqa: A002
    ) -> CommandResult:
        return self.execute(self.add_argument_command(
            debate_id, agent_id, position, text, round=round,
            idempotency_key=idempotency_key, **trace,
        ))

    def add_argument_command(
        self, debate_id: UUID, agent_id: str, position: str, text: str, *,
        round: int, idempotency_key: str, **trace: str | None,  # noqa: A002
    ) -> Update[Debate]:
        return self._update(
            "add_argument", idempotency_key, debate_id,
            {"agent_id": agent_id, "position": position, "text": text, "round": round},
            lambda d: d.add_argument(agent_id, position, text, round), Debate, trace,
        )

    def reach_consensus(
        self, debate_id: UUID, decision: str, *, idempotency_key: str, **trace: str | None
    ) -> CommandResult:
        return self.execute(self._update(
            "reach_consensus", idempotency_key, debate_id, {"decision": decision},
            lambda d: d.reach_consensus(decision), Debate, trace,
        ))

    def fail_debate(
        self, debate_id: UUID, reason: str, *, idempotency_key: str, **trace: str | None
    ) -> CommandResult:
        return self.execute(self._update(
            "fail_debate", idempotency_key, debate_id, {"reason": reason},
            lambda d: d.fail(reason), Debate, trace,
        ))

    def get_debate(self, debate_id: UUID) -> Debate:
        return self.get(debate_id, Debate)

    # -- decisions ------------------------------------------------------------------------

    def propose_decision(
        self, agent_id: str, title: str, *, debate_id: UUID | None = None,
        idempotency_key: str, tenant_id: str = "default", **trace: str | None,
    ) -> UUID:
        return self.execute(Create(
            "propose_decision", idempotency_key,
            {"agent_id": agent_id, "title": title, "debate_id": debate_id, "tenant_id": tenant_id},
            lambda id_: Decision.propose(id_, agent_id, title, debate_id),
            tenant_id=tenant_id, **trace,
        )).aggregate_id

    def approve_decision(
        self, decision_id: UUID, approver: str, *, idempotency_key: str, **trace: str | None
    ) -> CommandResult:
        return self.execute(self._update(
            "approve_decision", idempotency_key, decision_id, {"approver": approver},
            lambda d: d.approve(approver), Decision, trace,
        ))

    def reject_decision(
        self, decision_id: UUID, approver: str, reason: str, *,
        idempotency_key: str, **trace: str | None,
    ) -> CommandResult:
        return self.execute(self._update(
            "reject_decision", idempotency_key, decision_id,
            {"approver": approver, "reason": reason},
            lambda d: d.reject(approver, reason), Decision, trace,
        ))

    def get_decision(self, decision_id: UUID) -> Decision:
        return self.get(decision_id, Decision)

    # -- LLM calls ------------------------------------------------------------------------

    def request_llm_call(
        self, tenant_id: str, provider: str, model: str, prompt_tokens: int, *,
        idempotency_key: str, **trace: str | None,
    ) -> UUID:
        return self.execute(Create(
            "request_llm_call", idempotency_key,
            {"tenant_id": tenant_id, "provider": provider, "model": model,
             "prompt_tokens": prompt_tokens},
            lambda id_: LLMCall.request(id_, provider, model, prompt_tokens),
            tenant_id=tenant_id, **trace,
        )).aggregate_id

    def complete_llm_call(
        self, call_id: UUID, completion_tokens: int, cost_usd: Decimal, latency_ms: float, *,
        idempotency_key: str, **trace: str | None,
    ) -> CommandResult:
        return self.execute(self._update(
            "complete_llm_call", idempotency_key, call_id,
            {"completion_tokens": completion_tokens, "cost_usd": str(cost_usd),
             "latency_ms": latency_ms},
            lambda c: c.complete(completion_tokens, cost_usd, latency_ms), LLMCall, trace,
        ))

    def fail_llm_call(
        self, call_id: UUID, error: str, *, idempotency_key: str, **trace: str | None
    ) -> CommandResult:
        return self.execute(self._update(
            "fail_llm_call", idempotency_key, call_id, {"error": error},
            lambda c: c.fail(error), LLMCall, trace,
        ))

    def get_llm_call(self, call_id: UUID) -> LLMCall:
        return self.get(call_id, LLMCall)

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _update(
        command_type: str, key: str, aggregate_id: UUID, request: dict[str, Any],
        change: Any, expected: type, trace: dict[str, str | None],
    ) -> Update[Any]:
        def checked_change(aggregate: Any) -> None:
            if not isinstance(aggregate, expected):
                raise AggregateNotFound(aggregate_id)
            change(aggregate)

        return Update(command_type, key, aggregate_id, request, checked_change, **trace)
