"""A TCP proxy in front of a PostgreSQL server (its Unix socket, or its TCP address when
the suite runs against a server named by URL), for chaos tests: it can add latency, cut
every connection, and refuse new ones until it is healed."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

from aura_es.dsn import parse_database_url


class ChaosProxy:
    def __init__(self, target: str | tuple[str, int]) -> None:
        """``target``: a Unix socket's path, or a host and port."""
        self.target = target
        self.latency = 0.0
        self._down = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down.is_set():
                client.close()
                continue
            upstream = socket.socket(socket.AF_UNIX if isinstance(self.target, str)
                                     else socket.AF_INET)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if self.latency:
                    time.sleep(self.latency)
                sink.sendall(chunk)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._down.set()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def heal(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


def proxy_for(database_url: str) -> tuple[ChaosProxy, str]:
    """A proxy in front of the server of ``database_url``, and the URL of the same
    database through it (over TCP, user ``postgres``)."""
    target = parse_database_url(database_url)
    port = int(target.port or 5432)
    proxy = ChaosProxy(os.path.join(target.host, f".s.PGSQL.{port}")
                       if target.host.startswith("/") else (target.host, port))
    return proxy, f"postgresql://postgres@127.0.0.1:{proxy.port}/{target.dbname}"
