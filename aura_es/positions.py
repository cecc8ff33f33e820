"""Positions in the global log: bigint identities assigned by PostgreSQL."""

from __future__ import annotations

#: The largest position PostgreSQL's bigint can hold: "no upper limit" in range queries.
MAX_POSITION = 2**63 - 1
