"""The erasure's proof: keyed fingerprints of the subject's personal values, to find a
copy of them anywhere later without keeping the values.

A value is fingerprinted by its first ``PREFIX_BYTES`` bytes (BLAKE2b, 8 bytes, keyed by
a random key made for this erasure and stored wrapped by the master key), as UTF-8 and
as JSON writes it (quotes and backslashes escaped). A search hashes every window of that
length of what it reads. Values shorter than ``MIN_BYTES`` are not searched: they would
match unrelated data ("yes", "n/a").
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from aura_es.masterkey import KeyProvider

PREFIX_BYTES = 32
MIN_BYTES = 8


def _forms(value: str) -> set[bytes]:
    raw = value.encode()
    escaped = orjson.dumps(value)[1:-1]
    return {form[:PREFIX_BYTES] for form in (raw, escaped) if len(form) >= MIN_BYTES}


def _print(key: bytes, window: bytes) -> bytes:
    return hashlib.blake2b(window, key=key, digest_size=8).digest()


@dataclass(frozen=True)
class Proof:
    key: bytes
    prints: dict[int, frozenset[bytes]]

    @classmethod
    def of(cls, values: Iterable[str]) -> Proof:
        key = secrets.token_bytes(32)
        prints: dict[int, set[bytes]] = {}
        for value in values:
            for form in _forms(value):
                prints.setdefault(len(form), set()).add(_print(key, form))
        return cls(key, {n: frozenset(p) for n, p in prints.items()})

    @property
    def values(self) -> int:
        return sum(len(p) for p in self.prints.values())

    def found_in(self, data: bytes) -> bool:
        """Whether any window of ``data`` is a fingerprinted value's prefix."""
        for length, prints in self.prints.items():
            for start in range(len(data) - length + 1):
                if _print(self.key, data[start:start + length]) in prints:
                    return True
        return False

    def seal(self, provider: KeyProvider, subject: str) -> bytes:
        return orjson.dumps({
            "master_key_id": provider.key_id,
            "key": base64.b64encode(provider.wrap(subject, self.key)).decode(),
            "prints": {str(n): sorted(p.hex() for p in ps) for n, ps in self.prints.items()},
        })

    @classmethod
    def opened(cls, stored: bytes, provider: KeyProvider, subject: str) -> Proof:
        data = orjson.loads(stored)
        key = provider.unwrap(subject, data["master_key_id"], base64.b64decode(data["key"]))
        return cls(key, {int(n): frozenset(bytes.fromhex(p) for p in ps)
                         for n, ps in data["prints"].items()})


def rewrapped(stored: bytes, provider: KeyProvider, subject: str) -> bytes | None:
    """The stored proof with its key wrapped by ``provider``'s current master key; None
    when it already is."""
    data = orjson.loads(stored)
    if data["master_key_id"] == provider.key_id:
        return None
    key = provider.unwrap(subject, data["master_key_id"], base64.b64decode(data["key"]))
    data["master_key_id"] = provider.key_id
    data["key"] = base64.b64encode(provider.wrap(subject, key)).decode()
    return orjson.dumps(data)
