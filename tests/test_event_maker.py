"""The aggregates' short ways make events by filling their ``__dict__``
(``aggregate._maker``): every event class gets the event its own ``__init__`` makes,
field for field and in the same order (the stored JSON's keys follow it), and a class
that makes its events otherwise is made by itself."""

from __future__ import annotations

import dataclasses
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aura_es.domain  # noqa: F401 - the event classes, registered on import
from aura_es import AuraCreated, AuraEvent
from aura_es.aggregate import _maker
from aura_es.schemas.generate import event_classes

_CLASSES = sorted(event_classes().values(), key=lambda c: c.__qualname__)
_values = st.one_of(st.none(), st.integers(), st.text(max_size=6), st.uuids(),
                    st.lists(st.text(max_size=3), max_size=3), st.booleans())


def _kwargs(cls: type, data: st.DataObject) -> dict[str, Any]:
    fields = [f.name for f in dataclasses.fields(cls)]
    values = {name: data.draw(_values) for name in fields}
    values["originator_id"] = uuid4()
    # In any order: the event's own order is the fields', whatever the caller's.
    return dict(data.draw(st.permutations(list(values.items()))))


@pytest.mark.parametrize("cls", _CLASSES, ids=lambda c: c.__qualname__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_an_event_made_quickly_is_the_one_its_class_makes(cls: type,
                                                           data: st.DataObject) -> None:
    make = _maker(cls)
    assert make is not cls, f"{cls.__qualname__} takes the slow way"
    kwargs = _kwargs(cls, data)
    quick, plain = make(**kwargs), cls(**kwargs)
    assert type(quick) is cls
    assert list(vars(quick).items()) == list(vars(plain).items())
    assert quick == plain and repr(quick) == repr(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.__setattr__("originator_version", 2)
    missing = data.draw(st.sampled_from(sorted(kwargs)))
    for maker in (make, cls):
        with pytest.raises(TypeError):
            maker(**{k: v for k, v in kwargs.items() if k != missing})
        with pytest.raises(TypeError):
            maker(**kwargs, not_a_field=1)


class _OwnInit(AuraEvent):
    TOPIC = "test.event_maker.own_init.v1"
    n: int

    def __init__(self, **kwargs: Any) -> None:  # written by hand: called as it is
        object.__setattr__(self, "made_by_hand", True)
        for name, value in kwargs.items():
            object.__setattr__(self, name, value)


class _OwnCheck(AuraEvent):
    TOPIC = "test.event_maker.own_check.v1"
    n: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 0:
            raise ValueError("n must not be negative")


class _Defaults(AuraCreated):
    TOPIC = "test.event_maker.defaults.v1"
    n: int = 3
    tags: list[str] = dataclasses.field(default_factory=list)


def test_a_class_that_makes_its_events_otherwise_is_made_by_itself() -> None:
    assert _maker(_OwnInit) is _OwnInit
    assert _maker(_OwnCheck) is _OwnCheck
    assert _maker(_Defaults) is _Defaults  # a default factory: its __init__ calls it
    common = {"originator_id": uuid4(), "originator_version": 1, "timestamp": None,
              "meta": {}}
    assert _maker(_OwnInit)(**common, n=1).made_by_hand  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="negative"):
        _maker(_OwnCheck)(**common, n=-1)
