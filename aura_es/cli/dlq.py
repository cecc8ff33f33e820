"""`aura-es dlq list | show | retry | discard`: the ordered dead-letter queue."""

from __future__ import annotations

from typing import Annotated

import typer

from aura_es import tables
from aura_es.catalog import load_catalog
from aura_es.cli import render
from aura_es.cli.catalog import DEFAULT_PATH, CatalogPath
from aura_es.cli.common import DatabaseUrl, Json, emit_json, fail, handle_errors, settings
from aura_es.db import connect
from aura_es.projection import dlq
from aura_es.projection.engine import retry as dlq_retry
from aura_es.projection.engine.loading import select
from aura_es.projection.state import outbox

RAW_SHOWN = 2000
dlq_cli = typer.Typer(help="The dead-letter queue.", no_args_is_help=True)
Projection = Annotated[str | None, typer.Option("--projection", help="Only this projection.")]


@dlq_cli.command("list")
@handle_errors
def list_(
    projection: Projection = None,
    every: Annotated[bool, typer.Option("--all", help="Also resolved and discarded.")] = False,
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """Open dead letters: the failed event, its error, and how many events wait behind it."""
    with connect(settings(database_url).resolved_database_url()) as conn:
        tables.require_all(conn)
        rows = dlq.listing(conn.cursor(), projection, None if every else dlq.PARKED_STATUS)
    if json:
        emit_json(rows)
        return
    render.rows([{
        "id": r["id"], "projection": r["projection"], "position": r["position"],
        "aggregate": r["aggregate_id"], "topic": r["topic"],
        "error": f"{r['error_type'].rsplit('.', 1)[-1]}: {r['error_message']}",
        "attempts": r["attempts"], "parked": r["parked_events"], "status": r["status"],
    } for r in rows], ["id", "projection", "position", "aggregate", "topic", "error",
                       "attempts", "parked", "status"], title="dead letters")


@dlq_cli.command("show")
@handle_errors
def show(
    dead_letter_id: Annotated[int, typer.Argument(metavar="ID")],
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """One dead letter in full, with its traceback and parked positions."""
    with connect(settings(database_url).resolved_database_url()) as conn:
        tables.require_all(conn)
        row = dlq.get(conn.cursor(), dead_letter_id)
        if row is not None:
            # The event's stored bytes, as they are: what to look at when it does not
            # decode (shown escaped, at most RAW_SHOWN bytes).
            events = dlq.events_of(conn.cursor(), {**row, "parked_positions": []})
            raw = events[0].raw if events else b""
            row["raw_state"] = repr(raw[:RAW_SHOWN])[2:-1] + (
                f"… ({len(raw):,} bytes)" if len(raw) > RAW_SHOWN else "")
    if row is None:
        raise fail(f"no dead letter with id {dead_letter_id}")
    if json:
        emit_json(row)
        return
    for key, value in row.items():
        if key != "traceback":
            typer.echo(f"{key}: {value}")
    typer.echo(row["traceback"])


@dlq_cli.command("retry")
@handle_errors
def retry(
    dead_letter_id: Annotated[int | None, typer.Argument(metavar="[ID]")] = None,
    projection: Projection = None,
    every: Annotated[bool, typer.Option("--all", help="Every open dead letter.")] = False,
    catalog: CatalogPath = DEFAULT_PATH,
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """Re-apply dead letters and their parked events in order (ID, --projection or --all)."""
    if sum(x is not None and x is not False for x in (dead_letter_id, projection, every)) != 1:
        raise fail("name exactly one of: a dead letter ID, --projection P, --all")
    loaded = load_catalog(catalog)
    if projection is not None:
        select(loaded, [projection])
    with connect(settings(database_url).resolved_database_url()) as conn:
        tables.require_all(conn)
        letters = dlq_retry.open_letters(conn, dead_letter_id=dead_letter_id,
                                         projection=projection)
        outcomes = dlq_retry.retry_dead_letters(conn, loaded, letters)
    failed = [o for o in outcomes if not o["applied"] and "skipped" not in o]
    if json:
        emit_json({"retried": len(outcomes), "failed": len(failed), "results": outcomes})
    else:
        typer.echo(f"retried {len(outcomes)} dead letters: {len(outcomes) - len(failed)} applied,"
                   f" {len(failed)} failed again (still parked)")
    if failed:
        raise typer.Exit(1)


@dlq_cli.command("discard")
@handle_errors
def discard(
    dead_letter_id: Annotated[int, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option("--reason", help="Why: kept with the audit record.")] = "",
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """Give up on a dead letter: its events stay unapplied, its aggregate flows again."""
    if not reason.strip():
        raise fail("--reason is required: say why these events are given up")
    with connect(settings(database_url).resolved_database_url()) as conn:
        tables.require_all(conn)
        with conn.transaction():
            cur = conn.cursor()
            row = dlq.get(cur, dead_letter_id, lock=True)
            if row is None:
                raise fail(f"no dead letter with id {dead_letter_id}")
            if row["status"] != dlq.PARKED_STATUS:
                raise fail(f"dead letter {dead_letter_id} is {row['status']}, not open")
            dlq.close(cur, dead_letter_id, dlq.DISCARDED, reason.strip())
    if json:
        emit_json({"id": dead_letter_id, "status": dlq.DISCARDED, "reason": reason.strip()})
    else:
        typer.echo(f"dead letter {dead_letter_id} discarded ({len(row['parked_positions'])}"
                   " parked events with it)")


@dlq_cli.command("side-effects")
@handle_errors
def side_effects(
    projection: Projection = None,
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """Side effects that failed their last retry (dead), with their error."""
    with connect(settings(database_url).resolved_database_url()) as conn:
        tables.require_all(conn)
        dead = outbox.dead(conn, projection)
    if json:
        emit_json([vars(d) for d in dead])
        return
    render.rows([{"id": d.id, "projection": d.projection, "action": d.action,
                  "position": d.position, "attempts": d.attempts, "error": d.last_error}
                 for d in dead], ["id", "projection", "action", "position", "attempts",
                                  "error"], title="dead side effects")


@dlq_cli.command("retry-side-effect")
@handle_errors
def retry_side_effect(
    effect_id: Annotated[int, typer.Argument(metavar="ID")],
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """Run a dead side effect again (its projection's worker runs it at once)."""
    with connect(settings(database_url).resolved_database_url()) as conn:
        tables.require_all(conn)
        dlq_retry.retry_side_effect(conn, effect_id)
    if json:
        emit_json({"id": effect_id, "status": outbox.PENDING})
    else:
        typer.echo(f"side effect {effect_id} queued again")
