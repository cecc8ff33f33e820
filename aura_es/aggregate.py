"""The aggregate base class: the ``eventsourcing`` Aggregate, with event metadata.

Subclasses set ``TYPE`` (a stable name such as ``"aura.debate"``, stored in place of
the Python path), initialise their state in a no-argument ``__init__``, and change it
only in their events' ``apply``. Command methods validate, then ``trigger_event``;
creating class methods call ``cls._create(EventClass, id=..., **fields)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, cast
from uuid import UUID

from eventsourcing.domain import (
    Aggregate,
    AggregateCreated,
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    DomainEvent,
    _init_mentions_id,
    _spec_filter_kwargs_for_method_params,
)
from eventsourcing.utils import _type_cache, get_topic, register_topic

from aura_es.events import new_meta
from aura_es.frozen import quick_new

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
        if kwargs.get("timestamp") is None and isinstance(self.id, UUID) and (
                _triggers_the_short_way(type(self), cast(type, event_class))):
            # The library's steps, less its per-call checks that hold here by
            # construction (the event's id and version are the aggregate's next).
            kwargs["originator_id"] = self.id
            kwargs["originator_version"] = self.version + 1
            kwargs["timestamp"] = event_class.create_timestamp()  # type: ignore[attr-defined]
            try:
                event = _maker(cast(type, event_class))(**kwargs)
            except TypeError as e:
                raise TypeError(f"Can't construct event {event_class}: {e}") from None
            event.apply(self)  # type: ignore[attr-defined]
            self.version = event.originator_version
            self.modified_on = event.timestamp
            self.pending_events.append(event)
            return
        super().trigger_event(event_class, **kwargs)

    @classmethod
    def _create(  # type: ignore[override]
        cls: type[A],
        event_class: type[CanInitAggregate[Any]],
        **kwargs: Any,
    ) -> A:
        kwargs.setdefault("meta", new_meta())
        aggregate_id = kwargs.get("id")
        if (isinstance(aggregate_id, UUID) and kwargs.get("timestamp") is None
                and _takes_the_short_way(cls, cast(type, event_class))):
            return _created(cls, event_class, kwargs)
        return super()._create(event_class, **kwargs)  # type: ignore[misc]


@functools.cache
def _takes_the_short_way(cls: type[AuraAggregate], event_class: type) -> bool:
    """Whether creating ``cls`` with ``event_class`` can skip the library's general
    path: the aggregate's ``__init__`` takes no arguments (this class's documented
    contract) and neither class changes how the library builds one. Worked out once
    per pair of classes; a class defined again is another class."""
    return (
        not getattr(cls, "TOPIC", None)  # the library checks explicit topics
        and cls.__base_init__ is BaseAggregate.__base_init__
        and cls not in _init_mentions_id
        and not _spec_filter_kwargs_for_method_params(cls.__init__) - {"self"}
        and getattr(event_class, "mutate", None) is AggregateCreated.mutate
    )


@functools.cache
def _maker(event_class: type) -> Callable[..., Any]:
    """What makes ``event_class``'s events on the short ways: for a class whose
    ``__init__`` is the one its dataclass decorator wrote, a function that fills the
    event's ``__dict__`` in the fields' order as that ``__init__`` does, one call where
    it makes one per field (``frozen.quick_new``; 2.2 -> 0.9 µs a debate's event, warm;
    issue 27). The library's ``__post_init__`` (its originator id a UUID) holds on the
    short ways by construction. Any other class: the class itself."""
    init = vars(event_class).get("__init__")
    code = getattr(init, "__code__", None)
    if code is None or code.co_filename != "<string>":  # written by hand, not generated
        return event_class
    try:
        return quick_new(event_class, held_post_init=DomainEvent.__post_init__)
    except TypeError:  # slots, factories, keyword-only fields, its own __post_init__ or __new__
        return event_class


@functools.cache
def _triggers_the_short_way(cls: type[AuraAggregate], event_class: type) -> bool:
    """Whether ``trigger_event`` can skip the library's general path for this pair:
    the aggregate has no explicit TOPIC (whose checks the library makes) and the event
    mutates the library's way."""
    return (not getattr(cls, "TOPIC", None)
            and getattr(event_class, "mutate", None) is CanMutateAggregate.mutate)


def _created(cls: type[A], event_class: type[CanInitAggregate[Any]], kwargs: dict[str, Any]) -> A:
    """What the library's ``_create`` and ``CanInitAggregate.mutate`` do for such a
    class, without their per-call work of finding the classes again and filtering
    arguments by signature (a tenth of a keyed command's CPU, issue 27): the created
    event, then the aggregate from it (base init, ``__init__``, the event's
    ``apply``), the event pending. ``tests/test_write_path.py`` holds the two ways to
    the same aggregate and event."""
    aggregate_id = kwargs.pop("id")
    version = cls.INITIAL_VERSION
    timestamp = event_class.create_timestamp()  # type: ignore[attr-defined]
    try:
        event = _maker(cast(type, event_class))(
            originator_topic=get_topic(cls), originator_id=aggregate_id,
            originator_version=version, timestamp=timestamp, **kwargs)
    except TypeError as e:
        raise TypeError(f"Unable to construct '{event_class.__qualname__}' event: {e}") from e
    aggregate = cls.__new__(cls)
    aggregate.__base_init__(aggregate_id, version, timestamp)
    aggregate.__init__()  # type: ignore[misc]
    event.apply(aggregate)  # type: ignore[attr-defined]
    aggregate.pending_events.append(event)  # type: ignore[arg-type]
    return aggregate
