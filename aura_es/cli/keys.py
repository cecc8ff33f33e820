"""`aura-es keys rotate`: re-wrap the data keys under the current master key."""

from __future__ import annotations

from dataclasses import asdict

import typer

from aura_es import tables
from aura_es.cli.common import DatabaseUrl, Json, emit_json, handle_errors, settings
from aura_es.db import connect
from aura_es.erasure.rotate import rotate as rotating
from aura_es.store.keyring import Keyring

keys_cli = typer.Typer(help="The master key and the subjects' data keys.",
                       no_args_is_help=True)


@keys_cli.command("rotate")
@handle_errors
def rotate(database_url: DatabaseUrl = None, json: Json = False) -> None:
    """Re-wrap every data key and erasure proof under AURA_ES_MASTER_KEY (the earlier
    keys, in AURA_ES_PREVIOUS_MASTER_KEYS, open them); no event is re-encrypted."""
    provider = Keyring.from_env().provider
    with connect(settings(database_url).resolved_database_url()) as conn:
        tables.require_all(conn)
        done = rotating(conn, provider)
    if json:
        emit_json(asdict(done))
        return
    typer.echo(f"re-wrapped {done.data_keys} data keys and {done.proofs} erasure proofs under"
               f" master key {done.master_key_id}")
