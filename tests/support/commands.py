"""The command tests' view of a store: emptied between examples, and counted."""

from __future__ import annotations

from aura_es import AuraApp


def empty(app: AuraApp) -> None:
    """No event and no key stored, positions from 1 again."""
    with app.connect() as conn:
        conn.execute("TRUNCATE aura_events, aura_idempotency RESTART IDENTITY")


def stored_events(app: AuraApp) -> int:
    with app.connect() as conn:
        row = conn.execute("SELECT count(*) FROM aura_events").fetchone()
        assert row is not None
        return int(row[0])
