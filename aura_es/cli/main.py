"""The `aura-es` entry point: one Typer app, each command group in its own module."""

from __future__ import annotations

import typer

from aura_es.cli import load, replay, services, status
from aura_es.cli.catalog import catalog_cli
from aura_es.cli.dlq import dlq_cli
from aura_es.cli.mirror import mirror_cli
from aura_es.cli.workers import workers_cli

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
app.command("status")(status.status)
app.command("query")(status.query)
app.command("replay")(replay.replay)


def main() -> None:
    app()
