"""`aura-es load`: the deterministic AURA workload, with duplicates."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from aura_es.cli.common import DatabaseUrl, Json, console, emit_json, fail, handle_errors, settings


@handle_errors
def load(
    seed: int = typer.Option(1, "--seed", help="Same seed, same commands and keys."),
    commands: int = typer.Option(1000, "--commands", help="Commands to send (before duplicates)."),
    duplicate_rate: float = typer.Option(
        0.1, "--duplicate-rate", help="Share of commands re-sent with the same key (0..1)."
    ),
    concurrency: int = typer.Option(4, "--concurrency", help="Threads sending commands."),
    batch_size: int = typer.Option(
        1, "--batch-size", help="Scenarios a thread runs side by side, one transaction a wave."
    ),
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """Send a realistic workload of debates, decisions and LLM calls."""
    if commands < 1:
        raise fail(f"--commands must be >= 1, got {commands}")
    if not 0.0 <= duplicate_rate <= 1.0:
        raise fail(f"--duplicate-rate must be between 0 and 1, got {duplicate_rate}")
    if concurrency < 1 or batch_size < 1:
        raise fail("--concurrency and --batch-size must be >= 1")
    # The AURA demo is loaded by this command alone: no other command registers its topics.
    from aura_es.app import AuraApp
    from aura_es.load import run_load

    app = AuraApp(settings(database_url).resolved_database_url(), pool_size=concurrency * 2)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, disable=json, transient=True,
    ) as progress:
        expected = int(commands * (1 + duplicate_rate))
        task = progress.add_task("sending commands", total=expected)
        report = run_load(
            app, seed=seed, commands=commands, duplicate_rate=duplicate_rate,
            concurrency=concurrency, batch_size=batch_size,
            on_progress=lambda n: progress.advance(task, n),
        )
    app.close()
    data = report.as_dict()
    if json:
        emit_json(data)
        return
    typer.echo(
        f"sent {data['commands_sent']} commands ({data['duplicates_sent']} re-sent): "
        f"stored {data['events_stored']} events, absorbed {data['duplicates_absorbed']} "
        f"duplicates, {data['events_per_second']} events/s"
    )
