"""Observability: Prometheus metrics, the /metrics and /health endpoint, tracing spans."""
