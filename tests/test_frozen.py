"""``quick_init`` and ``quick_new`` change how a frozen dataclass is made, nothing
else: the same signature, fields, repr, equality, hash and refusals as the plain
dataclass."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import given
from hypothesis import strategies as st

from aura_es.commands import CommandResult, Create, Update
from aura_es.events import CommandContext
from aura_es.frozen import quick_init, quick_new

QUICK = [CommandResult, Create, Update, CommandContext]


def _plain_twin(cls: type) -> type:
    """The same fields as ``cls`` in a plain frozen dataclass of the same name."""
    fields = [(f.name, f.type, f) for f in dataclasses.fields(cls)]
    copies = [(name, kind, dataclasses.field(default=f.default)
               if f.default is not dataclasses.MISSING else dataclasses.field())
              for name, kind, f in fields]
    return dataclasses.make_dataclass(cls.__name__, copies, frozen=True)


_values = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.uuids(),
                    st.tuples(st.integers()), st.booleans())


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_the_signature_is_the_dataclass_own(cls: type) -> None:
    twin = _plain_twin(cls)
    assert inspect.signature(cls.__init__) == inspect.signature(twin.__init__)  # type: ignore[misc]


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
@given(data=st.data())
def test_an_instance_is_the_plain_dataclass_instance(cls: type, data: st.DataObject) -> None:
    twin = _plain_twin(cls)
    fields = dataclasses.fields(cls)
    given_count = data.draw(st.integers(
        sum(f.default is dataclasses.MISSING for f in fields), len(fields)))
    args = [data.draw(_values) for _ in fields[:given_count]]
    quick, plain = cls(*args), twin(*args)
    assert vars(quick) == vars(plain)
    assert repr(quick) == repr(plain)
    assert quick == cls(*args) and hash(quick) == hash(cls(*args))
    assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
    by_name = dict(zip([f.name for f in fields], args, strict=False))
    assert cls(**by_name) == quick
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.__setattr__(fields[0].name, "changed")
    changed = data.draw(_values)
    last = fields[-1].name
    replaced = dataclasses.replace(quick, **{last: changed})
    assert vars(replaced) == {**vars(quick), last: changed}
    assert vars(replaced) == vars(dataclasses.replace(plain, **{last: changed}))


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_wrong_arguments_are_refused_as_the_dataclass_refuses_them(cls: type) -> None:
    if any(f.default is dataclasses.MISSING for f in dataclasses.fields(cls)):
        with pytest.raises(TypeError):
            cls()
    with pytest.raises(TypeError):
        cls(**{f.name: None for f in dataclasses.fields(cls)}, nosuch=1)
    with pytest.raises(TypeError):
        cls(*([None] * (len(dataclasses.fields(cls)) + 1)))


def _classes_quick_init_refuses() -> list[type]:
    class NotADataclass:
        pass

    @dataclasses.dataclass
    class NotFrozen:
        a: int

    @dataclasses.dataclass(frozen=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True)
    class Factory:
        a: list[Any] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class KeywordOnly:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slots:
        a: int

    return [NotADataclass, NotFrozen, PostInit, Factory, KeywordOnly, Slots]


@pytest.mark.parametrize("cls", _classes_quick_init_refuses(), ids=lambda c: c.__name__)
def test_what_it_cannot_make_the_same_is_refused(cls: type) -> None:
    with pytest.raises(TypeError):
        quick_init(cls)
    with pytest.raises(TypeError):
        quick_new(cls)


def test_a_class_made_by_a_new_of_its_own_is_not_made_quickly() -> None:
    @dataclasses.dataclass(frozen=True)
    class Interned:
        a: int

        def __new__(cls, *args: Any, **kwargs: Any) -> Interned:
            return super().__new__(cls)

    with pytest.raises(TypeError, match="__new__"):
        quick_new(Interned)


_make_stored = quick_new(StoredEvent)


@given(originator_id=st.uuids(), version=st.integers(), topic=st.text(max_size=20),
       state=st.binary(max_size=40), by_name=st.booleans())
def test_a_library_dataclass_made_quickly_is_the_one_its_init_makes(
        originator_id: Any, version: int, topic: str, state: bytes, by_name: bool) -> None:
    """The library's ``StoredEvent``, made for every event written and read, is made by
    ``quick_new`` without its ``__init__`` (which stays the library's own)."""
    args = (originator_id, version, topic, state)
    made = (_make_stored(originator_id=originator_id, originator_version=version,
                         topic=topic, state=state) if by_name else _make_stored(*args))
    plain = StoredEvent(*args)
    assert type(made) is StoredEvent
    assert vars(made) == vars(plain) and repr(made) == repr(plain) and made == plain
    assert hash(dataclasses.astuple(made)) == hash(dataclasses.astuple(plain))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.__setattr__("topic", "changed")
    assert dataclasses.replace(made, topic="other") == dataclasses.replace(plain, topic="other")
    with pytest.raises(TypeError):
        _make_stored(*args, "one too many")
    with pytest.raises(TypeError):
        _make_stored(*args[:3])
