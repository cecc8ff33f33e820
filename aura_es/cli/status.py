"""`aura-es status [--watch]` and `aura-es query PROJECTION`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import psycopg
import typer
from psycopg import sql
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from aura_es import tables
from aura_es.catalog import load_catalog
from aura_es.cli import render
from aura_es.cli.catalog import DEFAULT_PATH, CatalogPath
from aura_es.cli.common import DatabaseUrl, Json, emit_json, fail, handle_errors, settings
from aura_es.cli.render import Format
from aura_es.db import connect
from aura_es.errors import ServiceUnavailable
from aura_es.ops.status import (
    horizon_status,
    mirror_status,
    partition_status,
    projection_status,
)
from aura_es.projection.engine.loading import build, select
from aura_es.projection.handlers.declarative import DeclarativeProjection
from aura_es.retry import FIXED, until_deadline

T = TypeVar("T")
#: The database is away (a restart, a failover), as opposed to anything being wrong.
_AWAY = (psycopg.OperationalError, ServiceUnavailable)
#: How long `status --watch` waits for a database that went away before its first look.
OUTAGE_PATIENCE_SECONDS = 60.0
_COLOUR = {"running": "green", "standby": "yellow", "stopped": "red", "paused": "red",
           "breaker_open": "red"}


def _table(rows: list[dict[str, Any]], wide: bool = False) -> Table:
    """80 columns: state, lag, dead letters and what needs attention; ``wide``: all."""
    table = Table(title="aura-es projections", title_justify="left")
    titles = (
        ("projection", "state", "checkpoint/head", "lag", "lag s", "ev/s", "worker",
         "breaker", "DLQ", "gen", "drift", "last error") if wide
        else ("projection", "state", "lag", "DLQ", "attention")
    )
    for title in titles:
        render.header_column(table, title)
    for row in rows:
        state = f"[{_COLOUR[row['state']]}]{row['state']}[/]"
        if not wide:
            table.add_row(_name(row), state,
                          f"{row['lag_events']} ({row['lag_seconds']:g} s)",
                          _dead_letters(row), _attention(row))
            continue
        worker = f"{row['pid']}@{row['host']}" if row["pid"] else ""
        if row["active_workers"] > 1:
            worker = f"{row['active_workers']} workers"
        if row["standbys"]:
            worker += f" +{row['standbys']} standby"
        table.add_row(
            _name(row), state,
            f"{row['checkpoint']}/{row['head']}", str(row["lag_events"]),
            f"{row['lag_seconds']:g}", f"{row['events_per_second']:g}", worker,
            _breaker(row["breaker"], row["next_probe_seconds"]), _dead_letters(row),
            _generation(row),
            "[red]yes[/]" if row["drift"] else "no", escape(row["last_error"] or ""),
        )
    return table


def _name(row: dict[str, Any]) -> str:
    name, split = str(row["projection"]), int(row["partitions"])
    return name + (f" ({split} partitions)" if split > 1 else "")


def _partition_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="aura-es partitions", title_justify="left")
    for title in ("projection", "partition", "owner", "epoch", "checkpoint", "lag"):
        render.header_column(table, title)
    for row in rows:
        if row["owner"] is None:
            owner = "[red]none[/]"
        elif row["owner_alive"]:
            owner = f"{row['pid']}@{row['host']}"
        else:
            owner = f"[red]{row['pid'] or '?'}@{row['host'] or '?'} (gone)[/]"
        table.add_row(row["projection"], f"{row['partition']}/{row['partitions']}", owner,
                      str(row["epoch"]), str(row["checkpoint"]), str(row["lag_events"]))
    return table


def _attention(row: dict[str, Any]) -> str:
    """What a narrow status must still say: breaker, rebuild, drift, last error."""
    notes = []
    if row["breaker"] and row["breaker"] != "closed":
        notes.append(f"breaker {_breaker(row['breaker'], row['next_probe_seconds'])}")
    if row["rebuild"] is not None:
        notes.append(f"rebuilding gen {_generation(row)}")
    if row["drift"]:
        notes.append("[red]drift[/]")
    if row["side_effects_dead"]:
        notes.append(f"[red]{row['side_effects_dead']} dead side effects[/]")
    if row["last_error"] and row["last_error_current"]:
        notes.append(escape(row["last_error"]))
    return "; ".join(notes) or "-"


def _generation(row: dict[str, Any]) -> str:
    rebuild = row["rebuild"]
    if rebuild is None:
        return str(row["generation"])
    return (f"{row['generation']} [cyan]→ {rebuild['generation']}[/]"
            f" ({rebuild['position']}/{row['head']})")


def _breaker(state: str | None, next_probe: float | None = None) -> str:
    if state is None:
        return ""
    if state == "open" and next_probe is not None:
        return f"[red]open[/], next probe in {next_probe:.0f} s"
    return state if state == "closed" else f"[red]{state}[/]"


def _dead_letters(row: dict[str, Any]) -> str:
    if not row["dead_letters"]:
        return "0"
    return f"[red]{row['dead_letters']}[/] (+{row['parked_events']})"


class _Reader:
    """The watch's connection: lost to an outage, it is made again at the next look."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = connect(url)

    def _look(self, look: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``look`` on a live connection (made again if the last one was lost)."""
        try:
            if self.conn.closed or self.conn.broken:
                self.conn = connect(self.url)
            return look(self.conn)
        except _AWAY:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            raise

    def read(self, look: Callable[[psycopg.Connection[Any]], T], last: T) -> T:
        """``look``; while the database is away, ``last``."""
        try:
            return self._look(look)
        except _AWAY:
            return last

    def first(self, look: Callable[[psycopg.Connection[Any]], T], *, patient: bool) -> T:
        """The first look: a watch waits out an outage (up to a minute), a single look
        reports it."""
        return until_deadline(OUTAGE_PATIENCE_SECONDS if patient else 0.0,
                              lambda: self._look(look),
                              lambda e: isinstance(e, _AWAY), FIXED)

    def close(self) -> None:
        self.conn.close()


@handle_errors
def status(
    catalog: CatalogPath = DEFAULT_PATH,
    watch: Annotated[bool, typer.Option("--watch", help="Redraw every second.")] = False,
    until_caught_up: Annotated[
        bool, typer.Option("--until-caught-up", help="With --watch: stop when no lag is left.")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="With --watch: give up after.")] = 0,
    wide: Annotated[bool, typer.Option(
        "--wide", help="Every column: checkpoint, rate, worker, breaker, generation.")] = False,
    partitions: Annotated[bool, typer.Option(
        "--partitions", help="Also each partition: its owner, epoch, checkpoint and lag.")
    ] = False,
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """Per projection: state, lag, dead letters and what needs attention (fits 80
    columns); --wide adds checkpoint, events/s, worker, breaker, generation, drift;
    --partitions lists every partition."""
    specs = load_catalog(catalog).projections
    out = render.console()
    # Redrawn in place on a terminal; a pipe or a log gets the final table once.
    live = watch and out.is_terminal and not json
    url = settings(database_url).resolved_database_url()
    reader = _Reader(url)
    with contextlib.closing(reader):
        def first_look(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            tables.require_all(conn)
            return projection_status(conn, specs)

        rows = reader.first(first_look, patient=watch)
        if watch:
            deadline = time.monotonic() + timeout if timeout else None
            with Live(_table(rows, wide), console=out, auto_refresh=False,
                      transient=True) if live else contextlib.nullcontext() as screen:
                while not (until_caught_up and all(r["lag_events"] == 0 for r in rows)):
                    if deadline and time.monotonic() > deadline:
                        raise fail(f"projections did not catch up within {timeout:g}s")
                    time.sleep(1)
                    # A failover or a restart while watching: the next look reconnects
                    # (to the new primary of a multi-host URL) instead of ending.
                    rows = reader.read(lambda c: projection_status(c, specs), rows)
                    if screen is not None:
                        screen.update(_table(rows, wide), refresh=True)
        no_mirrors: list[dict[str, Any]] = []
        mirrors = reader.read(mirror_status, no_mirrors)
        horizon = reader.read(horizon_status, {"horizon": None, "held_back": None})
        no_partitions: list[dict[str, Any]] = []
        parts = reader.read(lambda c: partition_status(c, specs),
                            no_partitions) if partitions else no_partitions
    if json:
        emit_json({"projections": rows, "mirror": mirrors, "horizon": horizon}
                  | ({"partitions": parts} if partitions else {}))
        return
    if wide:
        render.print_whole(_table(rows, wide), out)
    else:
        out.print(_table(rows, wide))
    if partitions:
        out.print(_partition_table(parts))
    held = horizon["held_back"]
    if held:
        out.print(
            f"[yellow]readers held back[/] {held['seconds']:g} s by the {held['kind']} of"
            f" pid {held['pid']} (database {held['database']},"
            f" application {held['application_name'] or '-'}, since {held['started_at']}):"
            " nothing it could precede is read until it ends")
    for m in mirrors:
        out.print(
            f"mirror {m['stream']}: position {m['position']} (stream seq {m['stream_seq']}),"
            f" lag {m['lag_events']} events / {m['lag_seconds']:g} s", highlight=False,
        )


@handle_errors
def query(
    projection: Annotated[str, typer.Argument(help="The projection's name in the catalog.")],
    key: Annotated[str | None, typer.Option("--key", help="Only the row with this key.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1_000_000, help="At most this many rows.")
    ] = 20,
    window: Annotated[
        bool, typer.Option("--window", help="A sliding-window projection: the current window.")
    ] = False,
    fmt: Annotated[Format, typer.Option(
        "--format", help="auto: a table when it fits the width, records when not.",
    )] = Format.AUTO,
    catalog: CatalogPath = DEFAULT_PATH,
    database_url: DatabaseUrl = None,
    json: Json = False,
) -> None:
    """Print a projection's rows, whole (never cut to fit)."""
    (spec,) = select(load_catalog(catalog), [projection])
    handler = build(spec)
    if window and not (isinstance(handler, DeclarativeProjection) and handler.window_seconds):
        raise fail(f"projection {projection!r} has no windowing")
    with connect(settings(database_url).resolved_database_url()) as conn:
        source: sql.Composable = handler.table
        params: list[Any] = []
        if window:
            assert isinstance(handler, DeclarativeProjection) and spec.windowing
            source = sql.SQL("({}) AS w").format(handler.sliding_query())
            params.append(f"{spec.windowing.seconds} seconds")
        if conn.execute("SELECT to_regclass(%s)", (spec.storage,)).fetchone() == (None,):
            raise fail(f"projection {projection!r} has no table yet: run `aura-es workers run`")
        columns = [d.name for d in conn.execute(
            sql.SQL("SELECT * FROM {} LIMIT 0").format(handler.table)).description or []]
        # Rows in key order; a handler whose table has no such column is ordered by its
        # first column, and cannot be asked for one key.
        known = handler.key_column in columns
        key_column = sql.Identifier(handler.key_column if known else columns[0])
        where: sql.Composable = sql.SQL("")
        if key is not None:
            if not known:
                raise fail(f"projection {projection!r}: its table has no column"
                           f" {handler.key_column!r} to look --key up by (set key_column on"
                           " the handler class)")
            where = sql.SQL(" WHERE {}::text = %s").format(key_column)
            params.append(key)
        cur = conn.execute(
            sql.SQL("SELECT * FROM {} {} ORDER BY {} LIMIT %s").format(source, where, key_column),
            [*params, limit],
        )
        names = [d.name for d in cur.description or []]
        # Bookkeeping columns (``<field>__pos``) are aura-es's, not the user's model.
        rows = [
            {k: v for k, v in zip(names, r, strict=True) if "__" not in k}
            for r in cur.fetchall()
        ]
        names = [n for n in names if "__" not in n]
    chosen = Format.JSON if json else fmt
    render.rows(rows, names, title=f"{projection} ({spec.storage})", fmt=chosen)
