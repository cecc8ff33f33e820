"""The Idempotency-Key middleware when its requests do not go as planned: a client that
disconnects before its body is complete (at any byte of it) runs nothing and stores
nothing, so its retry with the whole body runs; a request that outlives its lease
(its process stalled) loses the key to a retry and, when it finishes, stores nothing
over the retry's response; a request that merely runs long keeps its key."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aura_es.dsn import parse_database_url
from aura_es.http import IdempotencyKeyMiddleware, idempotency_key
from aura_es.http.responses import key_hash
from tests.support.http import served
from tests.support.workers import wait_for

BODY = b'{"topic": "AI ethics", "participants": ["alice", "bob"]}'


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{value}"'}


def stored_state(db_url: str, value: str) -> str | None:
    with psycopg.connect(parse_database_url(db_url).conninfo()) as conn:
        row = conn.execute("SELECT state FROM aura_http_idempotency WHERE key_hash = %s",
                           (key_hash(value),)).fetchone()
    return str(row[0]) if row else None


class Recording:
    """An endpoint that records the bodies it ran with, behind the middleware, and
    counts the requests the whole app has finished with (the signal a test waits on)."""

    def __init__(self, db_url: str, *, lease_seconds: float = 60.0) -> None:
        self.ran: list[bytes] = []
        self.finished = 0

        async def create(request: Request) -> Response:
            self.ran.append(await request.body())
            return JSONResponse({"ran": len(self.ran)}, status_code=201)

        self.inner = Starlette(
            routes=[Route("/debates", create, methods=["POST"])],
            middleware=[Middleware(IdempotencyKeyMiddleware, database_url=db_url,
                                   lease_seconds=lease_seconds)])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            if scope["type"] == "http":
                self.finished += 1


@pytest.fixture
def recording(db_url: str) -> Iterator[tuple[Recording, str]]:
    app = Recording(db_url)
    with served(app) as base:
        yield app, base


def send_part_and_close(base: str, value: str, part: bytes) -> None:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /debates HTTP/1.1\r\nHost: test\r\n"
                  b"Content-Type: application/json\r\n"
                  b"Idempotency-Key: \"" + value.encode() + b"\"\r\n"
                  b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + part)


def test_a_disconnect_at_any_byte_of_the_body_runs_and_stores_nothing(
    recording: tuple[Recording, str], db_url: str,
) -> None:
    app, base = recording
    value = f"cut-{uuid4()}"
    for cut in range(len(BODY)):
        ended = app.finished + 1
        send_part_and_close(base, value, BODY[:cut])
        wait_for(f"the request cut at byte {cut} to end", lambda: app.finished >= ended)  # noqa: B023
        assert app.ran == [], f"the endpoint ran on the first {cut} bytes of the body"
        assert stored_state(db_url, value) is None
    with httpx.Client(base_url=base) as client:
        retry = client.post("/debates", content=BODY, headers=key(value))
    assert retry.status_code == 201
    assert app.ran == [BODY]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(min_size=0, max_size=12), min_size=1, max_size=6),
       gone_after=st.integers(0, 6))
def test_any_chunking_cut_by_a_disconnect_runs_nothing(
    db_url: str, chunks: list[bytes], gone_after: int,
) -> None:
    """At the ASGI level: the body in any chunks, the client gone after any of them
    but the last (which would have completed it)."""
    gone_after = min(gone_after, len(chunks) - 1)
    ran: list[bytes] = []

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        ran.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": True}
        for chunk in chunks[:gone_after]]
    messages.append({"type": "http.disconnect"})
    value = f"chunks-{uuid4()}"
    sent: list[Any] = []

    async def run() -> None:
        middleware = IdempotencyKeyMiddleware(endpoint, db_url)
        stream = iter(messages)

        async def receive() -> Any:
            return next(stream)

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/x", "raw_path": b"/x",
                 "query_string": b"", "headers": [(b"idempotency-key",
                                                   f'"{value}"'.encode())]}
        await middleware(scope, receive, send)
        await middleware.aclose()

    asyncio.run(run())
    assert ran == [] and sent == []
    assert stored_state(db_url, value) is None


def test_a_request_that_runs_long_keeps_its_key(db_url: str) -> None:
    """Its lease (0.5 s here) is renewed while it runs: long after the first lease
    would have run out, a retry is still 409, and the endpoint ran once."""
    gate, calls = threading.Event(), list[str]()

    async def slow(request: Request) -> Response:
        calls.append(idempotency_key(request))
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 30)
        return JSONResponse({"ran": len(calls)}, status_code=201)

    app = Starlette(routes=[Route("/slow", slow, methods=["POST"])],
                    middleware=[Middleware(IdempotencyKeyMiddleware, database_url=db_url,
                                           lease_seconds=0.5)])
    value = f"long-{uuid4()}"
    conninfo = parse_database_url(db_url).conninfo()
    with served(app) as base, httpx.Client(base_url=base, timeout=30) as client, \
            ThreadPoolExecutor(1) as pool, \
            psycopg.connect(conninfo, autocommit=True) as conn:
        original = pool.submit(client.post, "/slow", json={}, headers=key(value))
        wait_for("the original to run", lambda: calls)
        claimed = conn.execute("SELECT created_at FROM aura_http_idempotency"
                               " WHERE key_hash = %s", (key_hash(value),)).fetchone()
        assert claimed is not None
        # Renewed past three of its leases, the key is still the original's.
        wait_for("three leases to pass", lambda: conn.execute(
            "SELECT locked_until > %s + interval '1.5 seconds' AND now() > %s"
            " + interval '1.5 seconds' FROM aura_http_idempotency WHERE key_hash = %s",
            (claimed[0], claimed[0], key_hash(value))).fetchone()[0])  # type: ignore[index]
        assert client.post("/slow", json={}, headers=key(value)).status_code == 409
        gate.set()
        assert original.result().status_code == 201
    assert calls == [value]


def test_a_stalled_request_loses_its_key_and_stores_nothing_over_its_retry(
    db_url: str,
) -> None:
    """Two servers on one database. On the first, the request stalls its event loop
    (so nothing renews its lease); the retry reaches the second after the lease ran
    out and runs there; then the stalled one finishes: its client gets its own answer,
    but the stored one, replayed to every later retry, is the retry's."""
    stall, calls = threading.Event(), list[str]()

    def server(name: str) -> Starlette:
        async def create(request: Request) -> Response:
            calls.append(name)
            if name == "stalled":
                stall.wait(30)  # blocks this server's event loop: no renewal runs
            return JSONResponse({"ran_on": name}, status_code=201)

        return Starlette(routes=[Route("/debates", create, methods=["POST"])],
                         middleware=[Middleware(IdempotencyKeyMiddleware,
                                                database_url=db_url, lease_seconds=0.5)])

    value = f"stall-{uuid4()}"
    conninfo = parse_database_url(db_url).conninfo()
    with served(server("stalled")) as first, served(server("healthy")) as second, \
            httpx.Client(timeout=30) as client, ThreadPoolExecutor(1) as pool, \
            psycopg.connect(conninfo, autocommit=True) as conn:
        original = pool.submit(client.post, f"{first}/debates", json={},
                               headers=key(value))
        wait_for("the original to stall", lambda: calls == ["stalled"])
        wait_for("its lease to run out", lambda: conn.execute(
            "SELECT locked_until < now() FROM aura_http_idempotency WHERE key_hash = %s",
            (key_hash(value),)).fetchone() == (True,))
        retry = client.post(f"{second}/debates", json={}, headers=key(value))
        assert retry.status_code == 201 and retry.json() == {"ran_on": "healthy"}
        stall.set()
        late = original.result()
        assert late.status_code == 201 and late.json() == {"ran_on": "stalled"}
        again = client.post(f"{first}/debates", json={}, headers=key(value))
        assert again.json() == {"ran_on": "healthy"}
        assert again.headers["idempotency-replayed"] == "true"
    assert calls == ["stalled", "healthy"]
