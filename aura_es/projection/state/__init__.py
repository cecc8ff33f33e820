"""The tables the engine keeps for each projection: checkpoints, the side-effect outbox,
worker presence and the registry of read-model tables (one owning module each)."""
