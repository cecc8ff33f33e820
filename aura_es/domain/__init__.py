"""The AURA aggregates: debates, decisions and LLM calls."""

from aura_es.domain.debate import Debate
from aura_es.domain.decision import Decision
from aura_es.domain.llm_call import LLMCall

__all__ = ["Debate", "Decision", "LLMCall"]
