"""The event log's names, shared by its owner (``recorder``, ``eventlog``) and the modules
that join against it (``idempotency``'s lookup of a stored command's positions)."""

EVENTS_TABLE = "aura_events"
RESERVE_FUNCTION = "aura_reserve_positions"
