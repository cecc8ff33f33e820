"""Middleware any driver of the engine can use: log lines, tracing spans, Prometheus
metrics and drift warnings (a worker adds its presence row and side effects,
``aura_es.worker.middleware``)."""
