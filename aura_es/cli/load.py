"""`aura-es load`: the deterministic AURA workload, with duplicates."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

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
    rate: float | None = typer.Option(
        None, "--rate", help="Commands per second, open loop (with --duration): reports"
                             " success ratio, latency percentiles and the longest outage."),
    duration: float | None = typer.Option(
        None, "--duration", help="Seconds to send at --rate (1 to 86400)."),
    samples: Annotated[Path | None, typer.Option(
        "--samples", help="With --rate: also write each command's due and finish times"
                          " (monotonic seconds) and error to this CSV file.")] = None,
    profile: str = typer.Option(
        "sustained", "--profile",
        help="With --rate: sustained (the rate), spike (a ramp from 1% to all of it) or"
             " soak (80% of it)."),
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """Send a realistic workload of debates, decisions and LLM calls: a number of
    commands as fast as they go (--commands), or a steady rate (--rate, --duration)."""
    if rate is not None or duration is not None:
        _paced(seed, rate, duration, profile, concurrency, database_url, json, samples)
        return
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


def _paced(seed: int, rate: float | None, duration: float | None, profile: str,
           concurrency: int, database_url: str | None, json: bool,
           samples: Path | None) -> None:
    if rate is None or duration is None:
        raise fail("--rate and --duration go together")
    if not 0.1 <= rate <= 100_000 or rate != rate:
        raise fail(f"--rate must be between 0.1 and 100000 commands/s, got {rate:g}")
    if not 1 <= duration <= 86_400 or duration != duration:
        raise fail(f"--duration must be between 1 and 86400 s, got {duration:g}")
    from aura_es.app import AuraApp
    from aura_es.load import PROFILES, run_paced

    if profile not in PROFILES:
        raise fail(f"--profile must be one of {', '.join(PROFILES)}, got {profile[:40]!r}")
    # Opened before a command is sent: a path that cannot be written is a one-line error
    # with nothing sent, not a lost run.
    try:
        sink = samples.open("w", newline="") if samples is not None else None
    except OSError as e:
        raise fail(f"--samples {samples}: cannot write it ({e.strerror})") from None
    lanes = max(concurrency, 32)
    try:
        app = AuraApp(settings(database_url).resolved_database_url(), pool_size=min(lanes, 16))
    except BaseException:
        if sink is not None:
            sink.close()
        raise
    try:
        with Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=console, disable=json, transient=True,
        ) as progress:
            task = progress.add_task(f"{profile} load at {rate:g}/s",
                                     total=int(rate * duration))
            report = run_paced(app, seed=seed, rate=rate, duration=duration, profile=profile,
                               lanes=lanes, on_progress=lambda n: progress.advance(task, n))
    finally:
        app.close()
    if sink is not None:
        with sink:
            out = csv.writer(sink)
            out.writerow(["due", "finished", "error"])
            out.writerows(report.samples)
    data = report.as_dict()
    if json:
        emit_json(data)
        return
    latency = data["latency_ms"]
    assert isinstance(latency, dict)
    typer.echo(
        f"{data['succeeded']}/{data['sent']} commands succeeded ({data['success_ratio']:.4%});"
        f" latency p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms;"
        f" longest unavailability {data['longest_unavailability_seconds']} s"
        + (f"; errors {data['errors']}" if data["errors"] else ""))
