"""The supervisor's HTTP endpoint: ``/metrics`` for every worker process it runs, plus the
database gauges, and ``/health`` (200 when ready, 503 with the reasons when not)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from aura_es.catalog.model import ProjectionSpec
from aura_es.errors import ConfigurationError
from aura_es.ops.collector import DatabaseCollector


class MetricsServer:
    def __init__(
        self, host: str, port: int, multiprocess_dir: Path,
        connect: Callable[[], psycopg.Connection[Any]], specs: Sequence[ProjectionSpec],
        max_lag_seconds: float,
    ) -> None:
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
        self.database = DatabaseCollector(connect, specs, max_lag_seconds)
        self.registry.register(self.database)
        try:
            self.httpd = ThreadingHTTPServer((host, port), self._handler())
        except OSError as e:
            raise ConfigurationError(f"--metrics-port {port}: cannot listen on {host}: {e}") \
                from None
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                elif path == "/health":
                    health = server.database.health()
                    self._send(200 if health.ready else 503, "application/json",
                               orjson.dumps(health.as_dict()))
                else:
                    self._send(404, "text/plain", b"try /metrics or /health\n")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the structured log

        return Handler
