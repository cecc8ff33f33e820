"""The committed registry: ``schemas/<topic>/v<N>.json``, one file per event type and
version, reviewed like code. A committed file never changes; a new shape is a new
version (with an upcaster), a deliberate break a new event type."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from aura_es.errors import ConfigurationError
from aura_es.schemas.generate import DIALECT, TOPIC_PATTERN, schema_uri

DEFAULT_DIR = Path("schemas")
_FILE = re.compile(r"^v([1-9][0-9]{0,5})\.json$")
#: Registry files are small; a larger one is not a schema.
MAX_FILE_BYTES = 1_000_000


@dataclass(frozen=True)
class Entry:
    topic: str
    version: int
    schema: dict[str, Any]
    path: Path

    @property
    def uri(self) -> str:
        return schema_uri(self.topic, self.version)


def path_of(root: Path, topic: str, version: int) -> Path:
    return root / topic / f"v{version}.json"


def render(schema: dict[str, Any]) -> str:
    """The one text form of a schema: sorted keys, two-space indent, final newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load(root: Path) -> dict[str, dict[int, Entry]]:
    """Every committed version, by topic then version. A file that is not a valid
    JSON Schema of the registry raises ConfigurationError naming the file and field."""
    found: dict[str, dict[int, Entry]] = {}
    if not root.exists():
        return found
    if not root.is_dir():
        raise ConfigurationError(f"schema registry {root}: not a directory")
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or folder.name.lower() == "readme.md":
            continue
        if not folder.is_dir() or not TOPIC_PATTERN.match(folder.name):
            raise ConfigurationError(
                f"{folder}: not an event topic folder (schemas/<topic>/v<N>.json)")
        for file in sorted(folder.iterdir()):
            entry = _load_file(file, folder.name)
            found.setdefault(entry.topic, {})[entry.version] = entry
    return found


def _load_file(file: Path, topic: str) -> Entry:
    matched = _FILE.match(file.name)
    if not matched or not file.is_file():
        raise ConfigurationError(f"{file}: not a version file (v<N>.json)")
    version = int(matched.group(1))
    if file.stat().st_size > MAX_FILE_BYTES:
        raise ConfigurationError(f"{file}: larger than {MAX_FILE_BYTES:,} bytes")
    try:
        schema = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigurationError(f"{file}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ConfigurationError(f"{file}:{e.lineno}: not valid JSON: {e.msg}") from None
    except RecursionError:
        raise ConfigurationError(f"{file}: nested too deeply") from None
    if not isinstance(schema, dict):
        raise ConfigurationError(f"{file}: a schema must be a JSON object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise ConfigurationError(f"{file}: field {where}: not valid JSON Schema:"
                                 f" {e.message[:200]}") from None
    expected = {"$schema": DIALECT, "$id": schema_uri(topic, version), "title": topic,
                "type": "object"}
    for field, value in expected.items():
        if schema.get(field) != value:
            raise ConfigurationError(
                f"{file}: field {field} is {schema.get(field)!r}, expected {value!r}")
    return Entry(topic, version, schema, file)
