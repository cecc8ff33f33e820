"""Structured logs: JSON lines when stderr is not a terminal, readable text when it is.

Three promises, each a processor or the writer below:
- no credential reaches a line (``redact_secrets``);
- every line is written whole, in one ``write`` of at most ``PIPE_BUF`` bytes, so worker
  processes sharing one stderr pipe never merge or split each other's lines
  (``WholeLineLogger``; long values are shortened to fit);
- Python warnings (psycopg's, the library's) become log lines too, not plain text that
  would break a JSON log.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import warnings
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from aura_es.dsn import redact

#: POSIX guarantees that a write of at most this many bytes to a pipe is never interleaved.
PIPE_BUF = select.PIPE_BUF
_configured = False


def redact_secrets(
    _: Any, __: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """No credential reaches a log line, whatever a message or an error happens to quote."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
        elif isinstance(value, BaseException):
            event[key] = redact(f"{type(value).__name__}: {value}")
    return event


def fit_line(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Shortens the longest string values until the rendered JSON fits in ``PIPE_BUF``."""
    budget = PIPE_BUF - 1  # the newline
    for _attempt in range(len(event) + 1):
        size = len(orjson.dumps(event, default=str))
        if size <= budget:
            return event
        strings = [(len(v), k) for k, v in event.items() if isinstance(v, str)]
        if not strings:
            break
        length, key = max(strings)
        keep = max(0, length - (size - budget) - 40)
        value: str = event[key]
        event[key] = f"{value[:keep]}…[{length - keep} characters cut]"
    return event


class WholeLineLogger:
    """Writes each rendered line with one ``os.write``: never two processes' lines mixed."""

    def __init__(self, file: TextIO | None = None) -> None:
        self._file = file or sys.stderr

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "backslashreplace")
        try:
            fd = self._file.fileno()
        except (AttributeError, OSError, ValueError):
            # Not a real file (pytest's capture): one write call is the best there is.
            self._file.write(data.decode("utf-8"))
            self._file.flush()
            return
        self._file.flush()
        while data:
            written = os.write(fd, data)
            data = data[written:]

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class WholeLineLoggerFactory:
    def __init__(self, file: TextIO | None = None) -> None:
        self._file = file

    def __call__(self, *args: Any) -> WholeLineLogger:
        return WholeLineLogger(self._file)


def level_from_env() -> int:
    """``AURA_ES_LOG_LEVEL`` (DEBUG, INFO, WARNING, ERROR); INFO by default."""
    name = os.environ.get("AURA_ES_LOG_LEVEL", "INFO").upper()
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int,
    file: TextIO | None = None, line: str | None = None,
) -> None:
    structlog.get_logger().warning(
        str(message), warning=category.__name__, source=f"{filename}:{lineno}"
    )


def configure(level: int | None = None) -> None:
    global _configured
    if _configured:
        return
    level = level_from_env() if level is None else level
    interactive = sys.stderr.isatty()
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if interactive
        else structlog.processors.JSONRenderer()
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    if not interactive:
        processors.append(fit_line)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=WholeLineLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    warnings.showwarning = _show_warning
    _configured = True


def get_logger(**context: Any) -> Any:
    configure()
    return structlog.get_logger().bind(**context)
