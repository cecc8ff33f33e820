"""An event class whose topic cannot name a schema (`aura-es schema check --module`)."""

from __future__ import annotations

from aura_es.events import AuraEvent


class WidgetAdded(AuraEvent):
    TOPIC = "Widget Added"
    name: str
