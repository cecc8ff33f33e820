"""`aura-es replay NAME`: a zero-downtime rebuild, or a partial replay of some aggregates."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import psycopg
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from aura_es import tables
from aura_es.catalog import load_catalog
from aura_es.catalog.model import ProjectionSpec
from aura_es.cli.catalog import DEFAULT_PATH, CatalogPath
from aura_es.cli.common import (
    DatabaseUrl,
    Json,
    console,
    emit_json,
    fail,
    handle_errors,
    parse_duration,
    settings,
)
from aura_es.db import connect
from aura_es.errors import AuraError
from aura_es.log import get_logger
from aura_es.positions import MAX_POSITION
from aura_es.projection.engine.loading import build, select
from aura_es.replay import Rebuild, plan_rebuild, replay_aggregates
from aura_es.replay.partial import aggregates_in_range, events_of, refusal
from aura_es.replay.rebuild import RebuildProgress
from aura_es.store import eventlog


@handle_errors
def replay(
    projection: Annotated[str, typer.Argument(help="The projection's name in the catalog.")],
    keep_old: Annotated[
        bool, typer.Option("--keep-old", help="Keep the replaced read model's tables.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would happen and how long; change nothing.")
    ] = False,
    aggregate: Annotated[
        list[str] | None,
        typer.Option("--aggregate", help="Rebuild only this aggregate's rows (repeatable)."),
    ] = None,
    from_position: Annotated[
        int | None, typer.Option("--from-position", min=0, max=MAX_POSITION,
                                 help="Aggregates with events from here.")
    ] = None,
    to_position: Annotated[
        int | None, typer.Option("--to-position", min=0, max=MAX_POSITION,
                                 help="… up to here (inclusive).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Aggregates with events at or after: ISO time or 2h/3d ago."),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="… and before: ISO time or 2h/3d ago.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Events per rebuild transaction.")
    ] = None,
    processes: Annotated[
        int | None, typer.Option(
            "--processes", min=1, max=64,
            help="Processes that build a partitioned projection's partitions side by side"
                 " (default: one per core, at most one per partition).")
    ] = None,
    catalog: CatalogPath = DEFAULT_PATH,
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """Rebuild a projection's read model while it keeps serving (blue/green), or only the
    rows of some aggregates (--aggregate, a position or time range)."""
    (spec,) = select(load_catalog(catalog), [projection])
    build(spec)  # a handler that does not import: exit 2 before anything is touched
    aggregates = [_uuid(text) for text in aggregate or []]
    ranged = any(v is not None for v in (from_position, to_position, since, until))
    start, end = _time(since, "--since"), _time(until, "--until")
    if start and end and start >= end:
        raise fail(f"--since {since!r} is not before --until {until!r}")
    if from_position is not None and to_position is not None and from_position > to_position:
        raise fail(f"--from-position {from_position} is after --to-position {to_position}")
    for option, value in (("--from-position", from_position), ("--to-position", to_position)):
        if value is not None and value < 0:
            raise fail(f"{option} {value} is negative")
    if aggregates and ranged:
        raise fail("give --aggregate or a range (--from/--to-position, --since/--until), not both")
    partial = bool(aggregates) or ranged
    if partial and keep_old:
        raise fail("--keep-old is for full rebuilds; a partial replay changes rows in place")
    if partial and (reason := refusal(spec)):
        raise fail(reason)
    with connect(settings(database_url).resolved_database_url()) as conn:
        tables.require_all(conn)
        if partial:
            ids = aggregates or aggregates_in_range(
                conn, spec, from_position=from_position, to_position=to_position,
                since=start, until=end,
            )
            _partial(conn, spec, ids, dry_run=dry_run, json=json, explicit=bool(aggregates))
        elif dry_run:
            plan = plan_rebuild(conn, spec, keep_old=keep_old)
            if json:
                emit_json(plan.as_dict())
            else:
                _print_plan(plan.as_dict())
        else:
            _rebuild(conn, spec, keep_old=keep_old, batch_size=batch_size, json=json,
                     processes=processes or min(spec.partitions, os.cpu_count() or 1),
                     database_url=settings(database_url).resolved_database_url())


def _rebuild(conn: psycopg.Connection[Any], spec: ProjectionSpec, *, keep_old: bool,
             batch_size: int | None, json: bool, processes: int, database_url: str) -> None:
    log = get_logger(component="replay")
    rebuild = Rebuild(conn, spec, keep_old=keep_old, batch_size=batch_size, log=log,
                      processes=processes, database_url=database_url)
    if rebuild.resumed_from:
        console.print(f"resuming generation {rebuild.generation} of {spec.name} from position"
                      f" {rebuild.resumed_from}", highlight=False)
    try:
        with _progress() as bar:
            task = bar.add_task(f"{spec.name} → generation {rebuild.generation}", total=None)

            def show(p: RebuildProgress) -> None:
                bar.update(task, completed=p.done, total=p.total)

            try:
                result = rebuild.run(show)
            except AuraError:
                raise
            except Exception as e:
                raise AuraError(
                    f"rebuild of {spec.name!r} stopped: {type(e).__name__}: {e}; run the same"
                    " command again to resume from its checkpoint"
                ) from None
    finally:
        rebuild.close()
    if json:
        emit_json(result.as_dict())
        return
    typer.echo(
        f"{spec.name}: generation {result.generation} built from {result.events:,} events in"
        f" {result.seconds:.1f} s ({result.events_per_second:,.0f} events/s) and switched at"
        f" position {result.switched_at_position}; readers use {', '.join(result.views)}"
    )
    if result.dropped:
        typer.echo(f"dropped: {', '.join(result.dropped)}")
    if result.kept:
        typer.echo(f"kept: {', '.join(result.kept)}")
    if result.open_dead_letters:
        typer.echo(f"{result.open_dead_letters} open dead letters: see `aura-es dlq list`")


def _partial(conn: psycopg.Connection[Any], spec: ProjectionSpec, ids: list[UUID], *,
             dry_run: bool, json: bool, explicit: bool) -> None:
    if explicit or dry_run:
        with conn.cursor() as cur:
            events = events_of(cur, spec, ids, eventlog.END)
    if explicit:
        known = {e.aggregate_id for e in events}
        missing = [str(i) for i in ids if i not in known]
        if missing:
            raise fail(f"aggregate {missing[0]} has no events that {spec.name!r} reads")
    if dry_run:
        plan = {"projection": spec.name, "aggregates": len(ids), "events": len(events),
                "tables": build(spec).tables()}
        if json:
            emit_json(plan)
        else:
            _print_plan(plan)
        return
    with _progress() as bar:
        task = bar.add_task(f"{spec.name}: aggregates", total=len(ids))
        result = replay_aggregates(
            conn, spec, ids, on_progress=lambda done, _: bar.update(task, completed=done)
        )
    if json:
        emit_json(result.as_dict())
    else:
        typer.echo(f"{spec.name}: rebuilt the rows of {result.aggregates} aggregates from"
                   f" {result.events} events (up to position {result.upto_position}),"
                   f" {result.dead_letters_resolved} dead letters resolved")
        if result.skipped_undecodable:
            console.print(f"[yellow]warning:[/] left {result.skipped_undecodable} aggregates"
                          " as they were: one of their events cannot be decoded (see"
                          " `aura-es dlq list`)", highlight=False)


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "-/s", style="progress.data.speed")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
        MofNCompleteColumn(), _Rate(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console,
    )


def _print_plan(plan: dict[str, object]) -> None:
    for key, value in plan.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        typer.echo(f"{key.replace('_', ' ')}: {'-' if value is None else value}")


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise fail(f"--aggregate {text!r} is not a UUID") from None


def _time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(text, option)
    except AuraError as e:
        if text.strip()[:1].isdigit() and text.strip()[-1:].isalpha():
            raise fail(str(e)) from None  # shaped like a duration: say what is wrong with it
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise fail(
            f"{option} {text!r} is neither an ISO 8601 time nor a duration such as 2h"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
