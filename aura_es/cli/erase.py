"""`aura-es erase SUBJECT --reason R` and `aura-es erase --verify SUBJECT`."""

from __future__ import annotations

from typing import Annotated

import typer

from aura_es import tables
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
from aura_es.erasure.verify import verify as verify_subject
from aura_es.mirror.stream import StreamSettings
from aura_es.store.keyring import Keyring


@handle_errors
def erase(
    subject: Annotated[str, typer.Argument(metavar="SUBJECT", help="The subject's id.")],
    reason: Annotated[str | None, typer.Option(
        "--reason", help="Why (e.g. the request's reference); recorded, never personal.")] = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Search every table and the stream for a copy of the erased"
        " subject's data; exit 1 if one is found.")] = False,
    stream: Annotated[str, typer.Option("--stream", help="The mirror's stream.")] = "AURA_EVENTS",
    subject_prefix: Annotated[str, typer.Option(
        "--subject-prefix", help="The mirror's subject prefix.")] = "aura.events",
    database_url: DatabaseUrl = None,
    nats_url: NatsUrl = None,
    json: Json = False,
) -> None:
    """Forget a data subject: delete their data key, record the erasure as an event, and
    scrub the dead letters and side effects of their events (docs/erasure.md)."""
    resolved = settings(database_url, nats_url)
    url = resolved.resolved_database_url()
    if verify:
        nats = resolved.nats_url or resolved.embedded_state().get("nats_url")
        on_stream = StreamSettings(name=stream, subject_prefix=subject_prefix)
        _verify(subject, url, nats, on_stream, json)
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


def _verify(subject: str, url: str, nats_url: str | None, stream: StreamSettings,
            json: bool) -> None:
    provider = Keyring.from_env().provider
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



