"""Projections: the handler API, declarative projections and the checkpointed runner."""

from aura_es.projection import dlq as _dlq  # noqa: F401  (registers the DDL)
from aura_es.projection import registry as _registry  # noqa: F401
from aura_es.projection import tables as _tables  # noqa: F401
from aura_es.projection.api import Projection, Tx, on
from aura_es.projection.envelope import EventEnvelope

__all__ = ["EventEnvelope", "Projection", "Tx", "on"]
