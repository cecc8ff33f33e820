"""`aura-es dlq retry`: re-applying dead letters, and re-running dead side effects.

A dead letter is retried by an engine of the read model that serves its projection now,
holding that checkpoint's lock (so no live batch interleaves); its events are applied in
order and the side effects the live path would have recorded are recorded. A dead
letter of a rebuild in progress is left for the rebuild: it moves to the projection at
the switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from aura_es.catalog.model import Catalog
from aura_es.errors import ConfigurationError
from aura_es.projection import dlq
from aura_es.projection.engine.engine import Engine
from aura_es.projection.engine.loading import select
from aura_es.projection.state import outbox


def retry_dead_letters(
    conn: psycopg.Connection[Any], catalog: Catalog, letters: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """One outcome per dead letter: ``applied``, or ``skipped`` with the reason."""
    engines: dict[str, Engine] = {}
    outcomes: list[dict[str, Any]] = []
    for letter in letters:
        name = letter["projection"]
        if letter.get("rebuild"):
            outcomes.append({"id": letter["id"], "projection": name, "applied": False,
                             "skipped": "rebuild in progress"})
            continue
        if name not in engines:
            (spec,) = select(catalog, [name])
            engines[name] = Engine.attach(conn, spec)
        applied = engines[name].retry_dead_letter(letter["id"])
        outcomes.append({"id": letter["id"], "projection": name, "applied": applied})
    return outcomes


def open_letters(
    conn: psycopg.Connection[Any], *, dead_letter_id: int | None = None,
    projection: str | None = None,
) -> list[dict[str, Any]]:
    """The open dead letters to retry: one by id, or all (of one projection)."""
    with conn.cursor() as cur:
        if dead_letter_id is None:
            return dlq.listing(cur, projection)
        one = dlq.get(cur, dead_letter_id)
    if one is None:
        raise ConfigurationError(f"no dead letter with id {dead_letter_id}")
    if one["status"] != dlq.PARKED_STATUS:
        raise ConfigurationError(f"dead letter {dead_letter_id} is {one['status']}, not open")
    return [one]


def retry_side_effect(conn: psycopg.Connection[Any], effect_id: int) -> None:
    """A dead side effect runs again (the projection's worker picks it up at once)."""
    if not outbox.requeue(conn, effect_id):
        raise ConfigurationError(f"no dead side effect with id {effect_id}")
