"""The master key that wraps every subject's data key, and where it comes from.

A ``KeyProvider`` wraps and unwraps data keys; the data keys themselves live wrapped in
the store (``aura_es.store.keystore``). The local provider shipped here holds the key in
memory, from ``AURA_ES_MASTER_KEY`` (base64 of 32 bytes), or from ``<data dir>/master.key``
that `aura-es up` writes for the embedded default. A KMS or Vault transit provider fills
the same two methods.

Rotation never re-encrypts events: set the new key as ``AURA_ES_MASTER_KEY`` and the old
ones in ``AURA_ES_PREVIOUS_MASTER_KEYS`` (comma separated); each wrapped key records the
id of the master key that wrapped it, so both open, and `aura-es keys rotate` re-wraps
the data keys under the new one (the old key can then be dropped).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aura_es.errors import ConfigurationError

MASTER_KEY = "AURA_ES_MASTER_KEY"
PREVIOUS_MASTER_KEYS = "AURA_ES_PREVIOUS_MASTER_KEYS"
#: The embedded default's master key file, beside its other generated credentials.
KEY_FILE = "master.key"
_NONCE_BYTES = 12


class NoMasterKey(ConfigurationError):
    """Sealed data must be written or read and no master key is configured."""


class WrongMasterKey(ConfigurationError):
    """A data key was wrapped by a master key that is not configured (or the key is not
    the one it claims to be)."""


class KeyProvider(Protocol):
    """Wraps and unwraps data keys (a local key, a KMS, Vault transit)."""

    @property
    def key_id(self) -> str:
        """The id of the key that wraps new data keys (stored beside each wrapped key)."""
        ...

    def wrap(self, subject: str, data_key: bytes) -> bytes: ...

    def unwrap(self, subject: str, key_id: str, wrapped: bytes) -> bytes: ...


def key_id_of(key: bytes) -> str:
    """A master key's public id: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(b"aura-es master key id:" + key).hexdigest()[:16]


def parse_key(raw: str, where: str) -> bytes:
    """A master key from its base64 text; one line naming ``where`` (never the value)."""
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigurationError(f"{where} is not a master key: give the base64 of 32 random"
                                 " bytes (e.g. `aura-es up` makes one)")
    return key


def new_key_text() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


class LocalKeyProvider:
    """Wraps data keys with AES-256-GCM under a master key held in memory."""

    def __init__(self, key: bytes, previous: tuple[bytes, ...] = ()) -> None:
        self._key = key
        self._key_id = key_id_of(key)
        self._keys = {key_id_of(k): k for k in (*previous, key)}

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, subject: str, data_key: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce + AESGCM(self._key).encrypt(nonce, data_key, subject.encode())

    def unwrap(self, subject: str, key_id: str, wrapped: bytes) -> bytes:
        key = self._keys.get(key_id)
        if key is None:
            raise WrongMasterKey(
                f"a data key was wrapped by master key {key_id}, which is not configured"
                f" (this process has {', '.join(sorted(self._keys))}): set {MASTER_KEY},"
                f" or list the old key in {PREVIOUS_MASTER_KEYS}")
        try:
            return AESGCM(key).decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:],
                                       subject.encode())
        except InvalidTag:
            raise WrongMasterKey(
                f"the data key of a subject does not open with master key {key_id}:"
                " the row was altered, or the key is not the one it claims") from None


def provider_from_env(data_dir: Path | None = None) -> LocalKeyProvider | None:
    """The local provider from ``AURA_ES_MASTER_KEY`` (else the embedded default's key
    file); None when neither is there. A malformed key is one line, never echoed."""
    raw = os.environ.get(MASTER_KEY, "")
    where = MASTER_KEY
    if not raw.strip():
        path = (data_dir or Path(os.environ.get("AURA_ES_DATA_DIR") or ".aura")) / KEY_FILE
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigurationError(f"{path} is unreadable: {e.strerror}") from None
        where = str(path)
    previous = tuple(
        parse_key(part, f"{PREVIOUS_MASTER_KEYS} (entry {i + 1})")
        for i, part in enumerate(p for p in os.environ.get(PREVIOUS_MASTER_KEYS, "").split(",")
                                 if p.strip()))
    return LocalKeyProvider(parse_key(raw, where), previous)
