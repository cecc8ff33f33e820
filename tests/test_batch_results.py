"""What each command of a batch stored is read off what the save appended: matched in
the commands' order when the events came in it (a batch of creates), looked up by
aggregate and version otherwise. Both ways give every command its own positions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_es.commands import (
    Appended,
    CommandPipeline,
    CommandResult,
    _Prepared,
    _results_in_order,
)
from aura_es.store.idempotency import IdempotencyRecord


def _prepared(aggregate_id: uuid.UUID, first: int, last: int) -> _Prepared:
    record = IdempotencyRecord("h", "t", "k", aggregate_id, "r", first, last)
    return _Prepared(command=None, aggregate_id=aggregate_id,  # type: ignore[arg-type]
                     key_hash="h", request_hash="r", record=record)


@st.composite
def batches(draw: Any) -> tuple[list[_Prepared], list[Appended], dict[tuple[Any, int], int]]:
    """Commands on a few aggregates (several on one: consecutive versions), and the
    events appended for them, grouped by aggregate as a save appends them or shuffled."""
    aggregates = [uuid.uuid4() for _ in range(draw(st.integers(1, 5)))]
    version = dict.fromkeys(aggregates, 0)
    fresh = []
    for _ in range(draw(st.integers(1, 12))):
        aggregate = draw(st.sampled_from(aggregates))
        count = draw(st.integers(1, 3))
        first = version[aggregate] + 1
        version[aggregate] += count
        fresh.append(_prepared(aggregate, first, first + count - 1))
    order = list(dict.fromkeys(p.aggregate_id for p in fresh))  # first seen first
    events = [(a, v) for a in order for v in range(1, version[a] + 1)]
    if draw(st.integers(0, 3)):  # mostly in another order
        events = draw(st.permutations(events))
    positions = {event: 100 + i for i, event in enumerate(events)}
    # An equal id, not the same object, for some events: matched by value then.
    appended = [Appended(uuid.UUID(int=a.int) if draw(st.booleans()) else a, v, "t",
                         positions[a, v]) for a, v in events]
    return fresh, appended, positions


@settings(max_examples=400)
@given(batches())
def test_each_command_gets_the_positions_of_its_own_events(
    batch: tuple[list[_Prepared], list[Appended], dict[tuple[Any, int], int]],
) -> None:
    fresh, appended, positions = batch
    results = CommandPipeline._results_of(fresh, appended)
    expected = []
    for p in fresh:
        assert p.record is not None
        first, last = p.record.from_version, p.record.to_version
        expected.append(CommandResult(p.aggregate_id, first, last, tuple(
            positions[p.aggregate_id, v] for v in range(first, last + 1))))
    assert results == expected


@given(st.lists(st.integers(1, 4), min_size=1, max_size=30))
def test_a_batch_of_creates_is_read_in_order(event_counts: list[int]) -> None:
    """One aggregate a command, its events appended in the commands' order (as a save
    appends a batch of creates): read in order, not looked up."""
    fresh = [_prepared(uuid.uuid4(), 1, count) for count in event_counts]
    appended = [Appended(p.aggregate_id, v, "t", 7 * i + v)
                for i, p in enumerate(fresh) for v in range(1, event_counts[i] + 1)]
    results = _results_in_order(fresh, appended)
    assert results == [CommandResult(p.aggregate_id, 1, count, tuple(
        7 * i + v for v in range(1, count + 1)))
        for i, (p, count) in enumerate(zip(fresh, event_counts, strict=True))]


def test_events_missing_from_what_was_appended_are_an_error_not_a_short_answer() -> None:
    fresh = [_prepared(uuid.uuid4(), 1, 2), _prepared(uuid.uuid4(), 1, 2)]
    first, second = fresh[0].aggregate_id, fresh[1].aggregate_id
    appended = [Appended(first, 1, "t", 1), Appended(first, 2, "t", 2), Appended(second, 1, "t", 3)]
    with pytest.raises(KeyError):
        CommandPipeline._results_of(fresh, appended)
