"""Declaring personal data on an event class: which fields, and whose they are.

``text: Personal[str]`` marks a field as personal; ``SUBJECT = "agent_id"`` names the
field that says whose it is (a command's ``subject=`` names the person instead). The
store seals an event's personal fields with the subject's own data key before writing
it (``aura_es.store.sealing``), and ``aura-es erase`` deletes that key (docs/erasure.md).

In the stored JSON a sealed field holds a placeholder of its own type, so the stored
form still fits the event's schema: ``"[sealed]"`` for text, ``null``, ``[]`` or ``{}``
otherwise. A reader without the key (a mesh consumer) sees that placeholder; once the
subject is erased every reader sees ``"[erased]"`` (or the same empty value).
"""

from __future__ import annotations

import functools
import re
import types
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, get_type_hints

from eventsourcing.utils import resolve_topic

from aura_es.errors import ConfigurationError, DomainError


class _PersonalMarker:
    def __repr__(self) -> str:
        return "PERSONAL"


#: The ``Annotated`` marker of a personal field.
PERSONAL = _PersonalMarker()
T = TypeVar("T")
#: ``Personal[str]``: a field holding a person's data, sealed with their key.
Personal = Annotated[T, PERSONAL]

#: What a personal field reads as when its subject's key is not at hand, or is gone.
SEALED_TEXT = "[sealed]"
ERASED_TEXT = "[erased]"
#: The stored JSON's member holding the sealed fields (``{"subject", "fields", "data"}``).
SEALED_KEY = "_sealed"
#: The topic of the event an erasure records (``aura_es.erasure``): projections whose
#: topics carry personal fields also read it, and clear what they kept of the subject.
ERASURE_TOPIC = "aura.subject.erased.v1"
#: The event metadata key a command's ``subject=`` is recorded under.
META_SUBJECT = "subject"
#: A subject id: 1 to 200 printable ASCII characters, no spaces (an opaque id, such as
#: "user-42", never a name or an email address: it is kept after the erasure).
SUBJECT_PATTERN = re.compile(r"[!-~]{1,200}")


class InvalidSubject(DomainError):
    """A subject id that is not one."""


def check_subject(subject: object, what: str = "subject") -> str:
    if not isinstance(subject, str) or not SUBJECT_PATTERN.fullmatch(subject):
        shown = repr(subject) if len(repr(subject)) <= 60 else repr(subject)[:57] + "..."
        raise InvalidSubject(
            f"{what} {shown} is not a subject id: give 1-200 printable ASCII characters"
            " without spaces (an opaque id such as 'user-42')")
    return subject


def _is_personal(hint: Any) -> bool:
    return get_origin(hint) is Annotated and any(m is PERSONAL for m in hint.__metadata__)


def _placeholder(name: str, hint: Any, cls: type) -> tuple[Any, Any]:
    """(sealed, erased) placeholders of a personal field, of the field's own type."""
    inner = get_args(hint)[0]
    origin = get_origin(inner)
    if inner is str:
        return SEALED_TEXT, ERASED_TEXT
    if origin in (Union, types.UnionType) and type(None) in get_args(inner):
        return None, None
    if inner is list or origin is list:
        return [], []
    if inner is dict or origin is dict:
        return {}, {}
    raise ConfigurationError(
        f"event class {cls.__qualname__}: personal field {name!r} is {inner!r}; a"
        " personal field is a str, a list, a dict or optional (its placeholder must fit"
        " its schema)")


@functools.cache
def personal_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """The personal fields of ``cls`` and their (sealed, erased) placeholders."""
    hints = get_type_hints(cls, include_extras=True)
    return {name: _placeholder(name, hint, cls)
            for name, hint in hints.items() if _is_personal(hint)}


@functools.cache
def subject_field(cls: type) -> str | None:
    """The field ``cls`` names as its subject (``SUBJECT``), checked against its fields."""
    field = getattr(cls, "SUBJECT", None)
    if field is None:
        return None
    hints = get_type_hints(cls)
    if not isinstance(field, str) or field not in hints:
        raise ConfigurationError(
            f"event class {cls.__qualname__}: SUBJECT {field!r} is not one of its fields")
    return field


def subject_of(cls: type, state: dict[str, Any]) -> str | None:
    """Whose personal data an event's ``state`` holds: its metadata's subject (the
    command's ``subject=``), else its ``SUBJECT`` field; None when it has no personal
    fields. An event with personal fields and no subject is refused."""
    if not personal_fields(cls):
        return None
    meta = state.get("meta") or {}
    subject = meta.get(META_SUBJECT)
    if subject is None and (field := subject_field(cls)) is not None:
        subject = state.get(field)
    if subject is None:
        raise InvalidSubject(
            f"event {getattr(cls, 'TOPIC', cls.__qualname__)} carries personal fields and"
            " names no subject: pass subject= to the command, or set SUBJECT on the class")
    return check_subject(subject)


def personal_fields_of_topic(topic: str) -> dict[str, tuple[Any, Any]]:
    """The personal fields the loaded event class of ``topic`` declares (none when no
    class is loaded: a raw-payload reader declares nothing)."""
    try:
        cls = resolve_topic(topic)
    except Exception:
        return {}
    return personal_fields(cls)


def topic_is_personal(topic: str) -> bool:
    return bool(personal_fields_of_topic(topic))
