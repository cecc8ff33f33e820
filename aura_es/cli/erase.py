"""`aura-es erase SUBJECT --reason R`, `aura-es erase --verify SUBJECT` and
`aura-es erase --reapply`."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from aura_es import broker, tables
from aura_es.application import EventSourcedApp
from aura_es.cli.common import (
    DatabaseUrl,
    Json,
    NatsUrl,
    console,
    emit_json,
    fail,
    handle_errors,
    settings,
)
from aura_es.db import connect
from aura_es.erasure.erase import check_reason
from aura_es.erasure.erase import erase as erase_subject
from aura_es.erasure.reapply import erasures_on_stream
from aura_es.erasure.reapply import reapply as reapply_erasures
from aura_es.erasure.verify import verify as verify_subject
from aura_es.mirror.stream import StreamSettings
from aura_es.store import identity
from aura_es.store.keyring import Keyring


@handle_errors
def erase(
    subject: Annotated[str | None, typer.Argument(
        metavar="SUBJECT", help="The subject's id.")] = None,
    reason: Annotated[str | None, typer.Option(
        "--reason", help="Why (e.g. the request's reference); recorded, never personal.")] = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Search every table and the stream for a copy of the erased"
        " subject's data; exit 1 if one is found.")] = False,
    reapply: Annotated[bool, typer.Option(
        "--reapply", help="After restoring a backup: erase again every subject whose"
        " erasure the stream recorded (no SUBJECT).")] = False,
    stream: Annotated[str, typer.Option("--stream", help="The mirror's stream.")] = "AURA_EVENTS",
    subject_prefix: Annotated[str, typer.Option(
        "--subject-prefix", help="The mirror's subject prefix.")] = "aura.events",
    database_url: DatabaseUrl = None,
    nats_url: NatsUrl = None,
    json: Json = False,
) -> None:
    """Forget a data subject: delete their data key, record the erasure as an event, and
    scrub the dead letters and side effects of their events; after restoring a backup,
    --reapply erases again every subject the stream recorded (docs/erasure.md)."""
    resolved = settings(database_url, nats_url)
    url = resolved.resolved_database_url()
    on_stream = StreamSettings(name=stream, subject_prefix=subject_prefix)

    def nats() -> str | None:
        return resolved.nats_url or resolved.embedded_state().get("nats_url")

    if reapply:
        if subject is not None or reason is not None or verify:
            raise fail("--reapply takes no SUBJECT, --reason or --verify: it erases again"
                       " every subject the stream's erasure events name")
        stream_url = nats()
        if stream_url is None:
            raise fail("--reapply reads the stream: set --nats-url or AURA_ES_NATS_URL")
        _reapply(url, stream_url, on_stream, json)
        return
    if subject is None:
        raise fail("SUBJECT is missing: the id of the data subject to erase")
    if verify:
        _verify(subject, url, nats(), on_stream, json)
        return
    if reason is None:
        raise fail("--reason is missing: say why the subject is erased (e.g. the request's"
                   " reference)")
    check_reason(reason)
    with connect(url) as conn:
        tables.require_all(conn)
    app = EventSourcedApp(url, pool_size=1)
    try:
        done = erase_subject(app, subject, reason)
    finally:
        app.close()
    if json:
        emit_json(done.as_dict())
        return
    if done.already:
        typer.echo(f"subject {subject} was already erased at {done.erased_at:%Y-%m-%d %H:%M:%S}"
                   " UTC: nothing changed")
        return
    typer.echo(f"erased subject {subject}: {done.events} events now read as erased; the"
               f" erasure is event {done.position}; dead letters scrubbed:"
               f" {done.dead_letters_scrubbed}, side effects: {done.side_effects_scrubbed}")


def _reapply(url: str, nats_url: str, stream: StreamSettings, json: bool) -> None:
    with connect(url) as conn:
        tables.require_all(conn)
        store = identity.store_id(conn)
    asyncio.run(broker.check(nats_url))  # one line, not the client's traceback
    with console.status(f"reading stream {stream.name} …"):
        erasures, messages = erasures_on_stream(nats_url, stream, store)
    app = EventSourcedApp(url, pool_size=1)
    try:
        with console.status("erasing …") as status:
            done = reapply_erasures(app, erasures,
                           progress=lambda subject: status.update(f"erasing {subject} …"))
    finally:
        app.close()
    done.messages = messages
    if json:
        emit_json(done.as_dict())
        return
    typer.echo(f"{len(erasures)} erasures on stream {stream.name} ({messages:,} messages):"
               f" erased again {len(done.erased)}, already erased {len(done.already)},"
               f" never stored here {len(done.unknown)}"
               + (f", not subject ids {done.refused}" if done.refused else ""))
    for subject in done.erased:
        typer.echo(f"  erased again: {subject}")


def _verify(subject: str, url: str, nats_url: str | None, stream: StreamSettings,
            json: bool) -> None:
    provider = Keyring.from_env().provider
    if nats_url is not None:
        asyncio.run(broker.check(nats_url))  # one line, not the client's traceback
    with connect(url) as conn:
        tables.require_all(conn)
        with console.status("searching …") as status:
            report = verify_subject(
                conn, provider, subject, nats_url=nats_url,
                stream=stream if nats_url else None,
                progress=lambda where: status.update(f"searching {where} …"))
    if json:
        emit_json(report.as_dict())
    else:
        searched = f"{report.tables} tables ({report.rows:,} rows)"
        if report.messages is not None:
            searched += f" and {report.messages:,} messages of stream {stream.name}"
        if report.ok:
            typer.echo(f"subject {subject}: no copy of their personal data in {searched}")
        else:
            typer.echo(f"subject {subject}: copies of their personal data found in {searched}:")
            for remnant in report.remnants:
                typer.echo(f"  {remnant}")
    if not report.ok:
        raise typer.Exit(1)



