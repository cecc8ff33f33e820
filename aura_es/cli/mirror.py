"""`aura-es mirror run` and `aura-es mirror verify`."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from aura_es import broker, tables
from aura_es.cli.common import (
    DatabaseUrl,
    Json,
    NatsUrl,
    console,
    emit_json,
    fail,
    handle_errors,
    parse_duration,
    settings,
)
from aura_es.db import connect, hosts_of
from aura_es.errors import AuraError, ServiceUnavailable
from aura_es.mirror import divergence, replication, schema_registry
from aura_es.mirror.relay import Relay
from aura_es.mirror.stream import StreamSettings
from aura_es.mirror.verify import verify as verify_stream
from aura_es.store.factory import wake_interval_from_env

mirror_cli = typer.Typer(help="The JetStream mirror of the event store.", no_args_is_help=True)
Stream = Annotated[str, typer.Option("--stream", help="JetStream stream name.")]
Prefix = Annotated[str, typer.Option("--subject-prefix", help="Subjects: PREFIX.<agg>.<event>.")]


def _settings(stream: str, prefix: str, replicas: int = 1, max_age: str = "") -> StreamSettings:
    age = parse_duration(max_age, "--max-age").total_seconds() if max_age else 0.0
    return StreamSettings(name=stream, subject_prefix=prefix, replicas=replicas,
                          max_age_seconds=age)


@mirror_cli.command("run")
@handle_errors
def run(
    stream: Stream = "AURA_EVENTS",
    subject_prefix: Prefix = "aura.events",
    replicas: Annotated[int, typer.Option("--replicas", help="Stream replicas (1-5).")] = 1,
    max_age: Annotated[str, typer.Option("--max-age", help="e.g. 30d; default: forever")] = "",
    force_pipelined: Annotated[bool, typer.Option(
        "--force-pipelined", help="Use publish_async even where atomic batches work.")] = False,
    database_url: DatabaseUrl = None,
    nats_url: NatsUrl = None,
    schemas_dir: Annotated[Path, typer.Option(
        "--schemas-dir", envvar="AURA_ES_SCHEMAS",
        help="The event schema registry to publish to the AURA_SCHEMAS bucket.")] = Path("schemas"),
    standby_guard: Annotated[bool, typer.Option(
        "--standby-guard/--no-standby-guard",
        help="Publish an event only once every streaming standby has flushed it (so a"
             " failover never leaves the stream ahead of the store).")] = True,
) -> None:
    """Relay every stored event to JetStream, in order, exactly once, until SIGTERM."""
    config = _settings(stream, subject_prefix, replicas, max_age)
    wake_interval_from_env()  # the relay follows the log by it: refused before connecting
    resolved = settings(database_url, nats_url)
    url = resolved.resolved_database_url()
    with connect(url) as conn:
        tables.require_all(conn)
    # Checked once at the start, like the database: a list of servers none of which
    # answers is a wrong URL to report, not an outage to wait out.
    asyncio.run(broker.check(resolved.resolved_nats_url()))
    asyncio.run(divergence.check(url, resolved.resolved_nats_url(), stream))
    if standby_guard:
        lagging = replication.standbys_named_in(hosts_of(url), lambda host, port: connect(
            url, host=host, port=port))
        if lagging:
            raise fail(f"standby {lagging[0]} (named in the database URL) is not streaming"
                       " from the primary: start its replication or leave it out of the URL")
    relay = Relay(url, resolved.resolved_nats_url(), config, force_pipelined=force_pipelined,
                  schemas=schema_registry.local_schemas(schemas_dir),
                  standby_guard=standby_guard)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, relay.stop.set)
        await relay.run()

    asyncio.run(main())
    console.print(f"mirror stopped after publishing {relay.published} events", highlight=False)


@mirror_cli.command("verify")
@handle_errors
def verify(
    stream: Stream = "AURA_EVENTS",
    subject_prefix: Prefix = "aura.events",
    database_url: DatabaseUrl = None,
    nats_url: NatsUrl = None,
    json: Json = False,
) -> None:
    """Compare the stream with the store; exit 1 if any event is missing, doubled or moved."""
    config = _settings(stream, subject_prefix)
    resolved = settings(database_url, nats_url)
    try:
        with console.status("reading the stream and the store…"):
            report = verify_stream(resolved.resolved_database_url(),
                                   resolved.resolved_nats_url(), config)
    except AuraError:
        raise
    except Exception as e:  # the broker's errors (no servers, no stream, not authorised)
        detail = str(e).strip() or "no detail"
        raise ServiceUnavailable(
            f"cannot read stream {stream!r}: {type(e).__name__}: {detail}"
        ) from None
    data = report.as_dict()
    if json:
        emit_json(data)
    else:
        verdict = "OK" if report.ok else "FAILED"
        typer.echo(
            f"{verdict}: {report.stream_messages} messages for {report.stored_events} stored"
            f" events (mirrored up to position {report.mirrored_up_to},"
            f" {report.not_yet_mirrored} not yet mirrored); missing {len(report.missing)},"
            f" duplicated {len(report.duplicated)}, out of order {len(report.out_of_order)},"
            f" different {len(report.different)}, phantoms {len(report.phantoms)}"
        )
        for name in ("missing", "duplicated", "out_of_order", "different", "phantoms"):
            if data[name]:
                typer.echo(f"  {name}: positions {data[name][:50]}")
        if report.foreign_messages:
            typer.echo(f"  warning: {report.foreign_messages} foreign messages on the stream"
                       " (no Aura headers: not published by any store); not compared")
        if report.other_store_messages:
            typer.echo(f"  warning: {report.other_store_messages} messages of other stores"
                       f" on the stream (this store is {report.store}); not compared")
    if not report.ok:
        raise typer.Exit(1)
