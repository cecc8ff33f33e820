"""`aura-es workers run`: the supervisor and its worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aura_es import tables
from aura_es.catalog import load_catalog
from aura_es.cli.catalog import DEFAULT_PATH, CatalogPath
from aura_es.cli.common import DatabaseUrl, console, fail, handle_errors, settings
from aura_es.db import connect
from aura_es.ops.health import DEFAULT_MAX_LAG_SECONDS
from aura_es.ops.status import projection_status
from aura_es.projection.engine.loading import check_imports, select, topic_warnings
from aura_es.projection.state import checkpoints
from aura_es.store.factory import wake_interval_from_env
from aura_es.worker.lease import lease_from_env
from aura_es.worker.shutdown import Shutdown
from aura_es.worker.supervisor import Supervisor

#: Processes per projection on one host (more would only stand by on two cores).
MAX_PROCESSES = 64

workers_cli = typer.Typer(help="Projection worker processes.", no_args_is_help=True)


@workers_cli.command("run")
@handle_errors
def run(
    projection: Annotated[
        list[str] | None,
        typer.Option("--projection", "-p", help="Run only these (repeatable); default all."),
    ] = None,
    catalog: CatalogPath = DEFAULT_PATH,
    poll_seconds: Annotated[
        float, typer.Option("--poll-seconds", min=0.05, max=3600,
                            help="Poll interval when no NOTIFY arrives (0.05 to 3600 s).")
    ] = 1.0,
    rebuild_on_drift: Annotated[
        bool,
        typer.Option(
            "--rebuild-on-drift",
            help="Rebuild (blue/green) every read model built by another definition.",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=0, max=65535,
                     help="Serve /metrics (all workers) and /health on this port."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address for --metrics-port (0.0.0.0: all).")
    ] = "127.0.0.1",
    health_max_lag: Annotated[
        float, typer.Option("--health-max-lag", help="/health is unready past this lag (s).")
    ] = DEFAULT_MAX_LAG_SECONDS,
    processes: Annotated[
        int, typer.Option("--processes", min=1, max=MAX_PROCESSES,
                          help="Worker processes per projection on this host: they share its"
                               " partitions (the rest stand by).")
    ] = 1,
    database_url: DatabaseUrl = None,
) -> None:
    """Run worker processes for each projection until SIGTERM or Ctrl-C."""
    url = settings(database_url).resolved_database_url()
    # The workers read these: a bad value is refused here, in one line, before any starts.
    wake_interval_from_env()
    lease_from_env()
    specs = select(load_catalog(catalog), projection or [])
    if not specs:
        raise fail(f"catalog {catalog} names no projection to run")
    check_imports(specs)  # a handler or exception class that does not import fails here
    for warning in topic_warnings(specs):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    with connect(url) as conn:
        tables.require_all(conn)
        for spec in specs:  # another supervisor's catalog splits it otherwise: refused
            checkpoints.check_layout(conn, spec.name, spec.partitions)
        drifted = [p["projection"] for p in projection_status(conn, specs) if p["drift"]]
    for name in drifted:
        action = "rebuilding it beside the live one" if rebuild_on_drift else (
            f"rebuild it with `aura-es replay {name}` or --rebuild-on-drift")
        console.print(f"[yellow]drift:[/] {name}'s read model was built by another"
                      f" definition; {action}", highlight=False)
    shutdown = Shutdown().install()
    supervisor = Supervisor(
        [s.name for s in specs], catalog=Path(catalog).resolve(), database_url=url,
        shutdown=shutdown, poll_seconds=poll_seconds,
        rebuild=drifted if rebuild_on_drift else (),
        metrics_port=metrics_port, metrics_host=metrics_host, specs=specs,
        max_lag_seconds=health_max_lag, processes=processes,
    )
    raise typer.Exit(supervisor.run())

