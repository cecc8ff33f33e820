"""OpenTelemetry spans around appends, mirror publishes and projection batches.

When ``opentelemetry-api`` is installed and the application has installed a tracer
provider (an SDK), ``span`` opens a real span on the global tracer. Until then, and when
the API is not installed at all, ``span`` returns one shared null context: the API's
no-op span still costs a keyed command ~35 µs of client CPU (profiled, issue 27), for
nothing. A provider, once set, cannot be unset, so the check is made until one is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

_NULL = contextlib.nullcontext()


def _load() -> tuple[Callable[..., Any] | None, Callable[[], bool]]:
    try:
        from opentelemetry import trace  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None, lambda: False
    tracer = trace.get_tracer("aura_es")
    start: Callable[..., Any] = tracer.start_as_current_span
    proxy = trace.ProxyTracerProvider

    def provider_installed() -> bool:
        return not isinstance(trace.get_tracer_provider(), proxy)

    if not hasattr(trace, "_TRACER_PROVIDER"):
        return start, provider_installed

    def provider_set() -> bool:
        # ``get_tracer_provider`` looks up an environment variable at every call while
        # no provider is set (1.5 µs, where this is 0.05). A provider the variable names
        # was loaded by ``get_tracer`` above; any other is set in code.
        return trace._TRACER_PROVIDER is not None and provider_installed()

    return start, provider_set


_start_span, _provider_installed = _load()
_tracing = False


def active() -> bool:
    """Whether ``span`` opens real spans: a tracer provider is installed. (A hot path
    asks this first and skips even the null context: ~1 µs of a keyed command.)"""
    global _tracing
    if _start_span is None:
        return False
    if not _tracing:
        if not _provider_installed():
            return False
        _tracing = True
    return True


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """``with span("aura.projection.batch", projection=...):`` around a unit of work."""
    if not active():
        return _NULL
    assert _start_span is not None
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
