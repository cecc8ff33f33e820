"""The PostgreSQL event store: the library's recorder plus a durable idempotency table."""
