"""Small argument checks shared by the aggregates; each raises DomainError naming the field."""

from __future__ import annotations

import math
from decimal import Decimal

from aura_es.errors import DomainError

#: Token counts and amounts beyond this are a caller's mistake, and their sums must
#: still fit the read models' 64-bit columns.
MAX_QUANTITY = 10**12


def non_empty(field: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DomainError(f"{field} must be a non-empty string")
    return value


def non_negative(field: str, value: int | float | Decimal) -> None:
    """A finite number from 0 to ``MAX_QUANTITY``; never NaN or infinity."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise DomainError(f"{field} must be a number, got {value!r}")
    finite = value.is_finite() if isinstance(value, Decimal) else (
        isinstance(value, int) or math.isfinite(value)
    )
    if not finite:
        raise DomainError(f"{field} must be a finite number, got {value}")
    if value < 0:
        raise DomainError(f"{field} must be >= 0, got {value}")
    if value > MAX_QUANTITY:
        raise DomainError(f"{field} must be at most {MAX_QUANTITY:,}, got {value}")
