"""Sealing an event's personal fields with its subject's data key, and opening them.

All personal fields of one event are sealed together: their JSON is encrypted with
AES-256-GCM (``cryptography``), a random 96-bit nonce, and the event's topic, aggregate
and version as associated data, so a seal moved to another event does not open. The
stored JSON keeps each field with its placeholder (``aura_es.personal``) and gains
``"_sealed": {"subject", "fields", "data"}`` (``data``: base64 of the nonce, then the
ciphertext and its tag).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any
from uuid import UUID

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aura_es.errors import EventUndecodable
from aura_es.personal import ERASED_TEXT, SEALED_KEY, SEALED_TEXT

_NONCE_BYTES = 12
_a2b = binascii.a2b_base64
_loads = orjson.loads


class SealBroken(EventUndecodable):
    """A seal that is malformed or fails authentication: the row was altered. The message
    names the event, never a value."""


#: AES-GCM contexts by data key, and each topic's bytes in the associated data: read on
#: the hot path as ``cache.get(k) or _kept(...)`` (a plain dict lookup; an ``lru_cache``
#: call costs more than the lookup, profiled).
_ciphers: dict[bytes, AESGCM] = {}
_topics: dict[str, bytes] = {}
#: How many of each are kept; past it the oldest half is dropped (a worker reads a few
#: hundred subjects' keys a batch, and its topics are its catalog's).
_KEPT = 4096


def _kept(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    """``value``, stored under ``key`` in ``cache`` within its bound."""
    if len(cache) >= _KEPT:
        for old in list(cache)[:_KEPT // 2]:
            del cache[old]
    cache[key] = value
    return value


def _cipher(data_key: bytes) -> AESGCM:
    cipher: AESGCM = _ciphers.get(data_key) or _kept(_ciphers, data_key, AESGCM(data_key))
    return cipher


def _aad(topic: str, aggregate_id: UUID | str, version: int) -> bytes:
    # Bytes, not text: formatting a UUID costs more than the decryption (profiled).
    aggregate = aggregate_id if type(aggregate_id) is UUID else UUID(str(aggregate_id))
    prefix = _topics.get(topic) or _kept(_topics, topic, topic.encode() + b"\x00")
    return prefix + aggregate.bytes + version.to_bytes(8, "big")


def seal(state: dict[str, Any], fields: dict[str, tuple[Any, Any]], subject: str,
         data_key: bytes, topic: str, aggregate_id: UUID, version: int) -> None:
    """Replaces ``fields`` in ``state`` by their sealed placeholders, adding the seal."""
    plain = {name: state[name] for name in fields if name in state}
    nonce = secrets.token_bytes(_NONCE_BYTES)
    data = _cipher(data_key).encrypt(nonce, orjson.dumps(plain),
                                    _aad(topic, aggregate_id, version))
    for name in plain:
        state[name] = fields[name][0]
    state[SEALED_KEY] = {
        "subject": subject,
        # The names only, so a reader without the event's class knows which to clear.
        "fields": sorted(plain),
        "data": base64.b64encode(nonce + data).decode(),
    }


def subject_of_seal(seal_value: Any) -> str | None:
    """The subject a stored seal names (None when ``seal_value`` is not a seal)."""
    if isinstance(seal_value, dict) and isinstance(seal_value.get("subject"), str):
        return str(seal_value["subject"])
    return None


def open_seal(seal_value: Any, data_key: bytes, topic: str, aggregate_id: UUID | str,
              version: int) -> dict[str, Any]:
    """The personal fields a seal holds; ``SealBroken`` when it does not open."""
    # One flat function: it runs once per sealed event a reader opens (profiled: each
    # call and cache wrapper left out here is ~0.1 µs of ~3 µs an event).
    try:
        sealed = _a2b(seal_value["data"], strict_mode=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise SealBroken(f"{_where(topic, aggregate_id, version)}: its seal is malformed"
                         ) from None
    try:
        plain = _cipher(data_key).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _aad(topic, aggregate_id, version))
    except (InvalidTag, ValueError):
        raise SealBroken(f"{_where(topic, aggregate_id, version)}: its seal fails"
                         " authentication (the row was altered)") from None
    fields = _loads(plain)
    if type(fields) is not dict:
        raise SealBroken(f"{_where(topic, aggregate_id, version)}: its seal holds no fields")
    return fields


def _where(topic: str, aggregate_id: UUID | str, version: int) -> str:
    return f"event {topic} {aggregate_id} v{version}"


def read_as(seal_value: Any, data_key: bytes | None, topic: str, aggregate_id: UUID | str,
            version: int, state: dict[str, Any]) -> dict[str, Any]:
    """What a seal's fields read as: opened with ``data_key``, or, when the subject's key
    is gone (None), the erased placeholders; ``SealBroken`` when it does not open."""
    if data_key is None:
        return erased(seal_value, state)
    return open_seal(seal_value, data_key, topic, aggregate_id, version)


def erased(seal_value: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The values a seal's fields read as once its subject is erased: the text
    placeholder becomes ``[erased]``; an empty placeholder (null, [], {}) stays."""
    names = seal_value.get("fields") if isinstance(seal_value, dict) else None
    if not isinstance(names, list):
        return {}
    return {name: ERASED_TEXT if state.get(name) == SEALED_TEXT else state.get(name)
            for name in names if isinstance(name, str)}
