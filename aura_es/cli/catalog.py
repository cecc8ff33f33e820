"""`aura-es catalog validate [PATH]` and `aura-es catalog schema`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer

from aura_es.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from aura_es.cli.common import Json, console, emit_json, handle_errors
from aura_es.projection.engine.loading import check_imports, fingerprint, topic_warnings

catalog_cli = typer.Typer(help="The projection catalog.", no_args_is_help=True)

CatalogPath = Annotated[
    Path,
    typer.Option("--catalog", envvar="AURA_ES_CATALOG", help="The projection catalog file."),
]
DEFAULT_PATH = DEFAULT_CATALOG


def schema_json() -> str:
    return orjson.dumps(Catalog.model_json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n"


@catalog_cli.command("validate")
@handle_errors
def validate(
    path: Annotated[Path | None, typer.Argument(help="Catalog file (default: --catalog)")] = None,
    catalog: CatalogPath = DEFAULT_PATH,
    json: Json = False,
) -> None:
    """Check the catalog: its shape, every handler's import, and the event topics."""
    target = path or catalog
    loaded = load_catalog(target)
    check_imports(loaded.projections)
    warnings = topic_warnings(loaded.projections)
    if json:
        emit_json({
            "catalog": str(target),
            "valid": True,
            "projections": [
                {"name": s.name, "storage": s.storage, "fingerprint": fingerprint(s),
                 "kind": "python" if s.handler else "declarative"}
                for s in loaded.projections
            ],
            "warnings": warnings,
        })
        return
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    typer.echo(f"{target}: {len(loaded.projections)} projections, valid")


@catalog_cli.command("schema")
def schema() -> None:
    """Print the catalog's JSON Schema."""
    typer.echo(schema_json(), nl=False)
