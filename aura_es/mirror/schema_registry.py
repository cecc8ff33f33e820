"""The event schema registry on JetStream: a key-value bucket services fetch schemas from.

Each version is one key, ``<topic>.v<N>`` (see ``key_of``), holding the schema's JSON;
its ``$id`` is the ``dataschema`` URI the version's CloudEvents carry. Entries never
change: a key that already holds a different schema is reported, never overwritten (two
registries disagree about a published version, which a consumer must not guess about).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from aura_es.errors import ConfigurationError
from aura_es.schemas import registry
from aura_es.schemas.generate import current_schema, event_classes, parse_schema_uri

BUCKET = "AURA_SCHEMAS"


def key_of(uri: str) -> str:
    """``urn:aura-es:schema:<topic>:v<N>`` -> ``<topic>.v<N>`` (a KV key)."""
    parsed = parse_schema_uri(uri)
    if parsed is None:
        raise ConfigurationError(f"dataschema {uri!r} is not an aura-es schema URI")
    topic, version = parsed
    return f"{topic}.v{version}"


def local_schemas(root: Path) -> dict[str, dict[str, Any]]:
    """Every version the registry directory holds, plus the current version of each
    loaded event class it lacks (a project without a committed registry), by URI."""
    found = {entry.uri: entry.schema
             for versions in registry.load(root).values() for entry in versions.values()}
    for cls in event_classes().values():
        schema = current_schema(cls)
        found.setdefault(schema["$id"], schema)
    return found


async def publish(js: JetStreamContext, schemas: Mapping[str, dict[str, Any]]
                  ) -> tuple[int, list[str]]:
    """Puts every schema missing from the bucket; returns (added, conflicting keys)."""
    kv = await js.create_key_value(config=KeyValueConfig(
        bucket=BUCKET, history=1, storage=StorageType.FILE,
        description="aura-es event schemas, by <topic>.v<N>"))
    added, conflicts = 0, []
    for uri, schema in sorted(schemas.items()):
        key = key_of(uri)
        value = registry.render(schema).encode()
        try:
            existing = await kv.get(key)
        except KeyNotFoundError:
            existing = None
        if existing is None or existing.value is None:
            await kv.create(key, value)
            added += 1
        elif json.loads(existing.value) != schema:
            conflicts.append(key)
    return added, conflicts


async def fetch(js: JetStreamContext, uri: str) -> dict[str, Any] | None:
    """The schema ``uri`` names, from the bucket; None when the bucket lacks it (the
    relay publishes every schema before the first event naming it). No bucket at all is
    ConfigurationError: a setup problem, not a property of one message."""
    try:
        kv = await js.key_value(BUCKET)
    except BucketNotFoundError:
        raise ConfigurationError(f"no {BUCKET} bucket on this server: run `aura-es mirror"
                                 " run`, which publishes the schemas") from None
    try:
        entry = await kv.get(key_of(uri))
    except KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    schema: dict[str, Any] = json.loads(entry.value)
    return schema

