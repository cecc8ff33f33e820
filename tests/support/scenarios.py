"""Running the load generator's command scenarios against an application."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from aura_es.app import AuraApp
from aura_es.load import Scenario


def run_scenarios(app: AuraApp, source: Iterator[Scenario], count: int) -> None:
    for scenario in itertools.islice(source, count):
        created = None
        for step in scenario.steps:
            result = app.execute(step(app, created))
            created = created or result.aggregate_id
