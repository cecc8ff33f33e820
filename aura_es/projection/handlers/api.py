"""The Python projection API: a handler gets a batch of events and a transaction.

Subclass ``Projection``; either override ``handle`` to work on the whole batch (the fast
way: one statement per batch), or decorate per-event methods with ``@on(topic)``. Use
``self.table`` (and ``self.aux_table(...)``) for every table you write: replay builds
the next version of the read model under other names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from uuid import UUID, uuid4

import orjson
import psycopg
from prometheus_client.core import GaugeMetricFamily
from psycopg import sql

from aura_es import identifiers
from aura_es import payload as payload_rules
from aura_es.catalog.model import ProjectionSpec
from aura_es.projection.handlers import actions
from aura_es.projection.state import outbox
from aura_es.store.envelope import EventEnvelope

F = TypeVar("F", bound=Callable[..., Any])


def on(*topics: str) -> Callable[[F], F]:
    """Marks a method ``(self, event: EventEnvelope, tx: Tx) -> None`` as the handler of topics."""

    def mark(method: F) -> F:
        method.__aura_topics__ = topics  # type: ignore[attr-defined]
        return method

    return mark


@dataclass
class Tx:
    """The batch's transaction: read-model writes here commit with the checkpoint."""

    cursor: psycopg.Cursor[Any]
    replaying: bool = False
    #: The checkpoint the batch belongs to (its side effects are dispatched for it).
    projection: str = ""
    #: Side effects recorded in this transaction.
    side_effects: int = 0
    _keys: dict[str, int] = field(default_factory=dict)

    def execute(self, query: sql.Composable | str, params: Any = None) -> psycopg.Cursor[Any]:
        return self.cursor.execute(query, params)  # type: ignore[arg-type]

    def side_effect(
        self, action: str, payload: dict[str, Any], *, event: EventEnvelope | None = None,
    ) -> None:
        """Asks for the registered ``action`` (see ``side_effect_action``) to run with
        ``payload`` once this batch has committed; never while replaying.

        Recorded in this transaction, so it is never lost (a crash after the commit runs
        it on restart) and never run for a batch that rolled back. The receiver gets an
        idempotency key made of ``event``'s id and the action, the same on every retry.
        """
        if self.replaying:
            return
        actions.get(action)  # an unknown action fails the batch now, not the dispatcher later
        encoded = payload_rules.encode(payload, f"side effect {action!r}")
        if event is None:  # not tied to an event: a key of its own, kept in its row
            key = f"{self.projection}:{action}:{uuid4()}"
        else:
            base = f"{event.event_id or f'{event.aggregate_id}:{event.version}'}:{action}"
            seen = self._keys.get(base, 0)
            self._keys[base] = seen + 1
            key = base if seen == 0 else f"{base}:{seen}"
        outbox.record(self.cursor, self.projection, event.position if event else None, key,
                      action, orjson.loads(encoded))
        self.side_effects += 1


class Projection:
    """Base class of the Python projections the catalog names with ``handler:``."""

    #: Bump when the handler's logic changes: it is part of the drift fingerprint.
    version: ClassVar[str] = "1"
    #: The column ``aura-es query --key`` filters on.
    key_column: ClassVar[str] = "id"
    #: False: every sealed personal field of a batch is opened before ``handle`` (a seal
    #: that fails authentication is dead-lettered at once, without a retry). True: each
    #: event's are opened when one of them is first read (``event.payload``, or
    #: ``event.value("payload.<personal field>")``), still in the batch's transaction, and
    #: a failing seal is a failure of the batch like any other. A handler that reads few
    #: of its events' personal fields pays for those only (docs/erasure.md).
    opens_on_read: ClassVar[bool] = False
    _handlers: ClassVar[dict[str, Callable[..., None]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[str, Callable[..., None]] = {}
        for klass in reversed(cls.__mro__):
            for attribute in vars(klass).values():
                for topic in getattr(attribute, "__aura_topics__", ()):
                    handlers[topic] = attribute
        cls._handlers = handlers

    def __init__(self, spec: ProjectionSpec, storage: str | None = None) -> None:
        self.spec = spec
        self.storage = storage or spec.storage

    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(self.storage)

    def aux_table(self, suffix: str) -> sql.Identifier:
        return sql.Identifier(self.aux_name(suffix))

    def aux_name(self, suffix: str) -> str:
        """The name of the auxiliary table ``suffix`` (``<storage>__<suffix>``)."""
        return identifiers.aux_table(self.storage, suffix)

    def tables(self) -> list[str]:
        """Every table this projection writes (created by ``create``)."""
        return [self.storage]

    def stable_tables(self) -> list[str]:
        """The names readers use for ``tables()``, in the same order: the catalog's
        ``storage`` and its auxiliaries, whichever generation this object writes."""
        return type(self)(self.spec).tables()

    def create(self, tx: Tx) -> None:
        """Creates the read-model tables if they do not exist."""
        raise NotImplementedError

    def forget(self, tx: Tx, aggregate_ids: Sequence[UUID]) -> None:
        """Deletes the rows these aggregates' events made, so a partial replay can fold
        them again. Only projections whose rows are each made by one aggregate
        (``update_strategy: event_sourced``) can do this; override to enable it."""
        raise NotImplementedError

    def partial_replay_refusal(self) -> str | None:
        """Why a partial replay cannot rebuild this projection's rows, or None."""
        if self.spec.update_strategy != "event_sourced":
            return (
                f"projection {self.spec.name!r} has update_strategy"
                f" {self.spec.update_strategy}: its rows combine events of many aggregates,"
                f" so only a full `aura-es replay {self.spec.name}` can rebuild them"
            )
        if type(self).forget is Projection.forget:
            return (
                f"projection {self.spec.name!r}: its handler does not implement forget(),"
                " so its rows cannot be rebuilt one aggregate at a time"
            )
        return None

    def gauges(self, conn: psycopg.Connection[Any]) -> Iterator[GaugeMetricFamily]:
        """Prometheus gauges about this read model, read at each scrape of `/metrics`
        (e.g. how many debates are open). None by default; a gauge's name should start
        with ``aura_``. Read the stable name (``self.table``): it always serves."""
        return iter(())

    def erase_subject(self, tx: Tx, subject: str) -> None:
        """Clears what this read model kept of ``subject``'s personal fields, in the batch
        that applies their erasure (docs/erasure.md). Events read after it already hold
        the erased placeholder. A projection that keeps no personal field needs nothing;
        one that copies ``text`` somewhere sets it to ``"[erased]"`` here (the value a
        rebuild folds, so a replay equals the live read model)."""

    def handle(self, batch: Sequence[EventEnvelope], tx: Tx) -> None:
        for event in batch:
            method = self._handlers.get(event.topic)
            if method is not None:
                method(self, event, tx)
