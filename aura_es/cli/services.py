"""`aura-es up`, `down`, `db init` and `idempotency prune`."""

from __future__ import annotations

from pathlib import Path

import typer

from aura_es import embedded, tables
from aura_es.application import EventSourcedApp
from aura_es.cli.common import (
    DatabaseUrl,
    DataDir,
    Json,
    console,
    emit_json,
    handle_errors,
    parse_duration,
    settings,
)
from aura_es.dsn import redact
from aura_es.settings import STATE_FILE

db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
idempotency_cli = typer.Typer(help="Stored idempotency keys.", no_args_is_help=True)


@handle_errors
def up(data_dir: DataDir = Path(".aura"), json: Json = False) -> None:
    """Start (or reuse) the embedded PostgreSQL and nats-server under DATA_DIR."""
    with console.status("starting embedded PostgreSQL and nats-server…"):
        urls = embedded.up(data_dir)
    # The URLs carry the generated NATS credentials: they stay in the state file (readable
    # by its owner only), which every command reads when no URL is set.
    state = (data_dir / STATE_FILE).resolve()
    if json:
        emit_json({"database_url": redact(urls.database_url), "nats_url": redact(urls.nats_url),
                   "state_file": str(state)})
        return
    typer.echo(f"AURA_ES_DATABASE_URL={redact(urls.database_url)}")
    typer.echo(f"AURA_ES_NATS_URL={redact(urls.nats_url)}")
    typer.echo(f"# credentials: {state} (readable by you only); aura-es commands read it")


@handle_errors
def down(data_dir: DataDir = Path(".aura"), json: Json = False) -> None:
    """Stop the embedded services cleanly (their data stays in DATA_DIR)."""
    stopped = embedded.down(data_dir)
    if json:
        emit_json({"stopped": stopped})
        return
    for name, was_running in stopped.items():
        typer.echo(f"{name}: {'stopped' if was_running else 'was not running'}")


@db_cli.command("init")
@handle_errors
def db_init(database_url: DatabaseUrl = None, json: Json = False) -> None:
    """Create every table aura-es needs; running it again changes nothing."""
    url = settings(database_url).resolved_database_url()
    tables.create_all(url)
    if json:
        emit_json({"database_url": redact(url), "initialised": True})
    else:
        typer.echo(f"schema ready in {redact(url)}")


@idempotency_cli.command("prune")
@handle_errors
def prune(
    older_than: str = typer.Option(..., "--older-than", help="e.g. 30d, 12h, 2w"),
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """Forget idempotency keys older than DURATION: retries after that run again."""
    age = parse_duration(older_than, "--older-than")
    app = EventSourcedApp(settings(database_url).resolved_database_url(), pool_size=1)
    deleted = app.prune_idempotency_keys(age)
    app.close()
    if json:
        emit_json({"deleted": deleted, "older_than_seconds": age.total_seconds()})
    else:
        typer.echo(f"deleted {deleted} idempotency keys older than {older_than}")
