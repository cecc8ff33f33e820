"""Reads a catalog file into models; every error names the file, line, projection and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aura_es.catalog.model import Catalog
from aura_es.errors import ConfigurationError
from aura_es.imports import import_named

DEFAULT_CATALOG = Path("catalog/projection-catalog.yaml")
MAX_CATALOG_BYTES = 10_000_000
MAX_CATALOG_NODES = 100_000


def load_catalog(path: Path | str = DEFAULT_CATALOG) -> Catalog:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CATALOG_BYTES:
            raise ConfigurationError(
                f"catalog {path}: larger than {MAX_CATALOG_BYTES:,} bytes; is it a catalog?"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigurationError(f"catalog {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"catalog {path}: not UTF-8 text") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            raise ConfigurationError(f"catalog {path}: the file is empty")
        _reject_duplicate_keys(path, root, [0])
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigurationError(f"catalog {path}{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigurationError(f"catalog {path}: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"catalog {path}:1: expected a mapping with 'projections'")
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as e:
        raise ConfigurationError(_describe(path, root, data, e)) from None
    import_event_modules(path, catalog.event_modules)
    return catalog


def import_event_modules(path: Path, modules: list[str]) -> None:
    """Imports the modules that define the catalog's event classes (their topics, their
    schemas): the framework itself imports no application's events."""
    for name in modules:
        import_named(name, f"catalog {path}: event_modules")


def _reject_duplicate_keys(path: Path, node: yaml.Node, visited: list[int]) -> None:
    """Refuses a key given twice, and a document that aliases expand beyond
    ``MAX_CATALOG_NODES`` values (a few anchors can otherwise stand for billions)."""
    visited[0] += 1
    if visited[0] > MAX_CATALOG_NODES:
        raise ConfigurationError(
            f"catalog {path}: more than {MAX_CATALOG_NODES:,} values once its aliases"
            " are expanded"
        )
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            if isinstance(key.value, str) and key.value in seen:
                raise ConfigurationError(
                    f"catalog {path}:{key.start_mark.line + 1}: key {key.value!r} appears twice"
                )
            if isinstance(key.value, str):
                seen.add(key.value)
            _reject_duplicate_keys(path, value, visited)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(path, item, visited)


def _describe(path: Path, root: yaml.Node, data: dict[str, Any], error: ValidationError) -> str:
    first = error.errors()[0]
    loc = [part for part in first["loc"] if not str(part).startswith("function-")]
    line = _line_of(root, loc)
    where = f"{path}:{line}" if line else str(path)
    subject = ""
    field = loc
    if len(loc) >= 2 and loc[0] == "projections" and isinstance(loc[1], int):
        projections = data.get("projections") or []
        name = None
        if loc[1] < len(projections) and isinstance(projections[loc[1]], dict):
            name = projections[loc[1]].get("name")
        subject = f"projection {name!r}: " if name else f"projection #{loc[1] + 1}: "
        field = loc[2:]
    dotted = ".".join(str(p) for p in field)
    message = first["msg"].removeprefix("Value error, ")
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"catalog {where}: {subject}{dotted + ': ' if dotted else ''}{message}{suffix}"


def _line_of(node: yaml.Node, loc: list[Any]) -> int | None:
    """The 1-based line of the deepest node along ``loc`` that the file has."""
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int)
            and part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line
