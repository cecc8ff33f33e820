"""Replay: blue/green rebuilds of a read model, partial replays, and their bookkeeping."""

from aura_es.replay.claim import ReplayRunning
from aura_es.replay.partial import PartialResult, replay_aggregates
from aura_es.replay.plan import Plan, plan_rebuild
from aura_es.replay.rebuild import Rebuild, RebuildResult

__all__ = [
    "PartialResult",
    "Plan",
    "Rebuild",
    "RebuildResult",
    "ReplayRunning",
    "plan_rebuild",
    "replay_aggregates",
]
