"""What every command shares: connection options, JSON output, and the exit-2 error path."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import orjson
import psycopg
import typer
from rich.console import Console
from rich.markup import escape

from aura_es import durations
from aura_es.db import first_line
from aura_es.dsn import redact
from aura_es.errors import AuraError
from aura_es.settings import Settings
from aura_es.store.mapper import json_default

P = ParamSpec("P")
R = TypeVar("R")

console = Console(stderr=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", envvar="AURA_ES_DATABASE_URL", help="PostgreSQL URL."),
]
NatsUrl = Annotated[
    str | None, typer.Option("--nats-url", envvar="AURA_ES_NATS_URL", help="NATS URL.")
]
DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir", envvar="AURA_ES_DATA_DIR", help="Where embedded services keep data."
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def settings(database_url: str | None = None, nats_url: str | None = None,
             data_dir: Path | None = None) -> Settings:
    values: dict[str, Any] = {"database_url": database_url, "nats_url": nats_url}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Settings(**{k: v for k, v in values.items() if v is not None})


def fail(message: str, code: int = 2) -> typer.Exit:
    """Prints one line to stderr and returns the exit exception to raise (2: bad input)."""
    line = " ".join(redact(message).split())  # one line, whatever the message quoted
    console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Bad input and unreachable services: one clear line on stderr, exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except AuraError as e:
            raise fail(str(e)) from None
        except psycopg.OperationalError as e:  # the server went away in mid-command
            raise fail(f"the database connection failed: {redact(first_line(e))}") from None

    return wrapper


def emit_json(data: Any) -> None:
    text = orjson.dumps(data, default=json_default, option=orjson.OPT_INDENT_2).decode()
    sys.stdout.write(text + "\n")


def parse_duration(text: str, option: str) -> timedelta:
    try:
        return durations.parse_duration(text)
    except ValueError as e:
        raise AuraError(f"{option}: {e}") from None
