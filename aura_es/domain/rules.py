"""Small argument checks shared by the aggregates; each raises DomainError naming the field."""

from __future__ import annotations

from decimal import Decimal

from aura_es.errors import DomainError


def non_empty(field: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DomainError(f"{field} must be a non-empty string")
    return value


def non_negative(field: str, value: int | float | Decimal) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise DomainError(f"{field} must be a number, got {value!r}")
    if value < 0 or value != value:  # NaN is not >= 0 either
        raise DomainError(f"{field} must be >= 0, got {value}")
