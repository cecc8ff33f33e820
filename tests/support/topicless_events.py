"""Event classes the write path refuses and `aura-es schema check --module` flags: one
with no topic at all, one that inherits its parent's (two classes, one schema).

Imported only in child processes: once loaded, every ``event_classes()`` call in the
process refuses them, which is the point.

    python -m tests.support.topicless_events DATABASE_URL removed|renamed
tries a command emitting that event and prints the error's class and message.
"""

from __future__ import annotations

import sys
from typing import Any
from uuid import UUID

from aura_es.aggregate import AuraAggregate
from aura_es.application import EventSourcedApp
from aura_es.commands import Create, Update
from aura_es.errors import AuraError
from aura_es.events import AuraCreated, AuraEvent


class WidgetEvent(AuraEvent):
    """A base of other event classes: allowed without a topic of its own."""


class WidgetOpened(AuraCreated):
    TOPIC = "test.widget.opened.v1"
    name: str

    def apply(self, widget: Any) -> None:
        widget.name = self.name


class WidgetRenamed(WidgetEvent):
    TOPIC = "test.widget.renamed.v1"
    name: str

    def apply(self, widget: Any) -> None:
        widget.name = self.name


class WidgetRenamedAgain(WidgetRenamed):
    """Inherits WidgetRenamed's topic."""


class WidgetRemoved(WidgetEvent):
    """No topic at all."""

    def apply(self, widget: Any) -> None:
        widget.removed = True


class Widget(AuraAggregate):
    TYPE = "test.widget"

    def __init__(self) -> None:
        self.name, self.removed = "", False

    @classmethod
    def open(cls, widget_id: UUID, name: str) -> Widget:
        return cls._create(WidgetOpened, id=widget_id, name=name)


def main(database_url: str, which: str) -> int:
    app = EventSourcedApp(database_url)
    try:
        opened = app.execute(Create("open", f"widget-{which}", {"name": "w"},
                                    lambda i: Widget.open(i, "w")))
        change = {"removed": lambda w: w.trigger_event(WidgetRemoved),
                  "renamed": lambda w: w.trigger_event(WidgetRenamedAgain, name="v")}[which]
        try:
            app.execute(Update(which, f"{which}-1", opened.aggregate_id, {}, change))
        except AuraError as e:
            print(f"{type(e).__name__}: {e}")
        print(f"aggregate {opened.aggregate_id}")
        return 0
    finally:
        app.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
