"""The layers of aura-es, and an import check over the source tree (a small AST walk).

The layers are import-linter's (pyproject.toml, checked by `lint-imports` in
scripts/test); this walk reads the same list to show that every module has a layer and
that a wrong import is caught, and checks what import-linter cannot see: the examples
in docs/examples import only the public faces. Lowest first. A module may import its
own layer and the layers below it, never one above; the packages of one layer that are
written ``a | b`` may not import each other. ``aura_es/__init__.py`` (the public
surface, re-exporting from every layer) is exempt.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


def _layers_of_the_contract() -> list[tuple[str, list[str]]]:
    """The first import-linter contract of pyproject.toml (what `lint-imports` checks),
    lowest layer first: this AST check and import-linter read one list."""
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    layers = pyproject["tool"]["importlinter"]["contracts"][0]["layers"]
    return [(layer, [p.strip() for p in layer.split("|")]) for layer in reversed(layers)]


LAYERS: list[tuple[str, list[str]]] = _layers_of_the_contract()
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
    for top in ("aura_es", "workers", "projections", "scripts"):
        for path in (root / top).rglob("*.py"):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            sources[module.removesuffix(".__init__") if path.name == "__init__.py"
                    else module] = path.read_text()
    return sources


#: What users import: the package and the faces of its subpackages (docs/architecture.md).
FACES = frozenset({"aura_es", "aura_es.projection", "aura_es.mesh", "aura_es.http",
                   "aura_es.testing", "aura_es.catalog", "aura_es.db"})


def beyond_the_faces(sources: Mapping[str, str]) -> list[str]:
    """Imports of aura-es internals (anything but a face and its names)."""
    found = []
    for module, source in sorted(sources.items()):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [f"{module} imports {name}" for name in names
                      if name.split(".")[0] == "aura_es" and name not in FACES]
    return found
