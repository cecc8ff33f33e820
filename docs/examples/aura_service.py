"""The AURA commands as an HTTP service, every write made safe to retry by the
``Idempotency-Key`` header (`pip install 'aura-es[http]' uvicorn`):

    AURA_ES_DATABASE_URL=postgresql://... uvicorn aura_service:app --app-dir docs/examples

    curl -X POST localhost:8000/debates -H 'Idempotency-Key: "req-42"' \\
         -H 'Content-Type: application/json' -d '{"topic": "AI", "participants": ["a"]}'

A retry of the same request (a timeout, a lost connection) gets the original response,
and the debate is started once. The key travels on to the command, so the event store
holds it too: even a retry that outlives the stored response starts nothing twice.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aura_es import (
    AggregateNotFound,
    AuraApp,
    DomainError,
    IdempotencyKeyConflict,
    InvalidPayload,
    PayloadTooLarge,
)
from aura_es.http import IdempotencyKeyMiddleware, idempotency_key

Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(database_url: str) -> Starlette:
    aura = AuraApp(database_url)

    def command(run: Callable[[Request, dict[str, Any], str], Any], status: int) -> Endpoint:
        """An endpoint that runs one command with the request's key, in a worker thread
        (the store's API is synchronous), and maps refusals to 4xx answers."""

        async def endpoint(request: Request) -> Response:
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise TypeError("the body must be a JSON object")
                result = await run_in_threadpool(run, request, body, idempotency_key(request))
            except (ValueError, TypeError, KeyError, InvalidOperation) as e:
                return _error(400, f"bad request: {type(e).__name__}: {e}")
            except AggregateNotFound as e:
                return _error(404, str(e))
            except IdempotencyKeyConflict as e:
                return _error(422, str(e))
            # A request the store cannot take as it is: the client's to fix, not a
            # conflict with the aggregate's state.
            except PayloadTooLarge as e:
                return _error(413, str(e))
            except InvalidPayload as e:
                return _error(422, str(e))
            except DomainError as e:  # the aggregate's rules (a concluded debate, …)
                return _error(409, str(e))
            return JSONResponse(result, status_code=status)

        return endpoint

    def start_debate(_: Request, body: dict[str, Any], key: str) -> dict[str, Any]:
        debate_id = aura.start_debate(body["topic"], list(body["participants"]),
                                      idempotency_key=key,
                                      tenant_id=body.get("tenant_id", "default"))
        return {"debate_id": str(debate_id)}

    def add_argument(request: Request, body: dict[str, Any], key: str) -> dict[str, Any]:
        result = aura.add_argument(
            UUID(request.path_params["debate_id"]), body["agent_id"], body["position"],
            body["text"], round=int(body["round"]), idempotency_key=key)
        return {"positions": list(result.positions)}

    def reach_consensus(request: Request, body: dict[str, Any], key: str) -> dict[str, Any]:
        result = aura.reach_consensus(UUID(request.path_params["debate_id"]),
                                      body["decision"], idempotency_key=key)
        return {"positions": list(result.positions)}

    def request_llm_call(_: Request, body: dict[str, Any], key: str) -> dict[str, Any]:
        call_id = aura.request_llm_call(body["tenant_id"], body["provider"], body["model"],
                                        int(body["prompt_tokens"]), idempotency_key=key)
        return {"call_id": str(call_id)}

    def complete_llm_call(request: Request, body: dict[str, Any], key: str) -> dict[str, Any]:
        result = aura.complete_llm_call(
            UUID(request.path_params["call_id"]), int(body["completion_tokens"]),
            Decimal(str(body["cost_usd"])), float(body["latency_ms"]), idempotency_key=key)
        return {"positions": list(result.positions)}

    async def get_debate(request: Request) -> Response:
        try:
            debate = await run_in_threadpool(aura.get_debate,
                                             UUID(request.path_params["debate_id"]))
        except (ValueError, AggregateNotFound):
            return _error(404, "no such debate")
        return JSONResponse({"topic": debate.topic, "participants": debate.participants,
                             "status": debate.status, "arguments": debate.arguments})

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        aura.close()

    app = Starlette(
        routes=[
            Route("/debates", command(start_debate, 201), methods=["POST"]),
            Route("/debates/{debate_id}", get_debate, methods=["GET"]),
            Route("/debates/{debate_id}/arguments", command(add_argument, 200),
                  methods=["POST"]),
            Route("/debates/{debate_id}/consensus", command(reach_consensus, 200),
                  methods=["POST"]),
            Route("/llm-calls", command(request_llm_call, 201), methods=["POST"]),
            Route("/llm-calls/{call_id}/completion", command(complete_llm_call, 200),
                  methods=["POST"]),
        ],
        middleware=[Middleware(IdempotencyKeyMiddleware, database_url=database_url)],
        lifespan=lifespan,
    )
    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


if "AURA_ES_DATABASE_URL" in os.environ:  # `uvicorn aura_service:app`
    app = create_app(os.environ["AURA_ES_DATABASE_URL"])
