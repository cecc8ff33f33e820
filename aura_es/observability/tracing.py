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


class OpenSpan:
    """A span started by ``start`` and ended by ``end`` (for code that cannot hold a
    ``with`` block across the work, such as a worker's hooks)."""

    def __init__(self, context: contextlib.AbstractContextManager[Any]) -> None:
        self._context = context
        self._span = context.__enter__()

    def end(self, error: BaseException | None = None, **attributes: Any) -> None:
        if self._span is not None:
            for key, value in attributes.items():
                self._span.set_attribute(key, value)
        if error is None:
            self._context.__exit__(None, None, None)
        else:
            self._context.__exit__(type(error), error, error.__traceback__)


def start(name: str, **attributes: Any) -> OpenSpan:
    return OpenSpan(span(name, **attributes))


def enabled() -> bool:
    return _start_span is not None
