"""The Idempotency-Key header over real HTTP (uvicorn, httpx), against the store: a repeat
gets the original response, another payload under the key is 422, a repeat while the
original runs is 409, a missing or malformed key is 400; concurrent retries of one key
from many clients start one debate."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aura_es import AuraApp
from aura_es.dsn import parse_database_url
from aura_es.http import IdempotencyKeyMiddleware, InvalidKeyHeader, idempotency_key, parse_key
from aura_es.http.responses import key_hash
from aura_es.payload import MAX_EVENT_BYTES
from tests.support.http import served
from tests.support.workers import ROOT, wait_for


def create_app(database_url: str) -> Any:
    """The example service of docs/examples, as a user would run it. Imported without
    AURA_ES_DATABASE_URL (the suite may name its server so): the module would serve
    that database, which holds no schema, as soon as it is imported."""
    sys.path.insert(0, str(ROOT / "docs" / "examples"))
    named = os.environ.pop("AURA_ES_DATABASE_URL", None)
    try:
        return importlib.import_module("aura_service").create_app(database_url)
    finally:
        sys.path.pop(0)
        if named is not None:
            os.environ["AURA_ES_DATABASE_URL"] = named


@pytest.fixture
def service(db_url: str) -> Iterator[str]:
    with served(create_app(db_url)) as base:
        yield base


def debates_stored(db_url: str) -> int:
    app = AuraApp(db_url, pool_size=1)
    with app.connect() as conn:
        row = conn.execute("SELECT count(*) FROM aura_events WHERE topic ="
                           " 'aura.debate.started.v1'").fetchone()
    app.close()
    return int(row[0]) if row else 0


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{value}"'}


def test_a_repeat_gets_the_original_response_and_starts_nothing_twice(
    service: str, db_url: str,
) -> None:
    body = {"topic": "AI ethics", "participants": ["a", "b"]}
    with httpx.Client(base_url=service) as client:
        first = client.post("/debates", json=body, headers=key("req-1"))
        again = client.post("/debates", json=body, headers=key("req-1"))
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()
        assert again.headers["idempotency-replayed"] == "true"
        debate = first.json()["debate_id"]
        argued = client.post(f"/debates/{debate}/arguments", headers=key("arg-1"), json={
            "agent_id": "a", "position": "for", "text": "yes", "round": 1})
        assert argued.status_code == 200
        assert client.get(f"/debates/{debate}").json()["arguments"] == 1
    assert debates_stored(db_url) == 1


def test_the_answers_the_draft_defines(service: str) -> None:
    body = {"topic": "AI ethics", "participants": ["a"]}
    with httpx.Client(base_url=service) as client:
        missing = client.post("/debates", json=body)
        assert missing.status_code == 400 and "required" in missing.json()["error"]
        for bad in ("req-1", '"unterminated', '"tab\there"', '"x" "y"', '""', '"\\n"'):
            response = client.post("/debates", json=body, headers={"Idempotency-Key": bad})
            assert response.status_code == 400, bad
            assert "\n" not in response.json()["error"]
        assert client.post("/debates", json=body, headers=key("k")).status_code == 201
        other = client.post("/debates", json={**body, "topic": "other"}, headers=key("k"))
        assert other.status_code == 422
        assert client.get("/debates/00000000-0000-0000-0000-000000000000").status_code == 404


def test_an_invalid_payload_is_a_client_error_not_a_conflict(service: str,
                                                               db_url: str) -> None:
    """An event over the size limit is 413 and one the store cannot hold exactly is 422;
    409 is kept for the aggregate's own rules (a concluded debate)."""
    with httpx.Client(base_url=service, timeout=30) as client:
        huge = client.post("/debates", headers=key("huge"), json={
            "topic": "x" * (MAX_EVENT_BYTES + 1), "participants": ["a"]})
        assert huge.status_code == 413 and "bytes as JSON" in huge.json()["error"]
        nul = client.post("/debates", headers=key("nul"), json={
            "topic": "a\u0000b", "participants": ["a"]})
        assert nul.status_code == 422 and "topic" in nul.json()["error"]
        debate = client.post("/debates", headers=key("ok"), json={
            "topic": "ok", "participants": ["a"]}).json()["debate_id"]
        decided = client.post(f"/debates/{debate}/consensus", headers=key("c1"),
                              json={"decision": "yes"})
        assert decided.status_code == 200
        again = client.post(f"/debates/{debate}/consensus", headers=key("c2"),
                            json={"decision": "no"})
        assert again.status_code == 409
    assert debates_stored(db_url) == 1


def test_concurrent_retries_of_one_key_start_one_debate(service: str, db_url: str) -> None:
    body = {"topic": "raced", "participants": ["a", "b"]}

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=service, timeout=30) as client:
            return client.post("/debates", json=body, headers=key("raced"))

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(32)))
    codes = {r.status_code for r in answers}
    assert codes <= {201, 409}, codes
    created = [r.json() for r in answers if r.status_code == 201]
    assert created and all(c == created[0] for c in created)
    assert debates_stored(db_url) == 1
    with httpx.Client(base_url=service) as client:  # afterwards: the original, again
        assert client.post("/debates", json=body, headers=key("raced")).json() == created[0]


def test_a_repeat_while_in_flight_is_409_and_5xx_is_not_kept(db_url: str) -> None:
    gate, calls = threading.Event(), list[str]()

    async def slow(request: Request) -> Response:
        calls.append(idempotency_key(request))
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10)
        return JSONResponse({"ran": len(calls)}, status_code=201)

    async def broken(request: Request) -> Response:
        calls.append(idempotency_key(request))
        return JSONResponse({"error": "down"}, status_code=503)

    app = Starlette(routes=[Route("/slow", slow, methods=["POST"]),
                            Route("/broken", broken, methods=["POST"])],
                    middleware=[Middleware(IdempotencyKeyMiddleware, database_url=db_url)])
    with served(app) as base, httpx.Client(base_url=base, timeout=30) as client, \
            ThreadPoolExecutor(1) as pool:
        original = pool.submit(client.post, "/slow", json={}, headers=key("slow"))
        wait_for("the original to run", lambda: calls)
        assert client.post("/slow", json={}, headers=key("slow")).status_code == 409
        gate.set()
        assert original.result().status_code == 201
        assert client.post("/slow", json={}, headers=key("slow")).status_code == 201
        assert len(calls) == 1  # the repeat was answered from the stored response
        # A 5xx is not stored: the retry runs the request again.
        assert client.post("/broken", json={}, headers=key("b")).status_code == 503
        assert client.post("/broken", json={}, headers=key("b")).status_code == 503
        assert calls == ["slow", "b", "b"]


def test_a_response_is_stored_before_the_client_sees_any_of_it(db_url: str) -> None:
    """A client that retries the moment it has the response gets it again, never 409:
    at the first byte sent, the key's state in the database must already be done."""
    async def created(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"part,", "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})

    async def run() -> tuple[list[str | None], bytes]:
        middleware = IdempotencyKeyMiddleware(created, db_url)
        seen: list[str | None] = []
        sent = bytearray()

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                row = await (await conn.execute(
                    "SELECT state FROM aura_http_idempotency WHERE key_hash = %s",
                    (key_hash("early"),))).fetchone()
                seen.append(row[0] if row else None)
            sent.extend(message.get("body", b""))

        async def receive() -> Any:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/x", "raw_path": b"/x",
                 "query_string": b"", "headers": [(b"idempotency-key", b'"early"')]}
        async with await psycopg.AsyncConnection.connect(
                parse_database_url(db_url).conninfo(), autocommit=True) as conn:
            await middleware(scope, receive, send)
        await middleware.aclose()
        return seen, bytes(sent)

    seen, body = asyncio.run(run())
    assert seen == ["done"]
    assert body == b"part,end"


@settings(max_examples=300, deadline=None)
@given(raw=st.text(max_size=40))
def test_any_header_value_is_a_key_or_a_one_line_refusal(raw: str) -> None:
    try:
        parsed = parse_key(raw)
    except InvalidKeyHeader as e:
        assert "\n" not in str(e)
        return
    assert parsed and all(0x20 <= ord(c) <= 0x7E for c in parsed)
    assert raw.strip(" ").startswith('"') and raw.strip(" ").endswith('"')


def test_keys_round_trip_escapes() -> None:
    assert parse_key('"a\\"b\\\\c"') == 'a"b\\c'
    assert parse_key('  "padded"  ') == "padded"
