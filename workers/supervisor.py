"""The supervisor: one OS process per projection, restarted with backoff when it dies.

SIGTERM or Ctrl-C is passed on to every worker, which finishes its batch, commits and
exits 0; workers still running after the grace period are killed (their uncommitted
batch rolls back, so nothing is applied twice).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aura_es.log import get_logger
from workers.shutdown import Shutdown
from workers.worker import EXIT_OK, EXIT_TAKEN_OVER

MAX_BACKOFF_SECONDS = 30.0
# A worker that ran this long before dying starts its backoff from the beginning.
HEALTHY_AFTER_SECONDS = 30.0


@dataclass
class Child:
    projection: str
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    start_at: float = field(default=0.0)


class Supervisor:
    def __init__(
        self,
        projections: Sequence[str],
        *,
        catalog: Path,
        database_url: str,
        shutdown: Shutdown,
        poll_seconds: float = 1.0,
        grace_seconds: float = 30.0,
    ) -> None:
        self.children = [Child(name) for name in projections]
        self.catalog = catalog
        self.database_url = database_url
        self.shutdown = shutdown
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.log = get_logger(component="supervisor", pid=os.getpid())

    def run(self) -> int:
        self.log.info("starting workers", projections=[c.projection for c in self.children])
        while not self.shutdown.requested:
            now = time.monotonic()
            for child in self.children:
                self._tend(child, now)
            self.shutdown.wait(0.2)
        self._stop_all()
        return 0

    def _tend(self, child: Child, now: float) -> None:
        if child.process is not None:
            code = child.process.poll()
            if code is None:
                return
            ran = now - child.started_at
            child.process = None
            if code == EXIT_TAKEN_OVER:
                delay = 0.0
            else:
                child.restarts = 0 if ran > HEALTHY_AFTER_SECONDS else child.restarts + 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** child.restarts)
            child.start_at = now + delay
            self.log.warning("worker exited", projection=child.projection, exit_code=code,
                             ran_seconds=round(ran, 1), restart_in_seconds=delay)
        if now >= child.start_at:
            child.process = self._spawn(child.projection)
            child.started_at = now
            self.log.info("worker started", projection=child.projection, pid=child.process.pid)

    def _spawn(self, projection: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, AURA_ES_DATABASE_URL=self.database_url)
        return subprocess.Popen(
            [sys.executable, "-m", "workers.worker", "--projection", projection,
             "--catalog", str(self.catalog), "--poll-seconds", str(self.poll_seconds)],
            env=env,
        )

    def _stop_all(self) -> None:
        running = [c for c in self.children if c.process and c.process.poll() is None]
        self.log.info("stopping workers", signal=self.shutdown.signal_name, running=len(running))
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for child in running:
            assert child.process is not None
            try:
                code = child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                code = child.process.wait()
            if code != EXIT_OK:
                self.log.warning("worker stopped uncleanly", projection=child.projection,
                                 exit_code=code)
