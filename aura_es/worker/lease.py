"""How long a worker's lease on its partitions lasts without a heartbeat:
``AURA_ES_LEASE_SECONDS`` (default: ``presence.ALIVE_SECONDS``).

A worker that has not beaten its heartbeat for this long (paused, cut off) is no longer a
live member: its partitions are dealt to the others, and its own next batch is fenced
out. A transaction it leaves open for this long is ended by the server. Shorter leases
take over sooner; a batch must finish within one.
"""

from __future__ import annotations

import math
import os

from aura_es.errors import ConfigurationError
from aura_es.projection.state.presence import ALIVE_SECONDS

LEASE_SECONDS_ENV = "AURA_ES_LEASE_SECONDS"
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 1.0, 600.0


def lease_from_env() -> float:
    return lease_seconds(os.environ.get(LEASE_SECONDS_ENV, ""))


def lease_seconds(value: str) -> float:
    """Seconds, from ``AURA_ES_LEASE_SECONDS`` (empty: the default)."""
    if not value:
        return float(ALIVE_SECONDS)
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not MIN_LEASE_SECONDS <= seconds <= MAX_LEASE_SECONDS:  # also refuses NaN
        raise ConfigurationError(
            f"{LEASE_SECONDS_ENV}={value!r} is not a number of seconds from"
            f" {MIN_LEASE_SECONDS:g} to {MAX_LEASE_SECONDS:g}")
    return seconds
