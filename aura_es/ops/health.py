"""Whether the projection system is healthy, why not, and a 0-100 score for dashboards.

Ready means: the database answers, every projection has a live active worker, and no
projection lags more than ``max_lag_seconds``. The score starts at 100 and each
projection can take away its share: 50% without a live worker, 30% when lagging
past the threshold, paused or with its breaker open, 10% with open dead letters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_LAG_SECONDS = 300.0


@dataclass(frozen=True)
class Health:
    ready: bool
    score: float
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "score": self.score, "reasons": self.reasons}


def database_down(error: BaseException) -> Health:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return Health(False, 0.0, [f"database does not answer: {first_line}"])


#: Readers held back longer than this make /health unready, naming who holds them.
MAX_HELD_BACK_SECONDS = 60.0


def assess(
    projections: Sequence[dict[str, Any]], max_lag_seconds: float = DEFAULT_MAX_LAG_SECONDS,
    horizon: dict[str, Any] | None = None,
) -> Health:
    """From ``projection_status`` rows (and ``horizon_status``)."""
    reasons: list[str] = []
    held = (horizon or {}).get("held_back")
    if held and held["seconds"] > MAX_HELD_BACK_SECONDS:
        reasons.append(
            f"readers held back {held['seconds']:.0f} s by the {held['kind']} of pid"
            f" {held['pid']} (database {held['database']},"
            f" application {held['application_name'] or '-'})")
    lost = 0.0
    share = 100.0 / max(1, len(projections))
    for p in projections:
        name = p["projection"]
        if p["state"] == "breaker_open":
            probe = p.get("next_probe_seconds")
            when = f", next probe in {probe:.0f} s" if probe is not None else ""
            reasons.append(f"{name}: circuit breaker open{when}")
            lost += share * 0.5
        elif p["state"] not in ("running", "paused"):
            reasons.append(f"{name}: no live active worker ({p['state']})")
            lost += share * 0.5
        if p["lag_seconds"] > max_lag_seconds:
            reasons.append(f"{name}: lag {p['lag_seconds']:.0f} s over {max_lag_seconds:g} s")
            lost += share * 0.3
        elif p["state"] == "paused" or p["breaker"] == "open":
            lost += share * 0.3
        if p["dead_letters"]:
            lost += share * 0.1
    return Health(not reasons, round(max(0.0, 100.0 - lost), 1), reasons)
