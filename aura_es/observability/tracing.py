"""OpenTelemetry spans around appends, mirror publishes and projection batches.

When ``opentelemetry-api`` is installed, ``span`` opens a real span on the global tracer
(a no-op until the application installs an SDK). When it is not, ``span`` returns one
shared null context: no import, no allocation per call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

_NULL = contextlib.nullcontext()


def _load() -> Callable[..., Any] | None:
    try:
        from opentelemetry import trace  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    tracer = trace.get_tracer("aura_es")
    start: Callable[..., Any] = tracer.start_as_current_span
    return start


_start_span = _load()


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """``with span("aura.projection.batch", projection=...):`` around a unit of work."""
    if _start_span is None:
        return _NULL
    opened: contextlib.AbstractContextManager[Any] = _start_span(
        name, attributes={k: v for k, v in attributes.items() if v is not None}
    )
    return opened


def enabled() -> bool:
    return _start_span is not None
