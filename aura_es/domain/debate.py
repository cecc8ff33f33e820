"""A debate between agents: started, argued in rounds, ended by consensus or failure."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aura_es.aggregate import AuraAggregate
from aura_es.domain.rules import non_empty
from aura_es.errors import DomainError
from aura_es.events import AuraCreated, AuraEvent
from aura_es.personal import Personal

OPEN, CONSENSUS, FAILED = "open", "consensus", "failed"


class DebateStarted(AuraCreated):
    TOPIC = "aura.debate.started.v1"
    topic: str
    participants: list[str]

    def apply(self, debate: Any) -> None:
        debate.topic = self.topic
        debate.participants = list(self.participants)
        debate.tenant_id = self.tenant_id


class ArgumentAdded(AuraEvent):
    """An argument: its text is the words of a person (personal data, sealed with the
    key of the command's ``subject=``, else of the agent's id)."""

    TOPIC = "aura.debate.argument_added.v1"
    SUBJECT = "agent_id"
    # v2: text is personal (sealed at rest); v1 events were stored in the clear.
    class_version = 2
    agent_id: str
    position: str
    text: Personal[str]
    round: int

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """The payload is the same; only how ``text`` is stored changed."""

    def apply(self, debate: Any) -> None:
        debate.arguments += 1
        debate.rounds = max(debate.rounds, self.round)


class DebateConsensusReached(AuraEvent):
    TOPIC = "aura.debate.consensus_reached.v1"
    decision: str

    def apply(self, debate: Any) -> None:
        debate.status = CONSENSUS
        debate.decision = self.decision


class DebateFailed(AuraEvent):
    TOPIC = "aura.debate.failed.v1"
    reason: str

    def apply(self, debate: Any) -> None:
        debate.status = FAILED
        debate.failure_reason = self.reason


class Debate(AuraAggregate):
    TYPE = "aura.debate"

    def __init__(self) -> None:
        self.topic = ""
        self.participants: list[str] = []
        self.tenant_id = "default"
        self.status = OPEN
        self.rounds = 0
        self.arguments = 0
        self.decision: str | None = None
        self.failure_reason: str | None = None

    @classmethod
    def start(cls, debate_id: UUID, topic: str, participants: list[str]) -> Debate:
        non_empty("topic", topic)
        if not participants:
            raise DomainError("participants must name at least one agent")
        for agent in participants:
            non_empty("participants[]", agent)
        return cls._create(DebateStarted, id=debate_id, topic=topic, participants=participants)

    def add_argument(self, agent_id: str, position: str, text: str, round: int) -> None:
        self._require_open("add an argument to")
        non_empty("agent_id", agent_id)
        non_empty("position", position)
        non_empty("text", text)
        if isinstance(round, bool) or not isinstance(round, int) or round < 1:
            raise DomainError(f"round must be an integer >= 1, got {round!r}")
        self.trigger_event(
            ArgumentAdded, agent_id=agent_id, position=position, text=text, round=round
        )

    def reach_consensus(self, decision: str) -> None:
        self._require_open("reach consensus on")
        non_empty("decision", decision)
        self.trigger_event(DebateConsensusReached, decision=decision)

    def fail(self, reason: str) -> None:
        self._require_open("fail")
        non_empty("reason", reason)
        self.trigger_event(DebateFailed, reason=reason)

    def _require_open(self, action: str) -> None:
        if self.status != OPEN:
            raise DomainError(f"cannot {action} debate {self.id}: it is {self.status}")
