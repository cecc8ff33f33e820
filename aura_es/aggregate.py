"""The aggregate base class: the ``eventsourcing`` Aggregate, with event metadata.

Subclasses set ``TYPE`` (a stable name such as ``"aura.debate"``, stored in place of
the Python path), initialise their state in a no-argument ``__init__``, and change it
only in their events' ``apply``. Command methods validate, then ``trigger_event``;
creating class methods call ``cls._create(EventClass, id=..., **fields)``.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from eventsourcing.domain import Aggregate, CanInitAggregate, CanMutateAggregate
from eventsourcing.utils import _type_cache, register_topic

from aura_es.events import new_meta

A = TypeVar("A", bound="AuraAggregate")


class AuraAggregate(Aggregate):
    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        type_name = cls.__dict__.get("TYPE")
        if type_name:
            # Not the library's TOPIC attribute: that one demands explicit topics on the
            # event classes it generates itself. Seeding the topic cache has the same
            # effect on what is stored: the stable name instead of module:QualName.
            register_topic(type_name, cls)
            _type_cache[cls] = type_name

    def trigger_event(
        self,
        event_class: type[CanMutateAggregate[Any]],
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("meta", new_meta())
        super().trigger_event(event_class, **kwargs)

    @classmethod
    def _create(  # type: ignore[override]
        cls: type[A],
        event_class: type[CanInitAggregate[Any]],
        **kwargs: Any,
    ) -> A:
        kwargs.setdefault("meta", new_meta())
        return super()._create(event_class, **kwargs)  # type: ignore[misc]
