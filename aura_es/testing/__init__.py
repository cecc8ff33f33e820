"""Testing your own aggregates and projections with aura-es: a pytest plugin with real
servers and a fresh database per test (``aura_es.testing.plugin``, loaded by pytest when
aura-es is installed with the ``testing`` extra), given/when/then specs, and catching
projections up in-process. See docs/testing.md."""

from aura_es.testing.catchup import CatchUp, CaughtUp, NotCaughtUp, caught_up
from aura_es.testing.specs import Expected, Given, Scenario, event, scenario

__all__ = [
    "CatchUp",
    "CaughtUp",
    "Expected",
    "Given",
    "NotCaughtUp",
    "Scenario",
    "caught_up",
    "event",
    "scenario",
]
