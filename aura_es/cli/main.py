"""The `aura-es` entry point: one Typer app, each command group in its own module."""

from __future__ import annotations

import os
import sys

import typer

from aura_es.cli import erase, load, replay, services, status
from aura_es.cli.catalog import catalog_cli
from aura_es.cli.dlq import dlq_cli
from aura_es.cli.keys import keys_cli
from aura_es.cli.mirror import mirror_cli
from aura_es.cli.schema import schema_cli
from aura_es.cli.workers import workers_cli
from aura_es.dsn import redact

app = typer.Typer(
    name="aura-es",
    help=(
        "Event sourcing on PostgreSQL: idempotent appends, projection workers,"
        " a JetStream mirror."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("up")(services.up)
app.command("down")(services.down)
app.add_typer(services.db_cli, name="db")
app.add_typer(services.idempotency_cli, name="idempotency")
app.command("load")(load.load)
app.add_typer(catalog_cli, name="catalog")
app.add_typer(workers_cli, name="workers")
app.add_typer(dlq_cli, name="dlq")
app.add_typer(mirror_cli, name="mirror")
app.add_typer(schema_cli, name="schema")
app.command("status")(status.status)
app.command("query")(status.query)
app.command("replay")(replay.replay)
app.command("erase")(erase.erase)
app.add_typer(keys_cli, name="keys")


def main(argv: list[str] | None = None) -> None:
    """Runs the CLI. Usage errors (a bad option value, an unknown command) are one line
    on stderr and exit status 2, like every other bad input; no box, no traceback."""
    # The catalog names handlers and event modules by import path (myapp.projections:X):
    # they are imported from the current directory, as `python -m` and uvicorn do.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="aura-es", standalone_mode=False)
    except Exception as e:
        # Click's exceptions (typer vendors its own copy in newer releases, so they are
        # recognised by shape, not by class).
        if type(e).__name__ == "Abort":
            sys.stderr.write("aborted\n")
            sys.exit(130)
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            sys.stdout.write(ctx.get_help() + "\n")
            sys.exit(0)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = " ".join(str(e.format_message()).split())
        sys.stderr.write(redact(f"error: {message}{hint}") + "\n")
        sys.exit(int(e.exit_code))
    sys.exit(code if isinstance(code, int) else 0)
