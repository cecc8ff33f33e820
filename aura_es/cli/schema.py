"""`aura-es schema export | check | list`: the event schema registry (docs/schemas.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from aura_es.catalog import DEFAULT_CATALOG, load_catalog
from aura_es.catalog.model import EventTypeSpec
from aura_es.cli import render
from aura_es.cli.common import Json, emit_json, fail, handle_errors
from aura_es.errors import ConfigurationError
from aura_es.imports import import_named
from aura_es.schemas import check as checking
from aura_es.schemas import registry
from aura_es.schemas.generate import current_schema, event_classes, payload_version
from aura_es.schemas.modes import Mode, mode_for

schema_cli = typer.Typer(help="Event schemas: the registry under schemas/.",
                         no_args_is_help=True)

SchemaDir = Annotated[Path, typer.Option("--dir", envvar="AURA_ES_SCHEMAS",
                                         help="The registry directory.")]
Modules = Annotated[list[str] | None, typer.Option(
    "--module", help="A module defining event classes to import first (repeatable),"
                     " besides the catalog's event_modules.")]


def _classes(modules: list[str] | None) -> dict[str, type]:
    for name in modules or []:
        import_named(name, "--module")
    return event_classes()


def _existing(directory: Path) -> Path:
    """The registry to read: a directory that is not there is a typo, not an empty one."""
    if not directory.is_dir():
        raise ConfigurationError(f"schema registry {directory}: no such directory (`aura-es"
                                 " schema export --dir` creates it)")
    return directory


OptionalCatalog = Annotated[Path | None, typer.Option(
    "--catalog", envvar="AURA_ES_CATALOG",
    help="The projection catalog whose `events:` set compatibility modes (default:"
         f" {DEFAULT_CATALOG} when it exists; without one, every type has the default mode).")]


def _event_specs(catalog: Path | None) -> dict[str, EventTypeSpec]:
    """The catalog's ``events:``. A catalog named explicitly must exist; the default one
    is read only where it is (outside a project there is none, and none is needed)."""
    if catalog is None:
        if not DEFAULT_CATALOG.is_file():
            return {}
        catalog = DEFAULT_CATALOG
    return dict(load_catalog(catalog).events)


def _modes(specs: dict[str, EventTypeSpec], classes: dict[str, type]) -> dict[str, Mode]:
    """Every loaded type's mode, from the catalog's ``events:`` (defaults for the rest)."""
    for topic in specs:
        if topic not in classes:
            raise ConfigurationError(f"catalog events: {topic!r} is not the topic"
                                     " of any loaded event class")
    return {topic: mode_for(spec.compatibility, spec.published) if (spec := specs.get(topic))
            else mode_for(None, True) for topic in classes}


@schema_cli.command("export")
@handle_errors
def export(directory: SchemaDir = registry.DEFAULT_DIR, catalog: OptionalCatalog = None,
           module: Modules = None, json: Json = False) -> None:
    """Write the schema of every event class's current version that is not yet in the
    registry. A committed version is never overwritten (exit 1 if the class differs)."""
    _event_specs(catalog)  # imports the catalog's event_modules
    classes = _classes(module)
    committed = registry.load(directory)
    written: list[str] = []
    differs: list[str] = []
    for topic, cls in classes.items():
        checking.require_upcasters(cls, topic)
        version = payload_version(cls)
        text = registry.render(current_schema(cls))
        existing = committed.get(topic, {}).get(version)
        if existing is not None:
            if registry.render(existing.schema) != text:
                differs.append(str(existing.path))
            continue
        path = registry.path_of(directory, topic, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # never a half-written schema
        written.append(str(path))
    if json:
        emit_json({"written": written, "differs": differs})
    else:
        for name in written:
            typer.echo(f"wrote {name}")
        if not written:
            typer.echo(f"{directory}: every current version is already registered")
    if differs:
        raise fail(f"{differs[0]}: the class's shape differs from this committed version"
                   " (never overwritten: raise class_version and add an upcaster)"
                   + (f"; and {len(differs) - 1} more" if len(differs) > 1 else ""),
                   code=1)


@schema_cli.command("check")
@handle_errors
def check(directory: SchemaDir = registry.DEFAULT_DIR, catalog: OptionalCatalog = None,
          module: Modules = None, json: Json = False) -> None:
    """Exit 1 when a change breaks the registry's rules or a compatibility mode."""
    specs = _event_specs(catalog)  # first: the catalog names the modules to import
    classes = _classes(module)
    report = checking.check(_existing(directory), classes, _modes(specs, classes))
    if json:
        emit_json({"ok": report.ok, "findings": [str(f) for f in report.findings],
                   "checked": report.checked, "notes": report.notes})
    else:
        for note in report.notes:
            typer.echo(f"note: {note}")
        for finding in report.findings:
            typer.echo(f"incompatible: {finding}", err=True)
        if report.ok:
            versions = sum(len(t["versions"]) for t in report.checked.values())
            typer.echo(f"{directory}: {len(report.checked)} event types, {versions}"
                       " versions, compatible")
    if not report.ok:
        raise typer.Exit(1)


@schema_cli.command("list")
@handle_errors
def list_(directory: SchemaDir = registry.DEFAULT_DIR, catalog: OptionalCatalog = None,
          module: Modules = None, json: Json = False) -> None:
    """Each event type: its versions, compatibility mode and whether it is published."""
    specs = _event_specs(catalog)
    committed = registry.load(_existing(directory))
    classes = _classes(module)
    modes = _modes(specs, classes)
    rows: list[dict[str, Any]] = []
    for topic, cls in classes.items():
        spec = specs.get(topic)
        rows.append({
            "topic": topic, "versions": sorted(committed.get(topic, {})),
            "writes": payload_version(cls), "mode": modes[topic].value,
            "published": spec.published if spec is not None else True,
        })
    if json:
        emit_json({"event_types": rows})
        return
    render.rows([{
        "event type": row["topic"],
        "versions": ", ".join(f"v{v}" for v in row["versions"]) or "-",
        "writes": f"v{row['writes']}", "mode": row["mode"],
        "published": "yes" if row["published"] else "no",
    } for row in rows], ["event type", "versions", "writes", "mode", "published"],
        title="event types")
