"""The append statement's typed arrays (``store/arrays.py``) are written in PostgreSQL's
binary format by hand: whatever they hold, the server must read back exactly what
psycopg's own (slower) list adaptation gives it, and refuse what it would refuse."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura_es.dsn import parse_database_url
from aura_es.store.arrays import BigInts, Blobs, Texts, Uuids

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
               max_size=40)
#: Lists whose elements all have one length in bytes (hashes, a batch's one command
#: type or topic): written by the arrays' shorter way.
SAME_LENGTH_TEXTS = st.integers(0, 8).flatmap(
    lambda n: st.lists(st.text("0123456789abcdef", min_size=n, max_size=n), max_size=6))
SAME_LENGTH_BLOBS = st.integers(0, 8).flatmap(
    lambda n: st.lists(st.binary(min_size=n, max_size=n), max_size=6))
INT8 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@pytest.fixture
def conn(empty_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(parse_database_url(empty_db_url).conninfo(), autocommit=True) as c:
        yield c


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXT, max_size=6) | SAME_LENGTH_TEXTS,
       uuids=st.lists(st.uuids(), max_size=6), ints=st.lists(INT8, max_size=6),
       blobs=st.lists(st.binary(max_size=40), max_size=6) | SAME_LENGTH_BLOBS)
def test_typed_arrays_read_back_as_psycopgs_own_lists(
    conn: psycopg.Connection[Any], texts: list[str], uuids: list[Any], ints: list[int],
    blobs: list[bytes],
) -> None:
    values = "SELECT %s::text[], %s::uuid[], %s::bigint[], %s::bytea[]"
    # As the server prints them: bounds and element types show, not only the elements.
    printed = "SELECT %s::text[]::text, %s::uuid[]::text, %s::bigint[]::text, %s::bytea[]::text"
    typed = (Texts(texts), Uuids(uuids), BigInts(ints), Blobs(blobs))
    plain = (texts, uuids, ints, blobs)
    for query in (values, printed):
        ours = conn.execute(query, typed, binary=True).fetchone()
        assert ours == conn.execute(query, plain).fetchone()
    assert list(map(list, conn.execute(values, typed).fetchone() or ())) == list(plain)


def test_an_empty_array_unnests_to_no_row(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT count(*) FROM unnest(%s::text[], %s::uuid[])",
                       (Texts(), Uuids())).fetchone()
    assert row == (0,)


def test_what_the_append_never_writes_is_refused_before_the_server(
    conn: psycopg.Connection[Any],
) -> None:
    with pytest.raises(TypeError, match="holds None"):
        conn.execute("SELECT %s::text[]", (Texts(["a", None]),))
    for texts in (["a\x00b"], ["ab", "a\x00"], ["x", "y\x00z"]):
        with pytest.raises(psycopg.DataError, match="NUL"):
            conn.execute("SELECT %s::text[]", (Texts(texts),))


_ONE_OR_MORE = st.lists(
    st.tuples(st.binary(max_size=30), TEXT.filter(bool)), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=_ONE_OR_MORE, keyed=st.booleans(), key=TEXT.filter(str.strip))
def test_one_event_and_many_are_stored_alike_by_their_two_statements(
    app: Any, events: list[tuple[bytes, str]], keyed: bool, key: str,
) -> None:
    """One event with at most one key row goes by plain parameters, the rest by the
    typed arrays: the rows stored, the positions returned and the keys are the same."""
    from uuid import uuid4

    from eventsourcing.persistence import StoredEvent

    from aura_es.store import idempotency

    aggregate_id = uuid4()
    stored = [StoredEvent(aggregate_id, v, f"t.{topic}", state)
              for v, (state, topic) in enumerate(events, start=1)]
    record = idempotency.IdempotencyRecord(
        key_hash=uuid4().hex, command_type="c", idempotency_key=key,
        aggregate_id=aggregate_id, request_hash="r", from_version=1, to_version=len(events))
    kwargs = idempotency.KeyRows((record,)).as_save_kwargs() if keyed else {}
    positions = app.recorder.insert_events(stored, **kwargs)
    with app.connect() as conn:
        rows = conn.execute(
            "SELECT notification_id, originator_version, topic, state FROM aura_events"
            " WHERE originator_id = %s ORDER BY originator_version", (aggregate_id,)).fetchall()
        keys = conn.execute(
            "SELECT idempotency_key, aggregate_id, from_version, to_version"
            " FROM aura_idempotency WHERE key_hash = %s", (record.key_hash,)).fetchall()
    assert [(r[1], r[2], bytes(r[3])) for r in rows] == [
        (e.originator_version, e.topic, e.state) for e in stored]
    assert list(positions) == [r[0] for r in rows]
    assert list(positions) == list(range(positions[0], positions[0] + len(positions)))
    assert keys == ([(key, aggregate_id, 1, len(events))] if keyed else [])
