"""A decision an agent proposes, perhaps out of a debate, then approved or rejected."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aura_es.aggregate import AuraAggregate
from aura_es.domain.rules import non_empty
from aura_es.errors import DomainError
from aura_es.events import AuraCreated, AuraEvent

PROPOSED, APPROVED, REJECTED = "proposed", "approved", "rejected"


class DecisionProposed(AuraCreated):
    TOPIC = "aura.decision.proposed.v1"
    agent_id: str
    title: str
    debate_id: UUID | None

    def apply(self, decision: Any) -> None:
        decision.agent_id = self.agent_id
        decision.title = self.title
        decision.debate_id = self.debate_id


class DecisionApproved(AuraEvent):
    TOPIC = "aura.decision.approved.v1"
    agent_id: str
    approver: str

    def apply(self, decision: Any) -> None:
        decision.status = APPROVED
        decision.approver = self.approver


class DecisionRejected(AuraEvent):
    TOPIC = "aura.decision.rejected.v1"
    agent_id: str
    approver: str
    reason: str

    def apply(self, decision: Any) -> None:
        decision.status = REJECTED
        decision.approver = self.approver
        decision.rejection_reason = self.reason


class Decision(AuraAggregate):
    TYPE = "aura.decision"

    def __init__(self) -> None:
        self.agent_id = ""
        self.title = ""
        self.debate_id: UUID | None = None
        self.status = PROPOSED
        self.approver: str | None = None
        self.rejection_reason: str | None = None

    @classmethod
    def propose(
        cls, decision_id: UUID, agent_id: str, title: str, debate_id: UUID | None
    ) -> Decision:
        non_empty("agent_id", agent_id)
        non_empty("title", title)
        return cls._create(
            DecisionProposed, id=decision_id, agent_id=agent_id, title=title, debate_id=debate_id
        )

    def approve(self, approver: str) -> None:
        self._require_proposed("approve")
        non_empty("approver", approver)
        # The proposer travels with the outcome so per-agent projections need no lookup.
        self.trigger_event(DecisionApproved, agent_id=self.agent_id, approver=approver)

    def reject(self, approver: str, reason: str) -> None:
        self._require_proposed("reject")
        non_empty("approver", approver)
        non_empty("reason", reason)
        self.trigger_event(
            DecisionRejected, agent_id=self.agent_id, approver=approver, reason=reason
        )

    def _require_proposed(self, action: str) -> None:
        if self.status != PROPOSED:
            raise DomainError(f"cannot {action} decision {self.id}: it is {self.status}")
