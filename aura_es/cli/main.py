"""The `aura-es` entry point: one Typer app, each command group in its own module."""

from __future__ import annotations

import typer

from aura_es.cli import load, services

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


def main() -> None:
    app()
