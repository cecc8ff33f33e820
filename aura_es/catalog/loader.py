"""Reads a catalog file into models; every error names the file, line, projection and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aura_es.catalog.model import Catalog
from aura_es.errors import ConfigurationError

DEFAULT_CATALOG = Path("catalog/projection-catalog.yaml")


def load_catalog(path: Path | str = DEFAULT_CATALOG) -> Catalog:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigurationError(f"catalog {path}: cannot read it ({e.strerror})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigurationError(f"catalog {path}{where}: not valid YAML: {problem}") from None
    if root is None:
        raise ConfigurationError(f"catalog {path}: the file is empty")
    _reject_duplicate_keys(path, root)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigurationError(f"catalog {path}:1: expected a mapping with 'projections'")
    try:
        return Catalog.model_validate(data)
    except ValidationError as e:
        raise ConfigurationError(_describe(path, root, data, e)) from None


def _reject_duplicate_keys(path: Path, node: yaml.Node) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            if key.value in seen:
                raise ConfigurationError(
                    f"catalog {path}:{key.start_mark.line + 1}: key {key.value!r} appears twice"
                )
            seen.add(key.value)
            _reject_duplicate_keys(path, value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(path, item)


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
