"""The layers of aura-es, and an import check over the source tree (a small AST walk).

Lowest first. A module may import its own layer and the layers below it, never one
above; the packages of one layer that are written ``a | b`` may not import each other.
``aura_es/__init__.py`` (the public surface, re-exporting from every layer) is exempt.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["aura_es.errors", "aura_es.dsn", "aura_es.payload", "aura_es.identifiers",
                    "aura_es.durations", "aura_es.positions", "aura_es.settings", "aura_es.log",
                    "aura_es.retry", "aura_es.db", "aura_es.locks", "aura_es.observability",
                    "aura_es.embedded"]),
    ("store", ["aura_es.store", "aura_es.events", "aura_es.aggregate", "aura_es.mapper",
               "aura_es.application", "aura_es.schemas"]),
    ("catalog", ["aura_es.catalog"]),
    ("projection", ["aura_es.projection"]),
    ("replay | mirror | http", ["aura_es.replay", "aura_es.mirror", "aura_es.http"]),
    ("ops | schema | mesh", ["aura_es.ops", "aura_es.schema", "aura_es.mesh"]),
    ("worker | testing", ["aura_es.worker", "aura_es.testing"]),
    ("the AURA domain", ["aura_es.domain", "aura_es.app", "aura_es.load", "projections"]),
    ("cli", ["aura_es.cli"]),
    ("the AURA application's launchers", ["workers"]),
]
EXEMPT = {"aura_es"}


@dataclass(frozen=True)
class Violation:
    module: str
    imports: str
    why: str

    def __str__(self) -> str:
        return f"{self.module} imports {self.imports}: {self.why}"


def owner(module: str) -> tuple[int, str] | None:
    """(layer index, the package it belongs to) for a module of the project."""
    for index, (_, packages) in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return index, package
    return None


def imports_of(module: str, source: str) -> Iterable[str]:
    package = module if module.endswith("__init__") else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                yield f"{base}.{node.module}" if node.module else base
            elif node.module:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


def check(sources: Mapping[str, str]) -> list[Violation]:
    """Every import in ``sources`` ({module name: source}) that goes against the layers."""
    found: list[Violation] = []
    for module, source in sorted(sources.items()):
        if module.removesuffix(".__init__") in EXEMPT:
            continue
        mine = owner(module)
        if mine is None:
            continue
        for target in set(imports_of(module, source)):
            theirs = owner(target)
            if theirs is None or theirs[1] == mine[1]:
                continue
            if theirs[0] > mine[0]:
                found.append(Violation(module, target, (
                    f"{LAYERS[mine[0]][0]} may not import the layer above it,"
                    f" {LAYERS[theirs[0]][0]}")))
            elif theirs[0] == mine[0] and "|" in LAYERS[mine[0]][0]:
                found.append(Violation(module, target, (
                    f"{mine[1]} and {theirs[1]} are siblings and stay independent")))
    return sorted(set(found), key=str)


def project_sources(root: Path) -> dict[str, str]:
    sources = {}
    for top in ("aura_es", "workers", "projections"):
        for path in (root / top).rglob("*.py"):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            sources[module.removesuffix(".__init__") if path.name == "__init__.py"
                    else module] = path.read_text()
    return sources
