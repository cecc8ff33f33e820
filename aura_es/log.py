"""Structured logs: JSON lines when stderr is not a terminal, readable text when it is."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from aura_es.dsn import redact

_PASSWORD_PAIR = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)

_configured = False


def redact_secrets(
    _: Any, __: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """No password reaches a log line, whatever a message or an error happens to quote:
    URL passwords and ``password=`` pairs are masked in every string value."""
    for key, value in event.items():
        if isinstance(value, str) and ("@" in value or "password" in value.lower()):
            event[key] = _PASSWORD_PAIR.sub(r"\1***", redact(value))
    return event


def level_from_env() -> int:
    """``AURA_ES_LOG_LEVEL`` (DEBUG, INFO, WARNING, ERROR); INFO by default."""
    name = os.environ.get("AURA_ES_LOG_LEVEL", "INFO").upper()
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO


def configure(level: int | None = None) -> None:
    global _configured
    if _configured:
        return
    level = level_from_env() if level is None else level
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _configured = True


def get_logger(**context: Any) -> Any:
    configure()
    return structlog.get_logger().bind(**context)
