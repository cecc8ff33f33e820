"""Event schemas: a JSON Schema per event type and version, committed under ``schemas/``
(the registry), checked for compatibility in CI, enforced on writes and published to
JetStream for the services on the mesh. docs/schemas.md explains the rules."""

from aura_es.schemas.generate import current_schema, event_classes, payload_version, schema_uri
from aura_es.schemas.modes import Mode

__all__ = ["Mode", "current_schema", "event_classes", "payload_version", "schema_uri"]
