"""Generators of hostile and careless input, and a user's aggregate whose event holds any
JSON-like value (the nesting, numbers and strings of the hostile-input suite)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from hypothesis import strategies as st

from aura_es import AuraAggregate, AuraCreated, Create

#: Strings that have broken something somewhere: NUL, lone surrogates, RTL override,
#: combining marks, zero-width joiners, escape sequences, a BOM, line ends.
SPECIAL_TEXT = [
    "\x00", "\ud800", "\udfff", "\u202e", "e\u0301", "\u200d", "\x1b[31m", "\ufeff",
    "\r\n", "\t", "\\", '"', "'", "%", "%ZZ", "🏳️‍🌈", "\u0000\u0000", "a" * 300,
]

hostile_text = st.lists(
    st.one_of(
        st.characters(blacklist_categories=()),  # every code point, surrogates included
        st.sampled_from(SPECIAL_TEXT),
    ),
    max_size=12,
).map("".join)

hostile_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-0.0, 0.0, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 1e308]),
)

json_like: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), hostile_numbers, hostile_text),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(hostile_text, children, max_size=4),
    ),
    max_leaves=20,
)


class NoteWritten(AuraCreated):
    TOPIC = "test.note.written.v1"
    body: object

    def apply(self, note: Any) -> None:
        note.body = self.body


class Note(AuraAggregate):
    TYPE = "test.note"

    def __init__(self) -> None:
        self.body: object = None

    @classmethod
    def write(cls, note_id: UUID, body: object) -> Note:
        return cls._create(NoteWritten, id=note_id, body=body)


def write_note(body: object, key: str) -> Create[Note]:
    return Create("write_note", key, {"length": len(repr(body))},
                  lambda id_: Note.write(id_, body))
