"""The fast payload check run on every write agrees with the slow one that names the
field: it never refuses a storable value, and never passes one the slow check refuses
(except what orjson itself then refuses: lone surrogates, objects of other types)."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aura_es import payload
from aura_es.errors import InvalidPayload

_scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=8), st.sampled_from(["a\x00b", "\x00"]),
    st.floats(), st.integers(min_value=-(2**70), max_value=2**70),
    st.decimals(), st.sampled_from([Decimal("NaN"), Decimal("Infinity")]),
    st.datetimes(timezones=st.just(UTC)), st.uuids(),
)
_keys = st.one_of(st.text(max_size=6), st.sampled_from(["k\x00"]), st.integers(0, 3))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(_keys, inner, max_size=4),
    ),
    max_leaves=20,
)


def _surrogate_only(problems: list[tuple[str, str]]) -> bool:
    return all("surrogate" in problem for _, problem in problems)


@given(_values)
def test_the_fast_check_and_the_naming_check_agree(value: Any) -> None:
    problems = list(payload._problems(value, ""))
    if payload._storable(value):
        assert _surrogate_only(problems), problems
    else:
        assert problems, "refused by the fast check, but nothing named"


@given(_values)
def test_encode_stores_exactly_or_refuses_naming_a_field(value: Any) -> None:
    problems = list(payload._problems(value, ""))
    try:
        payload.encode(value, "event x")
    except InvalidPayload as e:
        assert str(e).startswith("event x: ")
    else:
        assert not problems, problems
