"""A process's access to the subjects' data keys: made on first use, unwrapped by the
master key, cached in memory with a bound.

Three ways to read a key. A projection's batch holds the erasures' gate until it
commits (``keystore.ERASURES_WAIT``), so no erasure commits between its read and its
commit, and trusts the keys its connection read since the latest erasure in the log
(``current``): after an erasure anywhere, its next batch reads its subjects' rows once
more. Other readers in a transaction (``opening.py``) read their subjects' rows FOR
SHARE, every time. An aggregate loaded outside a transaction trusts a cached key for
``READ_TTL_SECONDS`` after it was last read from its row (an erasure in another process
is seen within it; aggregates keep no personal field in their state in the AURA
domain). Writers seal with a cached key; the append itself checks, in its statement,
that the key is not erased.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from aura_es import db
from aura_es.errors import DomainError
from aura_es.masterkey import (
    MASTER_KEY,
    PREVIOUS_MASTER_KEYS,
    KeyProvider,
    NoMasterKey,
    provider_from_env,
)
from aura_es.store import keystore

#: The most data keys one process keeps unwrapped (32 bytes each, plus the wrapped form).
CACHE_SIZE = 10_000
#: How long a key read outside a transaction is trusted (aggregate loads).
READ_TTL_SECONDS = 1.0

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


class SubjectErased(DomainError):
    """A write of personal data for a subject who was erased."""

    def __init__(self, subjects: Iterable[str]) -> None:
        self.subjects = sorted(set(subjects))
        super().__init__(
            f"subject {', '.join(self.subjects)} was erased: no personal data of theirs"
            " is written again")


class Keyring:
    def __init__(self, provider: KeyProvider | None = None, *,
                 connect: Connect | None = None) -> None:
        self._provider = provider
        self._connect = connect
        self._keys: OrderedDict[str, tuple[bytes, bytes, float]] = OrderedDict()
        #: For each connection (so one store's keys never serve another's reads, and a
        #: new connection starts afresh): subject -> (the latest erasure when its key
        #: was read, the key or None), what ``current`` trusts while no erasure came since.
        self._current: weakref.WeakKeyDictionary[
            psycopg.Connection[Any], OrderedDict[str, tuple[int | None, bytes | None]]
        ] = weakref.WeakKeyDictionary()
        self._pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, connect: Connect | None = None) -> Keyring:
        return cls(provider_from_env(), connect=connect)

    @classmethod
    def of_store(cls, database_url: str, provider: KeyProvider | None = None) -> Keyring:
        """Key access for a process outside the application (a mesh consumer): the
        store's key table (a role that may SELECT it is enough) and the master key
        (``provider``, else the environment's). Keys are read through a small pool of
        its own, checked before use (a dead connection is replaced, not handed out), so
        a key read costs a query, never a new connection; ``close`` it when done."""
        info, timeout = db.conninfo(database_url)
        pool = ConnectionPool(info, min_size=1, max_size=2, timeout=timeout,
                              kwargs={"autocommit": True, "connect_timeout": timeout},
                              check=ConnectionPool.check_connection, open=True,
                              name="aura-es-keys")
        ring = cls(provider or provider_from_env(), connect=pool.connection)
        ring._pool = pool
        return ring

    def close(self) -> None:
        """Closes the pool ``of_store`` made (nothing otherwise)."""
        if self._pool is not None:
            self._pool.close()

    @property
    def provider(self) -> KeyProvider:
        if self._provider is None:
            raise NoMasterKey(
                f"personal fields must be sealed or opened and no master key is configured:"
                f" set {MASTER_KEY} (base64 of 32 bytes), or run `aura-es up`")
        return self._provider

    # -- the cache ----------------------------------------------------------------------

    def _cached(self, subject: str, wrapped: bytes | None = None,
                ttl: float | None = None) -> bytes | None:
        with self._lock:
            entry = self._keys.get(subject)
            if entry is None:
                return None
            key, held_wrapped, at = entry
            if wrapped is not None and wrapped != held_wrapped:
                return None
            if ttl is not None and time.monotonic() - at > ttl:
                return None
            self._keys.move_to_end(subject)
            return key

    def _remember(self, subject: str, key: bytes, wrapped: bytes) -> None:
        with self._lock:
            self._keys[subject] = (key, wrapped, time.monotonic())
            self._keys.move_to_end(subject)
            while len(self._keys) > CACHE_SIZE:
                self._keys.popitem(last=False)

    def forget(self, subjects: Iterable[str]) -> None:
        with self._lock:
            for subject in subjects:
                self._keys.pop(subject, None)
                for current in self._current.values():
                    current.pop(subject, None)

    def _unwrap(self, row: keystore.KeyRow) -> bytes | None:
        return self._unwrapped(row.subject, row.master_key_id, row.wrapped)

    def _unwrapped(self, subject: str, master_key_id: str | None, wrapped: bytes | None
                   ) -> bytes | None:
        if wrapped is None or master_key_id is None:
            return None
        key = self._cached(subject, wrapped)
        if key is None:
            key = self.provider.unwrap(subject, master_key_id, wrapped)
        # Read from its row just now: trusted for READ_TTL_SECONDS from here. (Kept with
        # the time it was first cached, a key older than that was read again for every
        # event of its subject an aggregate's load opened.)
        self._remember(subject, key, wrapped)
        return key

    # -- writing ------------------------------------------------------------------------

    def for_writing(self, subject: str) -> bytes:
        """The subject's data key, made on first use; ``SubjectErased`` once erased."""
        key = self._cached(subject)
        if key is not None:
            return key
        with self._connection() as conn, conn.cursor() as cur:
            row = keystore.fetch(cur, [subject]).get(subject)
            if row is None:
                made = secrets.token_bytes(32)
                row = keystore.create(cur, subject, self.provider.key_id,
                                      self.provider.wrap(subject, made))
        if row.erased_at is not None:
            raise SubjectErased([subject])
        unwrapped = self._unwrap(row)
        assert unwrapped is not None
        return unwrapped

    # -- reading ------------------------------------------------------------------------

    def for_reading(self, subjects: Iterable[str]) -> dict[str, bytes | None]:
        """Keys for an aggregate's load, outside a transaction (None: erased or unknown)."""
        wanted = sorted(set(subjects))
        found: dict[str, bytes | None] = {}
        missing = []
        for subject in wanted:
            key = self._cached(subject, ttl=READ_TTL_SECONDS)
            if key is None:
                missing.append(subject)
            else:
                found[subject] = key
        if missing:
            with self._connection() as conn, conn.cursor() as cur:
                found.update(self.held(cur, missing, share=False))
        return found

    def current(self, cur: psycopg.Cursor[Any], subjects: Iterable[str],
                latest_erasure: int | None) -> dict[str, bytes | None]:
        """The keys of ``subjects`` for a batch that holds the erasures' gate and read
        ``latest_erasure`` (the latest erasure's position) in its transaction (None:
        erased or unknown). A key held since that erasure is current: none has
        committed since, and none can until the batch commits; the others are read."""
        found: dict[str, bytes | None] = {}
        stale: list[str] = []
        with self._lock:
            current = self._current.setdefault(cur.connection, OrderedDict())
            for subject in subjects:
                entry = current.get(subject)
                if entry is not None and entry[0] == latest_erasure:
                    found[subject] = entry[1]
                    current.move_to_end(subject)
                else:
                    stale.append(subject)
        if stale:
            rows = keystore.wrapped_keys(cur, sorted(stale), share=False)
            fresh = self.unwrapped(rows, stale)
            known = {row[0] for row in rows}
            with self._lock:
                for subject, key in fresh.items():
                    if subject in known:  # an unknown subject is read again next time
                        current[subject] = (latest_erasure, key)
                        current.move_to_end(subject)
                while len(current) > CACHE_SIZE:
                    current.popitem(last=False)
            found.update(fresh)
        return found

    def held(self, cur: psycopg.Cursor[Any], subjects: Iterable[str], *, share: bool = True
             ) -> dict[str, bytes | None]:
        """Keys read in ``cur``'s transaction, held FOR SHARE until it ends (None: erased
        or unknown)."""
        wanted = set(subjects)
        return self.unwrapped(keystore.wrapped_keys(cur, sorted(wanted), share=share), wanted)

    def unwrapped(self, rows: Iterable[tuple[str, str | None, bytes | None]],
                  subjects: Iterable[str]) -> dict[str, bytes | None]:
        """The keys of ``subjects`` from their key rows ``(subject, master key id,
        wrapped key)`` (read FOR SHARE by the caller); None for one erased or unknown."""
        out: dict[str, bytes | None] = dict.fromkeys(subjects)
        for subject, master_key_id, wrapped in rows:
            if subject in out:
                out[subject] = self._unwrapped(
                    subject, master_key_id, bytes(wrapped) if wrapped is not None else None)
        gone = [subject for subject, key in out.items() if key is None]
        if gone:
            self.forget(gone)
        return out

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        if self._connect is None:
            raise RuntimeError("this keyring reads keys only in a caller's transaction")
        return self._connect()


_default: tuple[tuple[str, ...], Keyring] | None = None


def default() -> Keyring:
    """The process's keyring for readers given no other (workers, replays, the CLI); made
    again when the master key settings change."""
    global _default
    settings = tuple(os.environ.get(name, "") for name in
                     (MASTER_KEY, PREVIOUS_MASTER_KEYS, "AURA_ES_DATA_DIR"))
    if _default is None or _default[0] != settings:
        _default = (settings, Keyring.from_env())
    return _default[1]


def rotate(conn: psycopg.Connection[Any], provider: KeyProvider) -> int:
    """Re-wraps every live data key wrapped by an earlier master key under ``provider``'s
    current one, in one transaction; returns how many. No event is re-encrypted."""
    with conn.transaction(), conn.cursor() as cur:
        rows = keystore.wrapped_by_other(cur, provider.key_id)
        for row in rows:
            assert row.wrapped is not None and row.master_key_id is not None
            key = provider.unwrap(row.subject, row.master_key_id, row.wrapped)
            keystore.rewrap(cur, row.subject, provider.key_id, provider.wrap(row.subject, key))
    return len(rows)
