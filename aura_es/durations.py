"""Durations written as ``90s``, ``15m``, ``12h``, ``30d`` or ``2w``: one parser for the
catalog and every command-line option, with one set of rules and one upper bound."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^(\d{1,12})\s*(s|m|h|d|w)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
#: A hundred years: longer than anything that can be meant, and far inside what both
#: Python's timedelta and PostgreSQL's interval hold.
MAX_SECONDS = 100 * 365 * 86_400


def parse_duration(text: str) -> timedelta:
    """A positive duration; ValueError (a message naming the value) for anything else."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 12h, 30d or 2w")
    seconds = int(match.group(1)) * _SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    if seconds > MAX_SECONDS:
        raise ValueError(f"duration {text!r} is longer than the limit of 100 years (36500d)")
    return timedelta(seconds=seconds)
