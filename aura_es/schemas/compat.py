"""Is version ``new`` of an event type compatible with an earlier version ``old``?

- FORWARD (a reader of ``old`` reads what ``new`` writes): every value valid under
  ``new`` must be valid under ``old``. Checked statically with ``jsoncompat`` (role
  "serializer") and, because its authors say it can miss cases, also by sampling:
  values generated from ``new`` (hypothesis-jsonschema) validated against ``old``.
- BACKWARD (this code reads what ``old`` wrote): stored events are upcast before they
  are read, so the rule is "every ``old`` value, upcast to ``new``, is valid under
  ``new``", checked by sampling ``old`` and running the class's upcasters.

Sampling is derandomised: the same registry gives the same verdict on every machine.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsoncompat
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator

from aura_es.schemas.sampling import from_schema

#: Values sampled per check: enough to hit every field's type, quick enough for CI.
SAMPLES = 60


@dataclass(frozen=True)
class Incompatible:
    """Why a version breaks a mode, with an example value when sampling found one."""

    direction: str  # "forward" or "backward"
    reason: str
    example: Any = None

    def __str__(self) -> str:
        if self.example is None:
            return self.reason
        shown = json.dumps(self.example, sort_keys=True, default=str)
        return f"{self.reason}; e.g. {shown[:200]}"


def forward(old: dict[str, Any], new: dict[str, Any]) -> Incompatible | None:
    """None when a reader of ``old`` can read every value ``new`` allows."""
    try:
        static_ok = jsoncompat.check_compat(json.dumps(old), json.dumps(new),
                                            jsoncompat.Role.SERIALIZER)
    except ValueError:
        static_ok = True  # a feature jsoncompat does not support: sampling decides
    example = counterexample(new, lambda value: _valid(old, value))
    if example is not _NONE:
        return Incompatible("forward", "a value the new version allows is refused by the"
                            " old one", example)
    if not static_ok:
        return Incompatible("forward", "the new version allows values the old one refuses"
                            " (jsoncompat)")
    return None


def backward(old: dict[str, Any], new: dict[str, Any],
             upcast: Callable[[dict[str, Any]], dict[str, Any]]) -> Incompatible | None:
    """None when every ``old`` value, upcast, is valid under ``new``."""
    def upcast_copy(value: Any) -> Any:
        try:
            return upcast(copy.deepcopy(value))
        except Exception as e:
            return e

    example = counterexample(old, lambda value: _valid(new, upcast_copy(value)))
    if example is _NONE:
        return None
    became = upcast_copy(example)
    shown = (f"the upcaster raised {type(became).__name__}: {became}"
             if isinstance(became, Exception)
             else f"upcast to {json.dumps(became, sort_keys=True, default=str)[:200]}")
    return Incompatible("backward", f"a value of the old version, {shown}, does not fit"
                        " the new one", example)


_NONE = object()


def counterexample(schema: dict[str, Any], holds: Callable[[Any], bool]) -> Any:
    """A value of ``schema`` for which ``holds`` is false (hypothesis shrinks it), or
    ``_NONE``."""
    found: list[Any] = []

    @settings(max_examples=SAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(from_schema(schema))
    def check(value: Any) -> None:
        if not holds(value):
            found.append(value)
            raise AssertionError

    try:
        check()
    except AssertionError:
        return found[-1]
    except Unsatisfiable:
        return _NONE
    return _NONE


def _valid(schema: dict[str, Any], value: Any) -> bool:
    return bool(Draft202012Validator(schema).is_valid(value))
