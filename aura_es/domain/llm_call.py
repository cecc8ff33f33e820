"""A call to a language model: requested, then completed (tokens, cost, latency) or failed."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

from aura_es.aggregate import AuraAggregate
from aura_es.domain.rules import non_empty, non_negative
from aura_es.errors import DomainError
from aura_es.events import AuraCreated, AuraEvent

REQUESTED, COMPLETED, FAILED = "requested", "completed", "failed"


class LLMCallRequested(AuraCreated):
    TOPIC = "aura.llm_call.requested.v1"
    provider: str
    model: str
    prompt_tokens: int

    def apply(self, call: Any) -> None:
        call.tenant_id = self.tenant_id
        call.provider = self.provider
        call.model = self.model
        call.prompt_tokens = self.prompt_tokens


class LLMCallCompleted(AuraEvent):
    """Version 2 added ``latency_ms``; events stored as version 1 load with 0.0."""

    TOPIC = "aura.llm_call.completed.v1"
    class_version = 2
    completion_tokens: int
    cost_usd: Decimal
    latency_ms: float

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["latency_ms"] = 0.0

    def apply(self, call: Any) -> None:
        call.status = COMPLETED
        call.completion_tokens = self.completion_tokens
        call.cost_usd = self.cost_usd
        call.latency_ms = self.latency_ms


class LLMCallFailed(AuraEvent):
    TOPIC = "aura.llm_call.failed.v1"
    error: str

    def apply(self, call: Any) -> None:
        call.status = FAILED
        call.error = self.error


class LLMCall(AuraAggregate):
    TYPE = "aura.llm_call"

    def __init__(self) -> None:
        self.tenant_id = "default"
        self.provider = ""
        self.model = ""
        self.prompt_tokens = 0
        self.status = REQUESTED
        self.completion_tokens = 0
        self.cost_usd = Decimal(0)
        self.latency_ms = 0.0
        self.error: str | None = None

    @classmethod
    def request(cls, call_id: UUID, provider: str, model: str, prompt_tokens: int) -> LLMCall:
        non_empty("provider", provider)
        non_empty("model", model)
        non_negative("prompt_tokens", prompt_tokens)
        if not isinstance(prompt_tokens, int):
            raise DomainError(f"prompt_tokens must be an integer, got {prompt_tokens!r}")
        return cls._create(
            LLMCallRequested, id=call_id, provider=provider, model=model,
            prompt_tokens=prompt_tokens,
        )

    def complete(self, completion_tokens: int, cost_usd: Decimal, latency_ms: float) -> None:
        self._require_requested("complete")
        non_negative("completion_tokens", completion_tokens)
        if not isinstance(completion_tokens, int):
            raise DomainError(f"completion_tokens must be an integer, got {completion_tokens!r}")
        non_negative("cost_usd", cost_usd)
        non_negative("latency_ms", latency_ms)
        self.trigger_event(
            LLMCallCompleted,
            completion_tokens=completion_tokens,
            cost_usd=Decimal(str(cost_usd)),
            latency_ms=float(latency_ms),
        )

    def fail(self, error: str) -> None:
        self._require_requested("fail")
        non_empty("error", error)
        self.trigger_event(LLMCallFailed, error=error)

    def _require_requested(self, action: str) -> None:
        if self.status != REQUESTED:
            raise DomainError(f"cannot {action} LLM call {self.id}: it is {self.status}")
