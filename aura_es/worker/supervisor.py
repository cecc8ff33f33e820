"""The supervisor: ``processes`` OS processes per projection (they share its partitions,
or stand by), each restarted with backoff when it dies.

SIGTERM or Ctrl-C is passed on to every worker, which finishes its batch, commits and
exits 0; workers still running after the grace period are killed (their uncommitted
batch rolls back, so nothing is applied twice).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import multiprocess

from aura_es.catalog.model import ProjectionSpec
from aura_es.db import connect
from aura_es.log import get_logger
from aura_es.ops.health import DEFAULT_MAX_LAG_SECONDS
from aura_es.ops.server import MetricsServer
from aura_es.retry import Backoff
from aura_es.worker.rebuild import EXIT_REFUSED, EXIT_SWITCHED
from aura_es.worker.shutdown import SUPERVISOR_PID_ENV, Shutdown
from aura_es.worker.worker import EXIT_CONFIG, EXIT_OK, EXIT_RELOAD

#: Waits before restarting a worker that died: 1 s, 2 s, … up to 30 s.
RESTART = Backoff(base=1.0, cap=30.0, jitter="none")
# A worker that ran this long before dying starts its backoff from the beginning.
HEALTHY_AFTER_SECONDS = 30.0


@dataclass
class Child:
    projection: str
    #: "worker", or "rebuild" for a blue/green rebuild that ends once switched.
    kind: str = "worker"
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
        rebuild: Sequence[str] = (),
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        specs: Sequence[ProjectionSpec] = (),
        max_lag_seconds: float = DEFAULT_MAX_LAG_SECONDS,
        processes: int = 1,
    ) -> None:
        self.children = [Child(name) for name in projections for _ in range(processes)]
        self.children += [Child(name, kind="rebuild") for name in rebuild]
        self.catalog = catalog
        self.database_url = database_url
        self.shutdown = shutdown
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.log = get_logger(component="supervisor", pid=os.getpid())
        self.metrics_dir: Path | None = None
        self.metrics: MetricsServer | None = None
        if metrics_port is not None:
            # Every worker writes its counters here; the endpoint adds them up.
            self.metrics_dir = Path(tempfile.mkdtemp(prefix="aura-metrics-"))
            try:
                self.metrics = MetricsServer(
                    metrics_host, metrics_port, self.metrics_dir,
                    lambda: connect(database_url), specs, max_lag_seconds,
                )
            except Exception:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
                raise

    def run(self) -> int:
        if self.metrics is not None:
            self.metrics.start()
            self.log.info("serving /metrics and /health", port=self.metrics.port)
        try:
            return self._run()
        finally:
            if self.metrics is not None:
                self.metrics.stop()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _run(self) -> int:
        self.log.info("starting workers", projections=[
            c.projection for c in self.children if c.kind == "worker"
        ], rebuilding=[c.projection for c in self.children if c.kind == "rebuild"])
        while not self.shutdown.requested:
            now = time.monotonic()
            for child in list(self.children):
                self._tend(child, now)
            if not any(c.kind == "worker" for c in self.children):
                self.log.error("no worker left to run")
                self._stop_all()
                return EXIT_CONFIG
            self.shutdown.wait(0.2)
        self._stop_all()
        return 0

    def _tend(self, child: Child, now: float) -> None:
        if child.process is not None:
            code = child.process.poll()
            if code is None:
                return
            ran = now - child.started_at
            if self.metrics_dir is not None:
                multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                    child.process.pid, str(self.metrics_dir))
            child.process = None
            if child.kind == "rebuild" and code in (EXIT_SWITCHED, EXIT_REFUSED):
                self.log.info("rebuild ended", projection=child.projection, exit_code=code)
                self.children.remove(child)
                return
            if child.kind == "worker" and code == EXIT_CONFIG:
                # Its catalog entry cannot run; restarting would only repeat the error.
                self.log.error("worker exited on a configuration error; not restarted",
                               projection=child.projection, exit_code=code)
                self.children.remove(child)
                return
            if code == EXIT_RELOAD:
                delay = 0.0
            else:
                child.restarts = 0 if ran > HEALTHY_AFTER_SECONDS else child.restarts + 1
                delay = RESTART.delay(child.restarts)
            child.start_at = now + delay
            self.log.warning(f"{child.kind} exited", projection=child.projection, exit_code=code,
                             ran_seconds=round(ran, 1), restart_in_seconds=delay)
        if now >= child.start_at:
            child.process = self._spawn(child)
            child.started_at = now
            self.log.info(f"{child.kind} started", projection=child.projection,
                          pid=child.process.pid)

    def _spawn(self, child: Child) -> subprocess.Popen[bytes]:
        env = dict(os.environ, AURA_ES_DATABASE_URL=self.database_url)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        command = [sys.executable, "-m", f"aura_es.worker.{child.kind}", "--projection",
                   child.projection, "--catalog", str(self.catalog)]
        if child.kind == "worker":
            command += ["--poll-seconds", str(self.poll_seconds)]
        return subprocess.Popen(command, env=env)

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
