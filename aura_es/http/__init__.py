"""HTTP: the ``Idempotency-Key`` header (IETF httpapi draft) wired to the event store."""

from aura_es.http.keys import InvalidKeyHeader, parse_key
from aura_es.http.middleware import IdempotencyKeyMiddleware, idempotency_key

__all__ = ["IdempotencyKeyMiddleware", "InvalidKeyHeader", "idempotency_key", "parse_key"]
