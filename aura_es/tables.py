"""Every table aura-es needs, in the order `aura-es db init` creates them: an explicit
list of the owning modules' declarations (see ``aura_es.store.owners``)."""

from __future__ import annotations

from typing import Any

import psycopg

from aura_es.application import EventSourcedApp
from aura_es.http import responses
from aura_es.mirror import progress
from aura_es.projection import dlq
from aura_es.projection.state import checkpoints, outbox, presence, registry
from aura_es.replay import claim, generations
from aura_es.store import eventlog, idempotency, identity, keystore
from aura_es.store import owners as tables

OWNERS: list[tables.Owner] = [
    eventlog.OWNER,
    idempotency.OWNER,
    identity.OWNER,
    keystore.OWNER,
    checkpoints.OWNER,
    presence.OWNER,
    registry.OWNER,
    dlq.OWNER,
    outbox.OWNER,
    generations.OWNER,
    claim.OWNER,
    progress.OWNER,
    responses.OWNER,
]


def create_all(database_url: str) -> None:
    """Creates (or upgrades in place) every table; running it again changes nothing."""
    app = EventSourcedApp(database_url, check_schema=False, pool_size=1)
    try:
        app.init_schema()
        with app.connect() as conn:
            tables.create(conn, OWNERS)
    finally:
        app.close()


def require_all(conn: psycopg.Connection[Any]) -> None:
    """``SchemaMissing`` (run `aura-es db init`) when any table is missing."""
    tables.require(conn, OWNERS)
