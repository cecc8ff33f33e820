"""Projections: the handler API, declarative projections and the checkpointed runner."""

from aura_es.projection.handlers.actions import side_effect_action
from aura_es.projection.handlers.api import Projection, Tx, on
from aura_es.store.envelope import EventEnvelope

__all__ = ["EventEnvelope", "Projection", "Tx", "on", "side_effect_action"]
