"""An ASGI middleware for the ``Idempotency-Key`` header (IETF httpapi draft), for any
ASGI framework (Starlette, FastAPI, …):

- a request with a key runs once; the key is handed to the endpoint
  (``idempotency_key(request)``), which passes it to its command, so the event store's
  own key makes the command itself exactly-once too;
- its response (any status below 500) is stored with the key; a repeat gets it again,
  with ``Idempotency-Replayed: true``;
- the same key with another request (method, path, query or body) is 422;
- a repeat while the original is still running is 409;
- a missing key where one is required is 400, as is a value that is not a
  structured-field String (one line saying why).

A 5xx response or an exception is not stored: the key is released, and a retry runs the
request again (safe, because the command is idempotent by the same key).

A client that disconnects before its body is complete runs nothing and stores nothing, so
its retry with the whole body runs. A running request renews its claim's lease every third
of ``lease_seconds``; one whose process stalls past its lease loses the key to a retry, and
when it finishes it stores nothing over the retry's response (its own client still gets
its own answer, with a warning in the log).

A keyed response is held back until it is stored, so a client that retries the moment it
has it gets it again; streaming responses are therefore sent whole, at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Container, MutableMapping
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from aura_es.dsn import parse_database_url
from aura_es.http import responses
from aura_es.http.keys import InvalidKeyHeader, parse_key
from aura_es.http.responses import Claim, Lease, Stored

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADER = b"idempotency-key"
REPLAYED = b"idempotency-replayed"
#: Request bodies up to this size are fingerprinted; larger ones are refused (413).
MAX_BODY_BYTES = 1_048_576

log = logging.getLogger("aura_es.http")


class _ClientGone(Exception):
    """The client disconnected before its request's body was complete."""


def idempotency_key(request: Any) -> str:
    """The request's key (a Starlette or FastAPI ``Request``), for its command."""
    key = request.scope.get("state", {}).get("idempotency_key")
    if not isinstance(key, str):
        raise LookupError("this request has no Idempotency-Key (is the middleware installed?)")
    return key


class IdempotencyKeyMiddleware:
    def __init__(
        self, app: ASGIApp, database_url: str, *,
        required_methods: Container[str] = frozenset({"POST", "PATCH"}),
        lease_seconds: float = 60.0, pool_size: int = 4,
    ) -> None:
        self.app = app
        self.required_methods = required_methods
        self.lease_seconds = lease_seconds
        self.pool = AsyncConnectionPool(
            parse_database_url(database_url).conninfo(), min_size=1, max_size=pool_size,
            kwargs={"autocommit": True}, open=False,
        )
        self._opened = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope.get("headers", []) if k.lower() == HEADER]
        if not values:
            if scope["method"] in self.required_methods:
                await _error(send, 400, "an Idempotency-Key header is required for"
                             f" {scope['method']} requests")
                return
            await self.app(scope, receive, send)
            return
        if len(values) > 1:
            await _error(send, 400, "Idempotency-Key is given more than once")
            return
        try:
            key = parse_key(values[0].decode("latin-1"))
        except InvalidKeyHeader as e:
            await _error(send, 400, str(e))
            return
        try:
            body = await _read_body(receive)
        except _ClientGone:
            return  # nobody to answer, and a truncated body must not run
        if body is None:
            await _error(send, 413, f"request bodies with an Idempotency-Key are limited"
                         f" to {MAX_BODY_BYTES:,} bytes")
            return
        await self._once(scope, receive, send, key, body)

    async def _once(self, scope: Scope, receive: Receive, send: Send, key: str,
                    body: bytes) -> None:
        fingerprint = _fingerprint(scope, body)
        await self._open()
        async with self.pool.connection() as conn:
            claimed = await responses.claim(conn, key, fingerprint, self.lease_seconds)
        outcome, stored = claimed.outcome, claimed.stored
        if outcome is Claim.MISMATCH:
            await _error(send, 422, "this Idempotency-Key was used for another request")
            return
        if outcome is Claim.IN_FLIGHT:
            await _error(send, 409, "a request with this Idempotency-Key is still running;"
                         " retry later")
            return
        if outcome is Claim.REPLAY:
            assert stored is not None
            await _respond(send, stored, replayed=True)
            return
        assert claimed.lease is not None
        lease = claimed.lease
        scope.setdefault("state", {})["idempotency_key"] = key
        captured = _Captured()
        renewal = asyncio.create_task(self._renew(lease))
        try:
            await self.app(scope, _replay_body(body, receive), captured.send)
        except BaseException:
            renewal.cancel()
            async with self.pool.connection() as conn:
                await responses.release(conn, lease)
            raise
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        # Stored before the client sees a byte of it: a client that retries the moment
        # it has the response must get it again, not "still running" (409).
        async with self.pool.connection() as conn:
            if captured.status is not None and captured.status < 500:
                if not await responses.complete(conn, lease, captured.stored()):
                    log.warning("a request outlived its Idempotency-Key lease and a retry"
                                " took the key over; its response was not stored")
            else:
                await responses.release(conn, lease)
        await captured.forward(send)

    async def _renew(self, lease: Lease) -> None:
        """Keeps the claim alive while its request runs; stops once the key is lost."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                async with self.pool.connection() as conn:
                    if not await responses.renew(conn, lease, self.lease_seconds):
                        return
            except Exception as e:  # a blip: the next renewal may succeed in time
                log.warning("could not renew an Idempotency-Key lease: %s",
                            type(e).__name__)

    async def _open(self) -> None:
        if not self._opened:
            await self.pool.open()
            self._opened = True

    async def aclose(self) -> None:
        if self._opened:
            await self.pool.close()
            self._opened = False


_TRANSPORT = frozenset({"content-length", "date", "server", "transfer-encoding", "connection"})


class _Captured:
    """Holds the whole response back until it is stored; then ``forward`` sends it on
    as the application sent it."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.messages: list[Message] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        self.messages.append(message)

    def stored(self) -> Stored:
        assert self.status is not None
        start = self.messages[0]
        headers = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in start.get("headers", [])
            if name.decode("latin-1").lower() not in _TRANSPORT
        ]
        body = b"".join(m.get("body", b"") for m in self.messages
                        if m["type"] == "http.response.body")
        return Stored(self.status, headers, body)

    async def forward(self, send: Send) -> None:
        for message in self.messages:
            await send(message)


def _fingerprint(scope: Scope, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (scope["method"].encode(), scope.get("raw_path") or scope["path"].encode(),
                 scope.get("query_string", b""), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body; None when it is over the limit. Raises ``_ClientGone`` when the
    client leaves before its last chunk."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        body.extend(message.get("body", b""))
        if len(body) > MAX_BODY_BYTES:
            return None
        if not message.get("more_body", False):
            return bytes(body)


def _replay_body(body: bytes, receive: Receive) -> Receive:
    """The body read for the fingerprint, then the client's own messages (so an
    endpoint that waits for a disconnect still hears of it)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _respond(send: Send, stored: Stored, *, replayed: bool) -> None:
    headers = [(b"content-length", str(len(stored.body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored.headers]
    if replayed:
        headers.append((REPLAYED, b"true"))
    await send({"type": "http.response.start", "status": stored.status, "headers": headers})
    await send({"type": "http.response.body", "body": stored.body})


async def _error(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    await _respond(send, Stored(status, [("content-type", "application/json")], body),
                   replayed=False)
